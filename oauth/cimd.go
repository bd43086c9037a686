package oauth

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/valet-dev/valet/broker"
)

// PublicClient is an interactive client (an MCP host acting for a person)
// of the authorization code grant: a public client (RFC 6749 section 2.1,
// token_endpoint_auth_method none) proving itself by PKCE and its exact
// redirect URIs. It is configured, or described by its Client ID Metadata
// Document (CIMD).
type PublicClient struct {
	ID           string
	Name         string
	RedirectURIs []string
	// Templates the client may ask for; empty for a CIMD client, which
	// the templates' principals admit or not (issuer ClientIssuer, sub
	// its client id URL).
	Templates []string
}

// allows reports whether the client may ask for template.
func (c PublicClient) allows(template string) bool {
	return len(c.Templates) == 0 || slices.Contains(c.Templates, template)
}

// CIMDConfig configures Client ID Metadata Documents
// (draft-ietf-oauth-client-id-metadata-document): a client_id that is an
// https URL names a JSON document there describing the client.
type CIMDConfig struct {
	// Enabled turns CIMD client ids on.
	Enabled bool
	// AllowPrivate lets documents be fetched from loopback and private
	// addresses; for tests only.
	AllowPrivate bool
	// RootCAs, when set, are the only roots trusted for the fetch (tests).
	RootCAs *x509.CertPool
	// Timeout bounds one fetch (default 5 s); MaxBytes a document (default
	// 5 KiB, as the draft suggests); CacheTTL how long a document is kept
	// (default 5 min).
	Timeout  time.Duration
	MaxBytes int64
	CacheTTL time.Duration
}

// Defaults of CIMDConfig.
const (
	DefaultCIMDTimeout  = 5 * time.Second
	DefaultCIMDMaxBytes = 5 << 10
	DefaultCIMDCacheTTL = 5 * time.Minute
	maxCIMDCache        = 1024
	maxClientIDURL      = 512
	maxRedirectURIs     = 16
)

// cimdDocument is the part of a client metadata document (RFC 7591
// section 2 names) Valet reads.
type cimdDocument struct {
	ClientID                string   `json:"client_id"`
	ClientName              string   `json:"client_name"`
	RedirectURIs            []string `json:"redirect_uris"`
	TokenEndpointAuthMethod string   `json:"token_endpoint_auth_method"`
	GrantTypes              []string `json:"grant_types"`
	ResponseTypes           []string `json:"response_types"`
	ClientSecret            string   `json:"client_secret"`
}

// cimdFetcher fetches and caches client metadata documents. Safe for
// concurrent use.
type cimdFetcher struct {
	cfg    CIMDConfig
	client *http.Client
	now    func() time.Time

	mu    sync.Mutex
	cache map[string]cimdEntry
}

type cimdEntry struct {
	client PublicClient
	until  time.Time
}

func newCIMDFetcher(cfg CIMDConfig, now func() time.Time) *cimdFetcher {
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultCIMDTimeout
	}
	if cfg.MaxBytes <= 0 {
		cfg.MaxBytes = DefaultCIMDMaxBytes
	}
	if cfg.CacheTTL <= 0 {
		cfg.CacheTTL = DefaultCIMDCacheTTL
	}
	dialer := &net.Dialer{Timeout: cfg.Timeout, Control: ssrfGuard(cfg.AllowPrivate)}
	tr := &http.Transport{DialContext: dialer.DialContext, TLSHandshakeTimeout: cfg.Timeout, ResponseHeaderTimeout: cfg.Timeout,
		MaxResponseHeaderBytes: 16 << 10, DisableKeepAlives: true, Proxy: nil,
		TLSClientConfig: &tls.Config{RootCAs: cfg.RootCAs, MinVersion: tls.VersionTLS12}}
	return &cimdFetcher{cfg: cfg, now: now, cache: map[string]cimdEntry{}, client: &http.Client{
		Transport: tr, Timeout: cfg.Timeout,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}}
}

