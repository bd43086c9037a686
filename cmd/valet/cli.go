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

// env is a command's outside world: the environment and the two streams.
type env struct {
	getenv         func(string) string
	stdout, stderr io.Writer
	// built, when set, is told of every flag set the command builds: it is
	// how describe learns a command's flags from the command itself.
	built func(*flags)
}

// newFlags is the flag set of `valet <synopsis>`; about says what the
// command does; --help goes to e.stdout.
func (e env) newFlags(synopsis, about string) *flags {
	fs := newFlags(e.stdout, synopsis, about)
	if e.built != nil {
		e.built(fs)
	}
	return fs
}

// newFlags is a flag set writing --help to out (env.newFlags is the one
// commands use).
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

func isHelp(a string) bool { return a == "-h" || a == "-help" || a == "--help" || a == "help" }
