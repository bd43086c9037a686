// Command valet is Valet's one binary: the broker (`serve`, `dev`) and the
// tools around it (`templates check`, `keys generate`, `dev token`).
package main

import (
	"context"
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
  valet dev [--addr ADDR]                       run with no Redis, IdP or Vault (in-memory, development only)
  valet dev token --agent NAME [--issuer URL]   print a development identity token
  valet dev idp [--addr ADDR]                   run only the development OIDC issuer
  valet serve --config FILE [--addr ADDR]       run in production mode
  valet templates check FILE|DIR...             validate template files
  valet keys generate --out FILE [--alg EdDSA|ES256]
                                                write a new task-token signing key
  valet approvals ls|approve ID|deny ID [--server URL] [--client ID --secret S] [-o json]
                                                list and decide pending approvals
  valet version

Incident response (admin API; --server URL or VALET_SERVER, --token or VALET_ADMIN_TOKEN, -o table|json):
  valet revoke [--agent A] [--issuer I] [--template T] [--tool T] [--task ID] [--since 2h] [--dry-run]
  valet freeze agent|template|issuer NAME [--issuer I] [--revoke] [--reason R]
  valet unfreeze agent|template|issuer NAME [--issuer I]
  valet controls ls
  valet tasks ls [--agent A] [--state S] [--template T] | show ID | timeline ID
  valet audit verify FILE | --redis URL    check an audit trail's hash chain

Environment: VALET_ADDR, VALET_REDIS_URL and the others listed in the README.
`

// run is main without the process: every dependency on the outside world is
// a parameter, so tests drive it directly.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	if len(args) < 2 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	var err error
	switch cmd, rest := args[1], args[2:]; cmd {
	case "serve":
		err = cmdServe(ctx, rest, getenv, stdout, stderr)
	case "dev":
		err = cmdDev(ctx, rest, getenv, stdout, stderr)
	case "templates":
		err = cmdTemplates(rest, stdout)
	case "keys":
		err = cmdKeys(rest, stdout)
	case "revoke":
		err = cmdRevoke(ctx, rest, getenv, stdout, stderr)
	case "freeze", "unfreeze":
		err = cmdFreeze(ctx, rest, getenv, stdout, stderr, cmd == "unfreeze")
	case "controls":
		err = cmdControls(ctx, rest, getenv, stdout, stderr)
	case "tasks":
		err = cmdTasks(ctx, rest, getenv, stdout, stderr)
	case "audit":
		err = cmdAudit(ctx, rest, getenv, stdout)
	case "approvals":
		err = cmdApprovals(ctx, rest, getenv, stdout)
	case "version":
		fmt.Fprintln(stdout, "valet", version)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
	default:
		fmt.Fprintf(stderr, "valet: unknown command %q\n\n%s", cmd, usage)
		return 2
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

var version = "dev"

// usageError is a mistake on the command line (exit status 2).
type usageError string

func (e usageError) Error() string { return string(e) }