// ssrfGuard refuses, at connect time (after DNS, so a name resolving to
// an inner address is caught too), every address that is not a public
// unicast one, unless allowPrivate.
func ssrfGuard(allowPrivate bool) func(network, address string, _ syscall.RawConn) error {
	return func(network, address string, _ syscall.RawConn) error {
		ap, err := netip.ParseAddrPort(address)
		if err != nil {
			return fmt.Errorf("client metadata fetch: unparsable address %q", address)
		}
		if a := ap.Addr().Unmap(); !allowPrivate && !publicAddr(a) {
			return fmt.Errorf("client metadata fetch: address %s is not a public address", a)
		}
		return nil
	}
}

// sharedSpace is RFC 6598's carrier-grade NAT range, not covered by
// netip's IsPrivate.
var sharedSpace = netip.MustParsePrefix("100.64.0.0/10")

func publicAddr(a netip.Addr) bool {
	return a.IsGlobalUnicast() && !a.IsPrivate() && !sharedSpace.Contains(a) && !a.IsLoopback() && !a.IsLinkLocalUnicast()
}

// errCIMD is a client id URL or document Valet refuses; its message is
// safe to show.
type errCIMD struct{ msg string }

func (e errCIMD) Error() string { return e.msg }

func cimdRefuse(format string, args ...any) error { return errCIMD{fmt.Sprintf(format, args...)} }

// IsCIMDClientID reports whether id has the form of a CIMD client id: an
// https URL with a path, and no fragment, credentials or dot segments.
func IsCIMDClientID(id string) bool { return checkCIMDClientID(id) == nil }

func checkCIMDClientID(id string) error {
	u, err := url.Parse(id)
	switch {
	case err != nil || len(id) > maxClientIDURL:
		return cimdRefuse("client_id is not a URL of at most %d bytes", maxClientIDURL)
	case u.Scheme != "https" || u.Host == "" || u.Opaque != "":
		return cimdRefuse("a client_id URL must be https")
	case u.User != nil || u.Fragment != "" || strings.Contains(id, "#"):
		return cimdRefuse("a client_id URL may hold no credentials and no fragment")
	case u.Path == "" || u.Path == "/":
		return cimdRefuse("a client_id URL must have a path")
	case slices.ContainsFunc(strings.Split(u.Path, "/"), func(s string) bool { return s == "." || s == ".." }):
		return cimdRefuse("a client_id URL may hold no dot segments")
	}
	return nil
}

// client answers the client a CIMD client id describes, from the cache or
// fetched. An errCIMD is the client's fault; any other error is a fetch
// that failed.
func (f *cimdFetcher) clientOf(ctx context.Context, id string) (PublicClient, error) {
	if err := checkCIMDClientID(id); err != nil {
		return PublicClient{}, err
	}
	now := f.now()
	f.mu.Lock()
	e, ok := f.cache[id]
	f.mu.Unlock()
	if ok && now.Before(e.until) {
		return e.client, nil
	}
	c, err := f.fetch(ctx, id)
	if err != nil {
		return PublicClient{}, err
	}
	f.mu.Lock()
	if len(f.cache) >= maxCIMDCache {
		for k, old := range f.cache {
			if !now.Before(old.until) || len(f.cache) >= maxCIMDCache {
				delete(f.cache, k)
			}
		}
	}
	f.cache[id] = cimdEntry{client: c, until: now.Add(f.cfg.CacheTTL)}
	f.mu.Unlock()
	return c, nil
}

