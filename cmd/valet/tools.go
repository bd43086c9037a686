package main

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"time"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/issuers"
)

// newFlags is a flag set that reports its errors instead of exiting.
func newFlags(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	return fs
}

func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		return usageError(fmt.Sprintf("%s: %v", fs.Name(), err))
	}
	return nil
}

// cmdTemplates is `valet templates check FILE|DIR...`.
func cmdTemplates(args []string, stdout io.Writer) error {
	if len(args) < 2 || args[0] != "check" {
		return usageError("usage: valet templates check FILE|DIR...")
	}
	files, err := broker.ReadTemplateFiles(args[1:])
	if err != nil {
		return err
	}
	set, err := broker.LoadTemplates(files, nil)
	if err != nil {
		var te *broker.TemplateErrors
		if errors.As(err, &te) {
			return fmt.Errorf("%d problem(s):\n%w", len(te.Problems), err)
		}
		return err
	}
	fmt.Fprintf(stdout, "ok: %d template(s) in %d file(s): %v\n", len(set.Names()), len(files), set.Names())
	return nil
}

// cmdKeys is `valet keys generate`.
func cmdKeys(args []string, stdout io.Writer) error {
	if len(args) < 1 || args[0] != "generate" {
		return usageError("usage: valet keys generate --out FILE [--alg EdDSA|ES256]")
	}
	fs := newFlags("keys generate")
	out := fs.String("out", "", "file to write the PEM private key to")
	alg := fs.String("alg", "EdDSA", "EdDSA or ES256")
	if err := parseFlags(fs, args[1:]); err != nil {
		return err
	}
	if *out == "" {
		return usageError("keys generate: --out is required")
	}
	key, err := issuers.GenerateSigningKey(*alg)
	if err != nil {
		return err
	}
	pemBytes, err := issuers.EncodeSigningKeyPEM(key)
	if err != nil {
		return err
	}
	kid, err := issuers.KeyID(key.Public())
	if err != nil {
		return err
	}
	f, err := os.OpenFile(*out, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("writing key: %w", err)
	}
	if _, err := f.Write(pemBytes); err != nil {
		f.Close()
		return fmt.Errorf("writing key: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("writing key: %w", err)
	}
	fmt.Fprintf(stdout, "wrote %s key %s (kid %s)\n", *alg, *out, kid)
	return nil
}

// cmdDevToken is `valet dev token`: it asks a running development issuer
// for an identity token and prints it alone, for $(...) in a shell.
func cmdDevToken(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	fs := newFlags("dev token")
	agent := fs.String("agent", "", "the agent's name (the token's sub)")
	admin := fs.String("admin", "", "mint a development admin token (group valet-admins) for this name instead")
	def := "http://" + envOr(getenv, "VALET_ADDR", defaultAddr) + "/dev"
	issuer := fs.String("issuer", def, "the development issuer URL")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if (*agent == "") == (*admin == "") {
		return usageError("dev token: give exactly one of --agent and --admin")
	}
	u := *issuer + "/token?agent=" + url.QueryEscape(*agent)
	if *admin != "" {
		u = *issuer + "/token?admin=" + url.QueryEscape(*admin)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, nil)
	if err != nil {
		return err
	}
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Do(req)
	if err != nil {
		return fmt.Errorf("asking %s for a token (is `valet dev` running?): %w", *issuer, err)
	}
	defer resp.Body.Close()
	var body struct {
		Token   string `json:"identity_token"`
		Message string `json:"message"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<10)).Decode(&body); err != nil {
		return fmt.Errorf("reading the token from %s: %w", *issuer, err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s answered %s: %s", *issuer, resp.Status, body.Message)
	}
	fmt.Fprintln(stdout, body.Token)
	return nil
}

func envOr(getenv func(string) string, name, def string) string {
	if v := getenv(name); v != "" {
		return v
	}
	return def
}

func sha256Of(s string) [32]byte { return sha256.Sum256([]byte(s)) }
