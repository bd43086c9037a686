// Command valet is Valet's one binary: the broker (`serve`, `dev`) and the
// tools around it (`templates check`, `keys generate`, `dev token`) and the
// responder's commands over the admin API.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args, os.Getenv, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

const usage = `valet: just-in-time, per-task credentials for AI agents

Usage:
  valet dev [--addr ADDR] [--redis URL] [--audit FILE]
                                                run with no IdP or Vault (in-memory unless --redis; development only)
  valet dev token --agent NAME | --admin NAME [--issuer URL]
                                                print a development identity (or admin) token
  valet dev idp [--addr ADDR]                   run only the development OIDC issuer
  valet serve --config FILE [--addr ADDR]       run in production mode
  valet templates check FILE|DIR...             validate template files
  valet keys generate --out FILE [--alg EdDSA|ES256]
                                                write a new task-token signing key
  valet approvals ls [--state S]                list approvals (approver client: --client ID --secret S)
  valet approvals approve ID [--reason R]       approve a pending approval
  valet approvals deny ID [--reason R]          deny a pending approval
  valet audit verify FILE | --redis URL         check an audit trail's hash chain
  valet proxy --templates PATHS --client ID --dev-agent NAME|--identity-file F|--identity-command C
                                                run the secretless-mode proxy next to an agent (docs/proxy.md)
  valet completion bash|zsh|fish                print a shell completion script
  valet version                                 print the version and commit

Incident response (admin API; --server URL or VALET_SERVER, --token or VALET_ADMIN_TOKEN, -o table|json):
  valet revoke [--agent A] [--issuer I] [--template T] [--tool T] [--task ID] [--label k=v] [--since 2h] [--dry-run]
  valet freeze agent|template|issuer NAME [--issuer I] [--revoke] [--reason R]
  valet freeze --label k=v [--dry-run] [--revoke] [--reason R]
  valet unfreeze agent|template|issuer NAME [--issuer I]
  valet controls ls
  valet tasks ls [--agent A] [--issuer I] [--state S] [--template T] [--limit N] [--cursor C]
  valet tasks show ID
  valet tasks timeline ID
  valet tasks rollback ID [--dry-run] [--continue] [--yes]
  valet agents ls [--issuer I] [--label k=v] [--template T] [--since 24h] [--sort KEY] [--limit N] [--cursor C]
  valet agents show ID

Every command takes --help. Flags may come before or after arguments.
Environment: VALET_ADDR, VALET_REDIS_URL and the others listed in the README.
`

// run is main without the process: every dependency on the outside world is
// a parameter, so tests drive it directly.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	if len(args) < 2 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	e := env{getenv: getenv, stdout: stdout, stderr: stderr}
	name := args[1]
	c, ok := findCommand(commandTable(), name)
	switch {
	case isHelp(name):
		fmt.Fprint(stdout, usage)
		return 0
	case !ok:
		fmt.Fprintf(stderr, "valet: unknown command %q\n\n%s", name, usage)
		return 2
	}
	err := dispatch(ctx, e, name, c, args[2:])
	if errors.Is(err, errHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "valet: %v\n", err)
		if _, ok := err.(usageError); ok {
			return 2
		}
		return 1
	}
	return 0
}
