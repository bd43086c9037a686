package main

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"time"

	"github.com/valet-dev/valet/issuers"
	"github.com/valet-dev/valet/policy"
)

// cmdTemplatesCheck is `valet templates check FILE|DIR...`.
func cmdTemplatesCheck(ctx context.Context, e env, args []string) error {
	fs := e.newFlags("templates check FILE|DIR...", "Load and compile every template in the files and folders given (YAML, *.yaml and *.yml),\nprinting each problem with its file and line.")
	paths, err := fs.parse(args)
	if err != nil {
		return err
	}
	if len(paths) == 0 {
		return usageError("usage: valet templates check FILE|DIR... (see --help)")
	}
	files, err := policy.ReadFiles(paths)
	if err != nil {
		return err
	}
	set, err := policy.Load(files, nil)
	if err != nil {
		var te *policy.Errors
		if errors.As(err, &te) {
			return fmt.Errorf("%d problem(s):\n%w", len(te.Problems), err)
		}
		return err
	}
	fmt.Fprintf(e.stdout, "ok: %d template(s) in %d file(s): %v\n", len(set.Names()), len(files), set.Names())
	return nil
}

// cmdKeysGenerate is `valet keys generate`.
func cmdKeysGenerate(ctx context.Context, e env, args []string) error {
	fs := e.newFlags("keys generate --out FILE [--alg EdDSA|ES256]", "Write a new private key for signing task tokens (PEM, mode 0600; an existing file is never overwritten)\nand print its key id.")
	out := fs.String("out", "", "`file` to write the PEM private key to (required)")
	alg := fs.String("alg", "EdDSA", "`algorithm`: EdDSA or ES256")
	if _, err := fs.parseN(args, 0); err != nil {
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
	fmt.Fprintf(e.stdout, "wrote %s key %s (kid %s)\n", *alg, *out, kid)
	return nil
}

// cmdDevToken is `valet dev token`: it asks a running development issuer
// for an identity token and prints it alone, for $(...) in a shell.
func cmdDevToken(ctx context.Context, e env, args []string) error {
	fs := e.newFlags("dev token --agent NAME | --admin NAME [--issuer URL]",
		"Ask a running `valet dev` (or `valet dev idp`) for a development identity token and print it alone,\nfor TOKEN=$(valet dev token --agent agent-7).")
	agent := fs.String("agent", "", "the agent's `name` (the token's sub)")
	admin := fs.String("admin", "", "mint a development admin token (group valet-admins) for this `name` instead")
	def := "http://" + envOr(e.getenv, "VALET_ADDR", defaultAddr) + "/dev"
	issuer := fs.String("issuer", def, "the development issuer `URL`")
	if _, err := fs.parseN(args, 0); err != nil {
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
	fmt.Fprintln(e.stdout, body.Token)
	return nil
}

func envOr(getenv func(string) string, name, def string) string {
	if v := getenv(name); v != "" {
		return v
	}
	return def
}

func sha256Of(s string) [32]byte { return sha256.Sum256([]byte(s)) }
