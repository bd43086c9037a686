package main

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/valet-dev/valet/internal/redistest"
	"github.com/valet-dev/valet/internal/testkit"
)

// TestRevocationReachesOtherReplica runs two real `valet serve` processes
// on one Redis: a token revoked through replica 1 shows on replica 2's
// revocation stream within a second.
func TestRevocationReachesOtherReplica(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the valet binary and runs two processes; skipped with -short")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "valet")
	build := exec.Command("go", "build", "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	redis := redistest.Start(t)
	idpOut, idpErr := startRun(t, nil, "dev", "idp", "--addr", "127.0.0.1:0")
	idpURL := waitFor(t, idpOut, idpErr, regexp.MustCompile(`development issuer (http://\S+)`))
	key := filepath.Join(dir, "signing.pem")
	if out, err := exec.Command(bin, "keys", "generate", "--out", key).CombinedOutput(); err != nil {
		t.Fatalf("keys generate: %v\n%s", err, out)
	}
	cfg, err := os.ReadFile("../../examples/serve.yaml")
	if err != nil {
		t.Fatal(err)
	}
	templates, _ := filepath.Abs("../../examples/templates")
	// Both replicas share one public URL (behind a load balancer in real
	// life), keys, issuer, Redis and templates; each has its own audit file.
	public := "http://valet.internal.test"
	const secret = "replica-test-secret-0123456789"
	var bases []string
	for i := range 2 {
		addr := testkit.FreeAddr(t)
		c := strings.NewReplacer(
			"public_url: http://127.0.0.1:8080", "public_url: "+public,
			"http://127.0.0.1:8081", idpURL,
			"redis://127.0.0.1:6379/0", redis.URL(),
			"/tmp/valet-demo/signing.pem", key,
			"/tmp/valet-demo/audit.jsonl", filepath.Join(dir, "audit-"+string(rune('a'+i))+".jsonl"),
			"paths: [templates]", "paths: ["+templates+"]",
		).Replace(string(cfg))
		p := writeFile(t, dir, "valet-"+string(rune('a'+i))+".yaml", c)
		cmd := exec.Command(bin, "serve", "--config", p, "--addr", addr)
		cmd.Env = append(os.Environ(), "VALET_TOOL_SERVER_SECRET="+secret)
		logf, _ := os.Create(filepath.Join(dir, "replica-"+string(rune('a'+i))+".log"))
		cmd.Stdout, cmd.Stderr = logf, logf
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			cmd.Process.Signal(os.Interrupt)
			cmd.Wait()
			logf.Close()
		})
		bases = append(bases, "http://"+addr)
	}
	for _, b := range bases {
		testkit.EventuallyWithin(t, 30*time.Second, func() bool {
			resp, err := http.Get(b + "/readyz")
			if err != nil {
				return false
			}
			resp.Body.Close()
			return resp.StatusCode == http.StatusOK
		}, "replica "+b+" to become ready")
	}

	// A task declared on replica 1.
	v := &servedValet{base: bases[0], idpURL: idpURL}
	status, token := v.declare(t, "support-triage")
	if status != http.StatusCreated {
		t.Fatalf("declare on replica 1: %d", status)
	}

	// Replica 2's stream, from now on.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, bases[1]+"/v1/revocations/stream", nil)
	req.SetBasicAuth("tool-server", secret)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("stream on replica 2: %s", resp.Status)
	}
	events := make(chan string, 16)
	go func() {
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			events <- sc.Text()
		}
		close(events)
	}()

	// Revoke on replica 1.
	rreq, _ := http.NewRequest(http.MethodPost, bases[0]+"/v1/revoke", strings.NewReader(url.Values{"token": {token}}.Encode()))
	rreq.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	rreq.SetBasicAuth("tool-server", secret)
	revokedAt := time.Now()
	rresp, err := http.DefaultClient.Do(rreq)
	if err != nil || rresp.StatusCode != http.StatusOK {
		t.Fatalf("revoke on replica 1: %v %v", err, rresp)
	}
	rresp.Body.Close()
	claims := jwtClaims(t, token)
	for {
		select {
		case line, ok := <-events:
			if !ok {
				t.Fatal("replica 2's stream ended before the revocation arrived")
			}
			if strings.HasPrefix(line, "data:") && strings.Contains(line, claims["jti"].(string)) {
				took := time.Since(revokedAt)
				t.Logf("replica 2 streamed the revocation made on replica 1 after %v", took)
				if took > time.Second {
					t.Fatalf("took %v, want within 1 s", took)
				}
				return
			}
		case <-ctx.Done():
			t.Fatal("replica 2 never streamed the revocation")
		}
	}
}

// jwtClaims decodes a JWT's payload without verifying it (test only).
func jwtClaims(t *testing.T, token string) map[string]any {
	t.Helper()
	parts := strings.Split(token, ".")
	b, err := base64URL(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func base64URL(s string) ([]byte, error) { return base64.RawURLEncoding.DecodeString(s) }
