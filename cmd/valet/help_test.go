package main

import (
	"context"
	"flag"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/valet-dev/valet/internal/testkit"
)

// wantFlags is, for every command of the table that runs, the flags its
// --help must name (beyond every flag its flag set defines, which
// TestEveryCommandHelp checks too): the flags users and the docs rely on.
// A command added to the table without a line here fails the test.
var wantFlags = map[string][]string{
	"serve":             {"--config", "--addr", "--audit-new-segment"},
	"proxy":             {"--addr", "--valet", "--templates", "--client", "--audience", "--identity-file", "--identity-command", "--dev-agent", "--audit", "--log-level"},
	"dev":               {"--addr", "--templates", "--redis", "--audit", "--log-level", "--rollback-hosts", "--audit-new-segment", "--resources"},
	"dev token":         {"--agent", "--admin", "--issuer"},
	"dev idp":           {"--addr"},
	"templates check":   nil,
	"keys generate":     {"--out", "--alg"},
	"approvals ls":      {"--server", "--client", "--secret", "-o", "--agent", "--template", "--task", "--state", "--limit", "--cursor"},
	"approvals approve": {"--server", "--client", "--secret", "-o", "--reason"},
	"approvals deny":    {"--server", "--client", "--secret", "-o", "--reason"},
	"audit verify":      {"--redis", "--prefix"},
	"version":           nil,
	"completion":        nil,
	"revoke":            {"--server", "--token", "-o", "--agent", "--issuer", "--template", "--tool", "--task", "--since", "--reason", "--dry-run", "--label"},
	"freeze":            {"--server", "--token", "-o", "--issuer", "--revoke", "--reason", "--force", "--label", "--dry-run"},
	"unfreeze":          {"--server", "--token", "-o", "--issuer"},
	"controls ls":       {"--server", "--token", "-o"},
	"tasks ls":          {"--server", "--token", "-o", "--agent", "--issuer", "--state", "--template", "--limit", "--cursor"},
	"tasks show":        {"--server", "--token", "-o"},
	"agents ls":         {"--server", "--token", "-o", "--issuer", "--subject-prefix", "--label", "--template", "--since", "--sort", "--limit", "--cursor"},
	"agents show":       {"--server", "--token", "-o"},
	"tasks timeline":    {"--server", "--token", "-o"},
	"tasks rollback":    {"--server", "--token", "-o", "--dry-run", "--continue", "--yes"},
}

// tableCommands is the path of every command of the table ("tasks ls"),
// with the command.
func tableCommands() (paths []string, cmds []command) {
	walkCommands(commandTable(), "", func(path string, c command) {
		paths, cmds = append(paths, path), append(cmds, c)
	})
	return paths, cmds
}

// TestEveryCommandHelp runs `valet CMD --help` (and -h) for every command
// of the table that runs, with no environment and no server: each exits 0
// and prints its usage line and every flag its flag set defines and
// wantFlags lists, on stdout.
func TestEveryCommandHelp(t *testing.T) {
	paths, cmds := tableCommands()
	for i, path := range paths {
		c := cmds[i]
		if c.run == nil {
			continue
		}
		want, ok := wantFlags[path]
		if !ok {
			t.Errorf("valet %s is in the command table but not in wantFlags", path)
		}
		fs := describe(c)
		if fs == nil {
			t.Errorf("valet %s builds no flag set through env.newFlags: completion cannot see its flags", path)
			continue
		}
		fs.VisitAll(func(f *flag.Flag) { want = append(want, flagWord(f)) })
		for _, h := range []string{"--help", "-h"} {
			t.Run(path+" "+h, func(t *testing.T) {
				var out, errOut strings.Builder
				args := append(append([]string{"valet"}, strings.Fields(path)...), h)
				code := run(context.Background(), args, func(string) string { return "" }, &out, &errOut)
				if code != 0 {
					t.Fatalf("exit %d, want 0\nstdout: %s\nstderr: %s", code, out.String(), errOut.String())
				}
				if !strings.Contains(out.String(), "Usage: valet "+path) {
					t.Errorf("no usage line for %q:\n%s", path, out.String())
				}
				for _, f := range want {
					if !strings.Contains(out.String(), "\n  "+f+" ") && !strings.Contains(out.String(), "\n  "+f+"\n") {
						t.Errorf("help does not name %s:\n%s", f, out.String())
					}
				}
			})
		}
	}
	for path := range wantFlags {
		if !slices.Contains(paths, path) {
			t.Errorf("wantFlags names valet %s, which the command table lacks", path)
		}
	}
}

