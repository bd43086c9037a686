package main

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/valet-dev/valet/internal/redistest"
	"github.com/valet-dev/valet/internal/testkit"
)

// TestServeMetricsListenerSecretAndFeedCaps runs `valet serve` with
// metrics.listen, metrics.bearer_secret_env and a feed cap: /metrics
// leaves the main listener, needs the secret on its own, and counts live
// credentials from the ledger; a second stream of one client gets 429.
func TestServeMetricsListenerSecretAndFeedCaps(t *testing.T) {
	const toolSecret, metricsSecret = "serve-metrics-test-secret-0123", "metrics-secret-0123456789"
	redis := redistest.Start(t)
	dir := t.TempDir()
	idpOut, idpErr := startRun(t, nil, "dev", "idp", "--addr", "127.0.0.1:0")
	idpURL := waitFor(t, idpOut, idpErr, regexp.MustCompile(`development issuer (http://\S+)`))
	key := filepath.Join(dir, "signing.pem")
	var keyOut bytes.Buffer
	if code := run(context.Background(), []string{"valet", "keys", "generate", "--out", key}, os.Getenv, &keyOut, &keyOut); code != 0 {
		t.Fatalf("keys generate: %s", keyOut.String())
	}
	templates, _ := filepath.Abs("../../examples/templates")
	cfg, err := os.ReadFile("../../examples/serve.yaml")
	if err != nil {
		t.Fatal(err)
	}
	addr, maddr := testkit.FreeAddr(t), testkit.FreeAddr(t)
	c := strings.NewReplacer(
		"127.0.0.1:8080", addr,
		"http://127.0.0.1:8081", idpURL,
		"redis://127.0.0.1:6379/0", redis.URL(),
		"/tmp/valet-demo/signing.pem", key,
		"/tmp/valet-demo/audit.jsonl", filepath.Join(dir, "audit.jsonl"),
		"paths: [templates]", "paths: ["+templates+"]",
	).Replace(string(cfg)) + "\nmetrics:\n  listen: " + maddr + "\n  bearer_secret_env: VALET_METRICS_SECRET\nfeed:\n  max_subscribers_per_client: 1\n"
	p := writeFile(t, dir, "valet.yaml", c)
	_, errOut := startRun(t, map[string]string{"VALET_TOOL_SERVER_SECRET": toolSecret, "VALET_METRICS_SECRET": metricsSecret}, "serve", "--config", p)
	v := &servedValet{base: "http://" + addr, idpURL: idpURL}
	testkit.Eventually(t, func() bool {
		resp, err := http.Get(v.base + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}, "valet serve ready")
	get := func(url, bearer string) (int, string) {
		req, _ := http.NewRequest(http.MethodGet, url, nil)
		if bearer != "" {
			req.Header.Set("Authorization", "Bearer "+bearer)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if st, _ := get(v.base+"/metrics", metricsSecret); st != http.StatusNotFound {
		t.Fatalf("/metrics on the main listener: %d, want 404", st)
	}
	if st, body := get("http://"+maddr+"/metrics", ""); st != http.StatusUnauthorized || !strings.Contains(body, `"error":"unauthenticated"`) {
		t.Fatalf("/metrics without the secret: %d %s", st, body)
	}
	if st, _ := get("http://"+maddr+"/metrics", "not-the-secret"); st != http.StatusUnauthorized {
		t.Fatalf("/metrics with a wrong secret: %d", st)
	}
	if st, _ := v.declare(t, "support-triage"); st != http.StatusCreated {
		t.Fatalf("declare: %d\n%s", st, errOut.String())
	}
	if st, body := get("http://"+maddr+"/metrics", metricsSecret); st != http.StatusOK || !strings.Contains(body, "\nvalet_credentials_live 1\n") {
		t.Fatalf("/metrics with the secret: %d\n%s", st, body)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stream := func() *http.Response {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, v.base+"/v1/revocations/stream", nil)
		req.SetBasicAuth("tool-server", toolSecret)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	first := stream()
	defer first.Body.Close()
	if first.StatusCode != http.StatusOK {
		t.Fatalf("first stream: %d", first.StatusCode)
	}
	second := stream()
	second.Body.Close()
	if second.StatusCode != http.StatusTooManyRequests || second.Header.Get("Retry-After") == "" {
		t.Fatalf("second stream of one client: %d, Retry-After %q", second.StatusCode, second.Header.Get("Retry-After"))
	}
}

func TestFeedMetricsConfigValidation(t *testing.T) {
	c := Config{Addr: "127.0.0.1:8080", Feed: FeedConfig{MaxSubscribers: -1, Readers: 100},
		Metrics: MetricsConfig{Listen: "127.0.0.1:8080", BearerSecretEnv: "SHORT"}}
	errs := c.validateFeedMetrics(func(string) string { return "short" })
	got := ""
	for _, e := range errs {
		got += e.Error() + "\n"
	}
	for _, want := range []string{"feed.max_subscribers:", "feed.readers:", "metrics.listen: must differ from addr", "metrics.bearer_secret_env:"} {
		if !strings.Contains(got, want) {
			t.Errorf("no %q in:\n%s", want, got)
		}
	}
}

// TestDevMemoryFeed: `valet dev` without Redis serves the revocation feed
// of its memory ledger through the same fan-out: a revoked task token is
// on the stream and in the snapshot.
func TestDevMemoryFeed(t *testing.T) {
	addr := testkit.FreeAddr(t)
	out, errOut := startRun(t, nil, "dev", "--addr", addr, "--audit", filepath.Join(t.TempDir(), "audit.jsonl"))
	base := waitFor(t, out, errOut, regexp.MustCompile(`Valet development server on (http://\S+)`))
	v := &servedValet{base: base, idpURL: base + "/dev"}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/v1/revocations/stream", nil)
	req.SetBasicAuth("tool-server", devClientSecret)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("stream: %d", resp.StatusCode)
	}
	st, token := v.declare(t, "support-triage")
	if st != http.StatusCreated {
		t.Fatalf("declare: %d", st)
	}
	rv, _ := http.NewRequest(http.MethodPost, base+"/v1/revoke", strings.NewReader("token="+token))
	rv.SetBasicAuth("tool-server", devClientSecret)
	rv.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	rr, err := http.DefaultClient.Do(rv)
	if err != nil || rr.StatusCode != http.StatusOK {
		t.Fatalf("revoke: %v %v", rr, err)
	}
	rr.Body.Close()
	buf := make([]byte, 4096)
	var got string
	for !strings.Contains(got, "event: revoked") {
		n, err := resp.Body.Read(buf)
		if err != nil {
			t.Fatalf("stream ended before the revocation: %v\n%s", err, got)
		}
		got += string(buf[:n])
	}
	snapReq, _ := http.NewRequest(http.MethodGet, base+"/v1/revocations", nil)
	snapReq.SetBasicAuth("tool-server", devClientSecret)
	sr, err := http.DefaultClient.Do(snapReq)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(sr.Body)
	sr.Body.Close()
	if sr.StatusCode != http.StatusOK || !strings.Contains(string(b), `"jti"`) {
		t.Fatalf("snapshot: %d %s", sr.StatusCode, b)
	}
}
