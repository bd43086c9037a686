package main

import (
	"context"
	"fmt"
	"io"
	"strings"
)

// command is one entry of valet's command table: a command (`serve`), a
// group of verbs (`tasks`), or a verb of a group (`tasks ls`). A command
// may be both (`dev` runs; `dev token` is its verb).
type command struct {
	name    string
	summary string // one line, in its group's help and in the completion scripts
	// run runs the command with the arguments after its name; nil for a
	// group that only holds verbs.
	run  func(ctx context.Context, e env, args []string) error
	subs []command
}

// commandTable is every command of valet, the one list: run dispatches
// through it, a group's help and the completion scripts are generated from
// it, and the tests walk it. A function rather than a variable because
// `valet completion` reads the table it is part of.
func commandTable() []command {
	approvals := func(verb string) func(context.Context, env, []string) error {
		return func(ctx context.Context, e env, args []string) error { return cmdApprovals(ctx, e, verb, args) }
	}
	freeze := func(lift bool) func(context.Context, env, []string) error {
		return func(ctx context.Context, e env, args []string) error { return cmdFreeze(ctx, e, args, lift) }
	}
	return []command{
		{name: "serve", summary: "run in production mode", run: cmdServe},
		{name: "dev", summary: "run with no IdP or Vault (development only)", run: cmdDev, subs: []command{
			{name: "token", summary: "print a development identity (or admin) token", run: cmdDevToken},
			{name: "idp", summary: "run only the development OIDC issuer", run: cmdDevIdP},
		}},
		{name: "templates", summary: "work with template files", subs: []command{
			{name: "check", summary: "validate template files", run: cmdTemplatesCheck},
		}},
		{name: "keys", summary: "manage task-token signing keys", subs: []command{
			{name: "generate", summary: "write a new task-token signing key", run: cmdKeysGenerate},
		}},
		{name: "approvals", summary: "list and decide approvals (approver client)", subs: []command{
			{name: "ls", summary: "list approvals, oldest first (by created_at, then id), one page at a time", run: approvals("ls")},
			{name: "approve", summary: "approve a pending approval", run: approvals("approve")},
			{name: "deny", summary: "deny a pending approval", run: approvals("deny")},
		}},
		{name: "audit", summary: "check audit trails", subs: []command{
			{name: "verify", summary: "check an audit trail's hash chain", run: cmdAuditVerify},
		}},
		{name: "revoke", summary: "revoke every live credential a selector matches", run: cmdRevoke},
		{name: "freeze", summary: "freeze an agent, quarantine a template or distrust an issuer", run: freeze(false)},
		{name: "unfreeze", summary: "lift a freeze, quarantine or distrust", run: freeze(true)},
		{name: "controls", summary: "the freezes, quarantines and distrusts in force", subs: []command{
			{name: "ls", summary: "list the controls in force", run: cmdControlsLs},
		}},
		{name: "tasks", summary: "inspect tasks and roll them back", subs: []command{
			{name: "ls", summary: "list tasks, newest first (by created_at, then id), one page at a time", run: cmdTasksLs},
			{name: "show", summary: "show a task and its credentials", run: cmdTaskShow},
			{name: "timeline", summary: "show a task's audit events, in order", run: cmdTaskTimeline},
			{name: "rollback", summary: "call a task's undo webhooks, newest first", run: cmdRollback},
		}},
		{name: "agents", summary: "the agent inventory: every agent Valet granted a task, with its owner", subs: []command{
			{name: "ls", summary: "list agents, last seen first, one page at a time", run: cmdAgentsLs},
			{name: "show", summary: "show an agent, its live tasks and the controls over it", run: cmdAgentShow},
		}},
		{name: "proxy", summary: "run the secretless-mode proxy next to an agent (docs/proxy.md)", run: cmdProxy},
		{name: "completion", summary: "print a shell completion script (bash, zsh or fish)", run: cmdCompletion},
		{name: "version", summary: "print the version and commit", run: cmdVersion},
	}
}

// findCommand is the command of cmds called name.
func findCommand(cmds []command, name string) (command, bool) {
	for _, c := range cmds {
		if c.name == name {
			return c, true
		}
	}
	return command{}, false
}

// dispatch runs c, called as `valet <path>`, with the arguments after its
// name: a verb of c when args[0] names one, else c itself, else (a group
// with no run of its own) the group's help.
func dispatch(ctx context.Context, e env, path string, c command, args []string) error {
	if len(args) > 0 {
		if sub, ok := findCommand(c.subs, args[0]); ok {
			return dispatch(ctx, e, path+" "+sub.name, sub, args[1:])
		}
	}
	if c.run != nil {
		return c.run(ctx, e, args)
	}
	return groupHelp(e.stdout, path, c.subs, args)
}

// groupHelp answers a group called with no verb, an unknown verb or
// --help: the list of its verbs (on out for --help, exit 0; as a usage
// error otherwise).
func groupHelp(out io.Writer, path string, subs []command, args []string) error {
	var b strings.Builder
	fmt.Fprintf(&b, "Usage: valet %s COMMAND [flags]\n\nCommands:\n", path)
	for _, s := range subs {
		fmt.Fprintf(&b, "  %-10s %s\n", s.name, s.summary)
	}
	fmt.Fprintf(&b, "\nRun `valet %s COMMAND --help` for a command's flags.\n", path)
	switch {
	case len(args) > 0 && isHelp(args[0]):
		fmt.Fprint(out, b.String())
		return errHelp
	case len(args) == 0:
		return usageError(b.String())
	}
	return usageError(fmt.Sprintf("%s: unknown command %q\n\n%s", path, args[0], b.String()))
}

// walkCommands calls fn for every command of cmds and their verbs, depth
// first, with its path after "valet " ("tasks ls").
func walkCommands(cmds []command, prefix string, fn func(path string, c command)) {
	for _, c := range cmds {
		path := strings.TrimSpace(prefix + " " + c.name)
		fn(path, c)
		walkCommands(c.subs, path, fn)
	}
}

// describe is the flag set c builds, learnt from c itself: it runs c with
// --help and no outside world (no environment, output discarded). Every
// command parses its flags before it does anything else, which
// TestEveryCommandHelp checks. nil for a group with no run of its own.
func describe(c command) *flags {
	if c.run == nil {
		return nil
	}
	var fs *flags
	e := env{getenv: func(string) string { return "" }, stdout: io.Discard, stderr: io.Discard,
		built: func(f *flags) { fs = f }}
	_ = c.run(context.Background(), e, []string{"--help"})
	return fs
}
