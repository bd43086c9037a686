package main

import (
	"context"
	"fmt"
	"runtime"
	"runtime/debug"
)

// Set by release builds: go build -ldflags "-X main.version=v1.2.3 -X main.commit=abc123".
// Empty, they come from the build information Go records (go install
// module@version gives the module version; a build in a git checkout
// gives the commit).
var version, commit string

// buildVersion is the version and commit of this binary.
func buildVersion() (ver, rev string) {
	ver, rev = version, commit
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return or(ver, "unknown"), or(rev, "unknown")
	}
	if ver == "" {
		ver = bi.Main.Version // "(devel)" when built from a checkout
	}
	if rev == "" {
		dirty := false
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.modified":
				dirty = s.Value == "true"
			}
		}
		if dirty {
			rev += "+dirty"
		}
	}
	return or(ver, "unknown"), or(rev, "unknown")
}

func or(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// cmdVersion is `valet version`.
func cmdVersion(ctx context.Context, e env, args []string) error {
	fs := e.newFlags("version", "Print Valet's version, the commit it was built from and the Go version.")
	if _, err := fs.parseN(args, 0); err != nil {
		return err
	}
	ver, rev := buildVersion()
	fmt.Fprintf(e.stdout, "valet %s (commit %s, %s %s/%s)\n", ver, rev, runtime.Version(), runtime.GOOS, runtime.GOARCH)
	return nil
}
