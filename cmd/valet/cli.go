package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
)

// errHelp means help was asked for (-h, -help, --help) and printed on
// stdout: the command exits 0.
var errHelp = errors.New("help requested")

// usageError is a mistake on the command line (exit status 2).
type usageError string

func (e usageError) Error() string { return string(e) }

// flags is the one flag helper of every subcommand: a standard flag set
// whose --help prints the command's synopsis, summary and every flag on
// stdout, and whose parse accepts flags before, between and after the
// positional arguments.
type flags struct {
	*flag.FlagSet
	synopsis, about string
	out             io.Writer
}

// newFlags is the flag set of `valet <synopsis>`; about says what the
// command does, out is where --help goes.
func newFlags(out io.Writer, synopsis, about string) *flags {
	name, _, _ := strings.Cut(synopsis, " [")
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	return &flags{FlagSet: fs, synopsis: synopsis, about: about, out: out}
}

// parse parses args and returns the positional arguments. Flags may come
// anywhere; "--" ends them. -h/--help prints help and returns errHelp.
func (f *flags) parse(args []string) ([]string, error) {
	var pos []string
	for {
		err := f.FlagSet.Parse(args)
		if errors.Is(err, flag.ErrHelp) {
			f.help()
			return nil, errHelp
		}
		if err != nil {
			return nil, usageError(fmt.Sprintf("%s: %v (see valet %s --help)", f.Name(), err, f.Name()))
		}
		rest := f.Args()
		if len(rest) == 0 {
			return pos, nil
		}
		if consumed := len(args) - len(rest); consumed > 0 && args[consumed-1] == "--" {
			return append(pos, rest...), nil
		}
		pos, args = append(pos, rest[0]), rest[1:]
	}
}

// parseN is parse for a command that takes exactly n positional arguments.
func (f *flags) parseN(args []string, n int) ([]string, error) {
	pos, err := f.parse(args)
	if err != nil {
		return nil, err
	}
	if len(pos) != n {
		return nil, usageError("usage: valet " + f.synopsis + " (see --help)")
	}
	return pos, nil
}

// help prints the synopsis, the summary and every flag.
func (f *flags) help() {
	fmt.Fprintf(f.out, "Usage: valet %s\n\n%s\n", f.synopsis, f.about)
	n := 0
	f.VisitAll(func(fl *flag.Flag) {
		if n++; n == 1 {
			fmt.Fprint(f.out, "\nFlags:\n")
		}
		dash := "--"
		if len(fl.Name) == 1 {
			dash = "-"
		}
		arg, usage := flag.UnquoteUsage(fl)
		line := "  " + dash + fl.Name
		if arg != "" {
			line += " " + strings.ToUpper(arg)
		}
		switch {
		case fl.DefValue == "":
		case fl.Name == "token" || fl.Name == "secret": // never print a credential taken from the environment
			usage += " (set from the environment)"
		case fl.DefValue != "false" && fl.DefValue != "0" && fl.DefValue != "0s":
			usage += fmt.Sprintf(" (default %q)", fl.DefValue)
		}
		fmt.Fprintf(f.out, "%s\n      %s\n", line, usage)
	})
}

// subcommand is one verb of a command group such as `valet tasks`.
type subcommand struct {
	name, about string
}

// groupHelp handles a command group called with no verb or with --help:
// it prints the group's verbs (on stdout for --help, as a usage error
// otherwise). done is false when args name a verb to run.
func groupHelp(args []string, out io.Writer, group string, subs []subcommand) (done bool, err error) {
	var b strings.Builder
	fmt.Fprintf(&b, "Usage: valet %s COMMAND [flags]\n\nCommands:\n", group)
	for _, s := range subs {
		fmt.Fprintf(&b, "  %-10s %s\n", s.name, s.about)
	}
	fmt.Fprintf(&b, "\nRun `valet %s COMMAND --help` for a command's flags.\n", group)
	switch {
	case len(args) > 0 && isHelp(args[0]):
		fmt.Fprint(out, b.String())
		return true, errHelp
	case len(args) == 0:
		return true, usageError(b.String())
	}
	for _, s := range subs {
		if s.name == args[0] {
			return false, nil
		}
	}
	return true, usageError(fmt.Sprintf("%s: unknown command %q\n\n%s", group, args[0], b.String()))
}

func isHelp(a string) bool { return a == "-h" || a == "-help" || a == "--help" || a == "help" }
