package issuers

import (
	"bufio"
	"bytes"
	"context"
	"crypto/elliptic"
	"encoding/base64"
	"flag"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/valet-dev/valet/broker"
)

var update = flag.Bool("update", false, "rewrite testdata/fuzz-tokens.txt")

const fuzzTokensFile = "fuzz-tokens.txt"

// fuzzIssuers are built from the key fixtures, so every fuzz worker process
// verifies with the same keys, and run on a fixed clock at which the fixture
// tokens are valid.
func fuzzIssuers(t testing.TB) []*JWT {
	t.Helper()
	var out []*JWT
	for _, f := range []struct{ alg, file, kid string }{
		{AlgEdDSA, "ed25519-pkcs8.pem", "fuzz-ed"},
		{AlgES256, "p256-pkcs8.pem", "fuzz-ec"},
	} {
		k, err := LoadSigningKeyPEM(readFixture(t, f.file))
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, newIssuer(t, JWTConfig{Algorithm: f.alg, Keys: []SigningKey{{KID: f.kid, Private: k}}}, func() time.Time { return t0.Add(time.Minute) }))
	}
	return out
}

func readFuzzTokens(t testing.TB) []string {
	t.Helper()
	var toks []string
	sc := bufio.NewScanner(bytes.NewReader(readFixture(t, fuzzTokensFile)))
	for sc.Scan() {
		if line := strings.TrimSpace(sc.Text()); line != "" {
			toks = append(toks, line)
		}
	}
	if len(toks) == 0 {
		t.Fatalf("no tokens in testdata/%s", fuzzTokensFile)
	}
	return toks
}

// TestFuzzTokens keeps the FuzzVerify fixture honest: each fixture token
// verifies under exactly one of the fuzz issuers. With -update it mints them
// afresh.
func TestFuzzTokens(t *testing.T) {
	issuers := fuzzIssuers(t)
	if *update {
		var buf bytes.Buffer
		for _, j := range issuers {
			for _, g := range []broker.Grant{testGrant, {Audiences: []string{"a"}}} {
				task := testTask(t0)
				task.Deadline = t0.Add(time.Hour)
				ms, err := j.Mint(context.Background(), task, testPrincipal, g)
				if err != nil {
					t.Fatal(err)
				}
				buf.WriteString(ms[0].Material["access_token"].(string) + "\n")
			}
		}
		if err := os.WriteFile(filepath.Join("testdata", fuzzTokensFile), buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for i, tok := range readFuzzTokens(t) {
		ok := 0
		for _, j := range issuers {
			if _, err := j.Verify(tok); err == nil {
				ok++
			}
		}
		if ok != 1 {
			t.Errorf("fixture token %d verifies under %d issuers, want 1", i, ok)
		}
	}
}

// FuzzVerify checks that Verify never panics and that nothing verifies except
// the exact bytes of a token Valet minted: no mutation, re-encoding or
// forgery of a fixture token is accepted.
func FuzzVerify(f *testing.F) {
	issuers := fuzzIssuers(f)
	minted := readFuzzTokens(f)
	known := make(map[string]bool, len(minted))
	for _, tok := range minted {
		known[tok] = true
		parts := strings.Split(tok, ".")
		hdr, _ := base64.RawURLEncoding.DecodeString(parts[0])
		f.Add(tok)
		f.Add(tok + "=")
		f.Add(tok[:len(tok)-1])
		f.Add(parts[0] + "." + parts[1] + ".")
		f.Add(parts[0] + "." + parts[1])
		f.Add(parts[0] + "." + parts[1] + "." + parts[2] + "." + parts[2])
		f.Add(base64.RawURLEncoding.EncodeToString(bytes.Replace(hdr, []byte(`"EdDSA"`), []byte(`"none"`), 1)) + "." + parts[1] + ".")
		f.Add(base64.RawURLEncoding.EncodeToString(bytes.Replace(hdr, []byte(`"ES256"`), []byte(`"HS256"`), 1)) + "." + parts[1] + "." + parts[2])
		f.Add(base64.URLEncoding.EncodeToString(hdr) + "." + parts[1] + "." + parts[2])
		f.Add(strings.ToUpper(tok))
		f.Add(parts[0] + "." + parts[1] + "." + nonCanonical(parts[2]))
		if sig, err := base64.RawURLEncoding.DecodeString(parts[2]); err == nil && len(sig) == 64 && strings.Contains(string(hdr), "ES256") {
			s := new(big.Int).SetBytes(sig[32:])
			new(big.Int).Sub(elliptic.P256().Params().N, s).FillBytes(sig[32:])
			f.Add(parts[0] + "." + parts[1] + "." + base64.RawURLEncoding.EncodeToString(sig)) // high-S twin
		}
	}
	// Header of one algorithm over the payload and signature of the other.
	if len(minted) >= 3 {
		a, b := strings.Split(minted[0], "."), strings.Split(minted[len(minted)-1], ".")
		f.Add(b[0] + "." + a[1] + "." + a[2])
	}
	f.Add("")
	f.Add("..")
	f.Add(strings.Repeat(".", 10000))
	f.Add("eyJhbGciOiJub25lIn0.e30.")

	f.Fuzz(func(t *testing.T, raw string) {
		for _, j := range issuers {
			c, err := j.Verify(raw)
			if err == nil && !known[raw] {
				t.Fatalf("a token that was never minted verified (%s): %q -> %+v", j.alg, raw, c)
			}
			if err != nil && c.ID != "" {
				t.Fatalf("claims returned alongside an error: %+v", c)
			}
		}
	})
}

// nonCanonical spells a base64url segment whose length leaves unused bits in
// its last character with those bits set: lenient decoders read the same
// bytes.
func nonCanonical(seg string) string {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	if seg == "" || len(seg)%4 == 0 {
		return seg
	}
	b := []byte(seg)
	b[len(b)-1] = alphabet[strings.IndexByte(alphabet, b[len(b)-1])|1]
	return string(b)
}
