package main

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/valet-dev/valet/internal/testkit"
)

// everyCommand is every subcommand of valet with the flags its --help
// must name. A command added without a line here fails
// TestTopLevelUsageListsEveryCommand's reverse check only if it is in the
// usage; keep both in step.
var everyCommand = []struct {
	cmd   string
	flags []string
}{
	{"serve", []string{"--config", "--addr", "--audit-new-segment"}},
	{"dev", []string{"--addr", "--templates", "--redis", "--audit", "--log-level", "--rollback-hosts", "--audit-new-segment", "--resources"}},
	{"dev token", []string{"--agent", "--admin", "--issuer"}},
	{"dev idp", []string{"--addr"}},
	{"templates check", nil},
	{"keys generate", []string{"--out", "--alg"}},
	{"approvals ls", []string{"--server", "--client", "--secret", "-o", "--agent", "--template", "--task", "--state", "--limit", "--cursor"}},
	{"approvals approve", []string{"--server", "--client", "--secret", "-o", "--reason"}},
	{"approvals deny", []string{"--server", "--client", "--secret", "-o", "--reason"}},
	{"audit verify", []string{"--redis", "--prefix"}},
	{"version", nil},
	{"revoke", []string{"--server", "--token", "-o", "--agent", "--issuer", "--template", "--tool", "--task", "--since", "--reason", "--dry-run"}},
	{"freeze", []string{"--server", "--token", "-o", "--issuer", "--revoke", "--reason", "--force"}},
	{"unfreeze", []string{"--server", "--token", "-o", "--issuer"}},
	{"controls ls", []string{"--server", "--token", "-o"}},
	{"tasks ls", []string{"--server", "--token", "-o", "--agent", "--issuer", "--state", "--template", "--limit", "--cursor"}},
	{"tasks show", []string{"--server", "--token", "-o"}},
	{"tasks timeline", []string{"--server", "--token", "-o"}},
	{"tasks rollback", []string{"--server", "--token", "-o", "--dry-run", "--continue", "--yes"}},
}

// TestEveryCommandHelp runs `valet CMD --help` (and -h) for every
// subcommand, with no environment and no server: each exits 0 and prints
// its usage line and every flag it takes on stdout.
func TestEveryCommandHelp(t *testing.T) {
	for _, c := range everyCommand {
		for _, h := range []string{"--help", "-h"} {
			t.Run(c.cmd+" "+h, func(t *testing.T) {
				var out, errOut strings.Builder
				args := append(append([]string{"valet"}, strings.Fields(c.cmd)...), h)
				code := run(context.Background(), args, func(string) string { return "" }, &out, &errOut)
				if code != 0 {
					t.Fatalf("exit %d, want 0\nstdout: %s\nstderr: %s", code, out.String(), errOut.String())
				}
				if !strings.Contains(out.String(), "Usage: valet "+c.cmd) {
					t.Errorf("no usage line for %q:\n%s", c.cmd, out.String())
				}
				for _, f := range c.flags {
					if !strings.Contains(out.String(), "\n  "+f+" ") && !strings.Contains(out.String(), "\n  "+f+"\n") {
						t.Errorf("help does not name %s:\n%s", f, out.String())
					}
				}
			})
		}
	}
}

// TestGroupHelp: a command group's --help lists its verbs and exits 0;
// no verb is a usage error (2) that lists them too.
func TestGroupHelp(t *testing.T) {
	for group, verbs := range map[string][]string{
		"tasks": {"ls", "show", "timeline", "rollback"}, "approvals": {"ls", "approve", "deny"},
		"templates": {"check"}, "keys": {"generate"}, "controls": {"ls"}, "audit": {"verify"},
	} {
		var out, errOut strings.Builder
		if code := run(context.Background(), []string{"valet", group, "--help"}, func(string) string { return "" }, &out, &errOut); code != 0 {
			t.Errorf("valet %s --help: exit %d: %s", group, code, errOut.String())
		}
		for _, v := range verbs {
			if !strings.Contains(out.String(), "\n  "+v+" ") {
				t.Errorf("valet %s --help does not list %s:\n%s", group, v, out.String())
			}
		}
		out.Reset()
		if code := run(context.Background(), []string{"valet", group}, func(string) string { return "" }, &out, &errOut); code != 2 {
			t.Errorf("valet %s: exit %d, want 2", group, code)
		}
	}
}

// TestTopLevelUsageListsEveryCommand: `valet --help` names every
// subcommand.
func TestTopLevelUsageListsEveryCommand(t *testing.T) {
	var out, errOut strings.Builder
	if code := run(context.Background(), []string{"valet", "--help"}, func(string) string { return "" }, &out, &errOut); code != 0 {
		t.Fatalf("exit %d", code)
	}
	for _, c := range everyCommand {
		if !strings.Contains(out.String(), "valet "+c.cmd) {
			t.Errorf("top-level usage lacks `valet %s`", c.cmd)
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