// TestGroupHelp: every group of the table answers --help with its verbs
// and exit 0; with no verb, or an unknown one, it is a usage error (2)
// that lists them too. A group that also runs (dev) names its verbs in its
// own --help.
func TestGroupHelp(t *testing.T) {
	paths, cmds := tableCommands()
	for i, path := range paths {
		c := cmds[i]
		if len(c.subs) == 0 {
			continue
		}
		cli := func(args ...string) (int, string, string) {
			var out, errOut strings.Builder
			code := run(context.Background(), append(append([]string{"valet"}, strings.Fields(path)...), args...), func(string) string { return "" }, &out, &errOut)
			return code, out.String(), errOut.String()
		}
		code, out, errOut := cli("--help")
		if code != 0 {
			t.Errorf("valet %s --help: exit %d: %s", path, code, errOut)
		}
		for _, s := range c.subs {
			if c.run == nil && !strings.Contains(out, "\n  "+s.name+" ") || c.run != nil && !strings.Contains(out, "valet "+path+" "+s.name) {
				t.Errorf("valet %s --help does not name %s:\n%s", path, s.name, out)
			}
		}
		if c.run != nil {
			continue
		}
		for _, args := range [][]string{nil, {"nosuchverb"}} {
			if code, _, errOut := cli(args...); code != 2 || !strings.Contains(errOut, "\n  "+c.subs[0].name+" ") {
				t.Errorf("valet %s %v: exit %d, want 2 and the verbs:\n%s", path, args, code, errOut)
			}
		}
	}
}

// TestTopLevelUsageListsEveryCommand: `valet --help` names every command
// of the table.
func TestTopLevelUsageListsEveryCommand(t *testing.T) {
	var out, errOut strings.Builder
	if code := run(context.Background(), []string{"valet", "--help"}, func(string) string { return "" }, &out, &errOut); code != 0 {
		t.Fatalf("exit %d", code)
	}
	paths, cmds := tableCommands()
	for i, path := range paths {
		if cmds[i].run != nil && !strings.Contains(out.String(), "valet "+path) {
			t.Errorf("top-level usage lacks `valet %s`", path)
		}
	}
	for _, f := range []string{"--admin", "rollback"} {
		if !strings.Contains(out.String(), f) {
			t.Errorf("top-level usage lacks %s", f)
		}
	}
}

// TestFlagsAfterArguments: flags are accepted before, between and after
// positional arguments, and "--" ends them.
func TestFlagsAfterArguments(t *testing.T) {
	fs := newFlags(&strings.Builder{}, "x", "")
	a := fs.String("a", "", "")
	b := fs.Bool("b", false, "")
	pos, err := fs.parse([]string{"one", "--a", "1", "two", "-b", "--", "-c", "three"})
	if err != nil || *a != "1" || !*b || strings.Join(pos, ",") != "one,two,-c,three" {
		t.Fatalf("parse: %v a=%q b=%v pos=%q", err, *a, *b, pos)
	}
	if _, err := fs.parse([]string{"--nope"}); err == nil {
		t.Fatal("an unknown flag parsed")
	}
}

// TestVersion: `valet version` prints the version and commit set at build
// time (-ldflags -X), else what Go recorded.
func TestVersion(t *testing.T) {
	defer func(v, c string) { version, commit = v, c }(version, commit)
	version, commit = "v1.2.3", "0123abc"
	var out, errOut strings.Builder
	if code := run(context.Background(), []string{"valet", "version"}, func(string) string { return "" }, &out, &errOut); code != 0 ||
		!strings.HasPrefix(out.String(), "valet v1.2.3 (commit 0123abc, go") {
		t.Fatalf("valet version: %d %q %s", code, out.String(), errOut.String())
	}
	version, commit = "", ""
	out.Reset()
	if code := run(context.Background(), []string{"valet", "version"}, func(string) string { return "" }, &out, &errOut); code != 0 ||
		!strings.HasPrefix(out.String(), "valet ") || !strings.Contains(out.String(), "commit ") {
		t.Fatalf("valet version without ldflags: %d %q", code, out.String())
	}
}

// TestDevAuditFilePerRun: two `valet dev` runs without --audit write two
// audit files, so their chains never mix.
func TestDevAuditFilePerRun(t *testing.T) {
	audit := regexp.MustCompile(`audit:\s+(\S+)`)
	var files []string
	for range 2 {
		out, errOut := startRun(t, nil, "dev", "--addr", testkit.FreeAddr(t))
		files = append(files, waitFor(t, out, errOut, audit))
	}
	if files[0] == files[1] || !strings.HasPrefix(files[0], os.TempDir()) {
		t.Fatalf("audit files %q: want two files under %s", files, os.TempDir())
	}
	for _, f := range files {
		t.Cleanup(func() { os.RemoveAll(filepath.Dir(f)) })
	}
}
