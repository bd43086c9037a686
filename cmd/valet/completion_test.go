package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// completionScript is `valet completion SHELL`'s output.
func completionScript(t *testing.T, shell string) string {
	t.Helper()
	var out, errOut strings.Builder
	if code := run(context.Background(), []string{"valet", "completion", shell}, func(string) string { return "" }, &out, &errOut); code != 0 {
		t.Fatalf("valet completion %s: exit %d: %s", shell, code, errOut.String())
	}
	return out.String()
}

// TestCompletionBash: the bash script is valid bash (bash -n), names every
// command of the table, and completes verbs, flags and fixed arguments
// when bash runs it.
func TestCompletionBash(t *testing.T) {
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Skip("bash is not installed: cannot check the bash completion script")
	}
	script := completionScript(t, "bash")
	file := filepath.Join(t.TempDir(), "valet.bash")
	if err := os.WriteFile(file, []byte(script), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(bash, "-n", file).CombinedOutput(); err != nil {
		t.Fatalf("bash -n: %v\n%s", err, out)
	}
	paths, _ := tableCommands()
	for _, p := range paths {
		if !strings.Contains(script, "'valet "+p+"'") {
			t.Errorf("the bash script does not name `valet %s`", p)
		}
	}
	for _, c := range []struct{ line, want string }{
		{"valet ta", "tasks"},
		{"valet tasks ", "ls show timeline rollback --help"},
		{"valet tasks ls --ag", "--agent"},
		{"valet dev tok", "token"},
		{"valet freeze ", "agent template issuer"},
		{"valet completion f", "fish"},
		{"valet controls ls -", "-o"},
	} {
		words := strings.Split(c.line, " ")
		cmd := exec.Command(bash, "-c", `source "$1"; shift; COMP_WORDS=("$@"); COMP_CWORD=$(($#-1)); _valet; echo "${COMPREPLY[*]}"`,
			"bash", file)
		cmd.Args = append(cmd.Args, words...)
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), c.want) {
			t.Errorf("completing %q: %v %q, want %q among the answers", c.line, err, out, c.want)
		}
	}
}

// TestCompletionZshAndFish: the zsh script loads bash completion and is
// valid zsh where zsh is installed; the fish script names every command
// and the flags of one, and is valid fish where fish is installed.
func TestCompletionZshAndFish(t *testing.T) {
	zsh := completionScript(t, "zsh")
	if !strings.Contains(zsh, "bashcompinit") || !strings.Contains(zsh, "complete -F _valet valet") {
		t.Errorf("the zsh script does not set up completion:\n%s", zsh)
	}
	fish := completionScript(t, "fish")
	paths, _ := tableCommands()
	for _, p := range paths {
		if !strings.Contains(fish, "'valet "+p+"'") {
			t.Errorf("the fish script does not name `valet %s`", p)
		}
	}
	if !strings.Contains(fish, `complete -c valet -n 'test (__valet_path) = \'valet tasks ls\'' -l agent -r -F`) {
		t.Errorf("the fish script does not complete tasks ls --agent:\n%s", fish)
	}
	for shell, script := range map[string]string{"zsh": zsh, "fish": fish} {
		bin, err := exec.LookPath(shell)
		if err != nil {
			t.Logf("%s is not installed: its script is not parsed", shell)
			continue
		}
		file := filepath.Join(t.TempDir(), "valet."+shell)
		if err := os.WriteFile(file, []byte(script), 0o600); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command(bin, "-n", file).CombinedOutput(); err != nil {
			t.Errorf("%s -n: %v\n%s", shell, err, out)
		}
	}
	var out, errOut strings.Builder
	if code := run(context.Background(), []string{"valet", "completion", "tcsh"}, func(string) string { return "" }, &out, &errOut); code != 2 {
		t.Errorf("valet completion tcsh: exit %d, want 2", code)
	}
}
