package oauth

import (
	"context"
	"crypto/x509"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestCIMDRefusesInnerAddresses: without AllowPrivate, a document on a
// loopback address is never fetched (the guard runs at connect time, after
// DNS), and the refusal is the client's fault, safe to show.
func TestCIMDRefusesInnerAddresses(t *testing.T) {
	var hits atomic.Int32
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{}`))
	}))
	defer srv.Close()
	roots := x509.NewCertPool()
	roots.AddCert(srv.Certificate())
	for _, host := range []string{srv.URL, strings.Replace(srv.URL, "127.0.0.1", "localhost", 1)} {
		f := newCIMDFetcher(CIMDConfig{Enabled: true, RootCAs: roots}, time.Now)
		_, err := f.clientOf(context.Background(), host+"/client.json")
		var ce errCIMD
		if !errors.As(err, &ce) || !strings.Contains(ce.msg, "not at a public address") {
			t.Errorf("%s: %v, want a refusal naming the address", host, err)
		}
	}
	if hits.Load() != 0 {
		t.Fatalf("the guard let %d requests through", hits.Load())
	}
}

func TestPublicAddr(t *testing.T) {
	for addr, public := range map[string]bool{
		"127.0.0.1": false, "10.1.2.3": false, "172.16.0.1": false, "192.168.1.1": false, "169.254.169.254": false,
		"100.64.0.1": false, "0.0.0.0": false, "::1": false, "fe80::1": false, "fc00::1": false, "224.0.0.1": false,
		"8.8.8.8": true, "2001:4860:4860::8888": true,
	} {
		if got := publicAddr(netip.MustParseAddr(addr)); got != public {
			t.Errorf("publicAddr(%s) = %v, want %v", addr, got, public)
		}
	}
}

// TestCIMDClientIDShape: the client_id URL rules of the CIMD draft.
func TestCIMDClientIDShape(t *testing.T) {
	for id, ok := range map[string]bool{
		"https://host.example.com/client.json": true, "https://host.example.com/a/b": true,
		"http://host.example.com/client.json": false, "https://host.example.com": false, "https://host.example.com/": false,
		"https://user@host.example.com/c": false, "https://host.example.com/c#x": false, "https://host.example.com/a/../c": false,
		"https://host.example.com/./c": false, "https:opaque": false, "https://host.example.com/" + strings.Repeat("a", 600): false,
	} {
		if got := IsCIMDClientID(id); got != ok {
			t.Errorf("IsCIMDClientID(%q) = %v, want %v", id, got, ok)
		}
	}
}

// TestCIMDCaches: a document is fetched once for CacheTTL.
func TestCIMDCaches(t *testing.T) {
	var hits atomic.Int32
	var url string
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"client_id":"` + url + `","redirect_uris":["https://host.example.com/cb"]}`))
	}))
	defer srv.Close()
	url = srv.URL + "/c.json"
	roots := x509.NewCertPool()
	roots.AddCert(srv.Certificate())
	now := time.Now()
	f := newCIMDFetcher(CIMDConfig{Enabled: true, AllowPrivate: true, RootCAs: roots, CacheTTL: time.Minute}, func() time.Time { return now })
	for range 3 {
		if c, err := f.clientOf(context.Background(), url); err != nil || c.RedirectURIs[0] != "https://host.example.com/cb" {
			t.Fatalf("%+v %v", c, err)
		}
	}
	now = now.Add(2 * time.Minute)
	if _, err := f.clientOf(context.Background(), url); err != nil {
		t.Fatal(err)
	}
	if hits.Load() != 2 {
		t.Fatalf("%d fetches, want 2 (one per cache period)", hits.Load())
	}
}