func (f *cimdFetcher) fetch(ctx context.Context, id string) (PublicClient, error) {
	ctx, cancel := context.WithTimeout(ctx, f.cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, id, nil)
	if err != nil {
		return PublicClient{}, cimdRefuse("client_id is not a URL Valet can fetch")
	}
	req.Header.Set("Accept", "application/json")
	resp, err := f.client.Do(req)
	if err != nil {
		var op *net.OpError
		if errors.As(err, &op) && strings.Contains(err.Error(), "not a public address") {
			return PublicClient{}, cimdRefuse("the client metadata document is not at a public address")
		}
		return PublicClient{}, fmt.Errorf("fetching the client metadata document: %w", err)
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode >= 300 && resp.StatusCode < 400:
		return PublicClient{}, cimdRefuse("the client metadata document answered a redirect (%d); redirects are not followed", resp.StatusCode)
	case resp.StatusCode != http.StatusOK:
		return PublicClient{}, cimdRefuse("the client metadata document answered HTTP %d", resp.StatusCode)
	}
	if mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type")); mt != "application/json" {
		return PublicClient{}, cimdRefuse("the client metadata document must be application/json")
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, f.cfg.MaxBytes+1))
	if err != nil {
		return PublicClient{}, fmt.Errorf("reading the client metadata document: %w", err)
	}
	if int64(len(body)) > f.cfg.MaxBytes {
		return PublicClient{}, cimdRefuse("the client metadata document is larger than %d bytes", f.cfg.MaxBytes)
	}
	var doc cimdDocument
	if err := json.Unmarshal(body, &doc); err != nil {
		return PublicClient{}, cimdRefuse("the client metadata document is not a JSON object")
	}
	return doc.client(id)
}

// client checks a document against the URL it was fetched from.
func (doc cimdDocument) client(id string) (PublicClient, error) {
	switch {
	case doc.ClientID != id:
		return PublicClient{}, cimdRefuse("the client metadata document's client_id %s is not the URL it was fetched from", broker.QuoteUntrusted(broker.Bound(doc.ClientID, 128)))
	case doc.ClientSecret != "" || (doc.TokenEndpointAuthMethod != "" && doc.TokenEndpointAuthMethod != "none"):
		return PublicClient{}, cimdRefuse("a client metadata document describes a public client: token_endpoint_auth_method none, no client_secret")
	case len(doc.RedirectURIs) == 0 || len(doc.RedirectURIs) > maxRedirectURIs:
		return PublicClient{}, cimdRefuse("the client metadata document must list 1 to %d redirect_uris", maxRedirectURIs)
	case len(doc.GrantTypes) > 0 && !slices.Contains(doc.GrantTypes, "authorization_code"):
		return PublicClient{}, cimdRefuse("the client metadata document's grant_types leave out authorization_code")
	case len(doc.ResponseTypes) > 0 && !slices.Contains(doc.ResponseTypes, "code"):
		return PublicClient{}, cimdRefuse("the client metadata document's response_types leave out code")
	}
	for _, r := range doc.RedirectURIs {
		if err := checkRedirectURI(r); err != nil {
			return PublicClient{}, cimdRefuse("the client metadata document's redirect_uris: %v", err)
		}
	}
	return PublicClient{ID: id, Name: broker.Bound(doc.ClientName, 128), RedirectURIs: doc.RedirectURIs}, nil
}

// checkRedirectURI is what a registered redirect URI must be: absolute,
// without a fragment, https or http on a loopback host (RFC 8252 section
// 7.3), or a private-use scheme with a dot (section 7.1).
func checkRedirectURI(r string) error {
	u, err := url.Parse(r)
	switch {
	case err != nil || len(r) > maxResource || !u.IsAbs():
		return fmt.Errorf("%s is not an absolute URI of at most %d bytes", broker.QuoteUntrusted(broker.Bound(r, 128)), maxResource)
	case u.Fragment != "" || strings.Contains(r, "#"):
		return fmt.Errorf("%s has a fragment", broker.QuoteUntrusted(broker.Bound(r, 128)))
	case u.Scheme == "https" && u.Host != "":
		return nil
	case u.Scheme == "http" && (u.Hostname() == "localhost" || isLoopbackIP(u.Hostname())):
		return nil
	case u.Scheme != "http" && u.Scheme != "https" && strings.Contains(u.Scheme, "."):
		return nil
	}
	return fmt.Errorf("%s must be https, http on a loopback host, or a private-use scheme", broker.QuoteUntrusted(broker.Bound(r, 128)))
}

func isLoopbackIP(h string) bool {
	a, err := netip.ParseAddr(h)
	return err == nil && a.IsLoopback()
}
