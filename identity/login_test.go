package identity_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"golang.org/x/oauth2"

	"github.com/valet-dev/valet/identity"
	"github.com/valet-dev/valet/internal/devidp"
)

// loginWorld is the development issuer over HTTP and a Login against it.
type loginWorld struct {
	idp    *devidp.IdP
	login  *identity.Login
	client *http.Client // does not follow redirects
}

func newLoginWorld(t *testing.T) *loginWorld {
	t.Helper()
	mux := http.NewServeMux()
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	idp, err := devidp.New(srv.URL+"/dev", time.Now)
	if err != nil {
		t.Fatal(err)
	}
	mux.Handle("/dev/", http.StripPrefix("/dev", idp.Handler()))
	ctx := context.Background()
	v, err := identity.New(ctx, []identity.IssuerConfig{{
		Name: "dev", IssuerURL: idp.Issuer(), Audiences: []string{"console"}, StaticJWKS: idp.JWKS(),
	}}, identity.Options{})
	if err != nil {
		t.Fatal(err)
	}
	login, err := identity.NewLogin(ctx, identity.LoginConfig{
		IssuerURL: idp.Issuer(), ClientID: "console", RedirectURL: "http://127.0.0.1:1/callback",
	}, v)
	if err != nil {
		t.Fatalf("NewLogin (with discovery): %v", err)
	}
	return &loginWorld{idp: idp, login: login, client: &http.Client{
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}}
}

// authorize follows the authorization URL once and returns the query of
// the redirect back to the client.
func (lw *loginWorld) authorize(t *testing.T, authURL string) url.Values {
	t.Helper()
	resp, err := lw.client.Get(authURL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusFound {
		t.Fatalf("GET authorize: %d, want 302", resp.StatusCode)
	}
	loc, err := url.Parse(resp.Header.Get("Location"))
	if err != nil || !strings.HasPrefix(loc.String(), "http://127.0.0.1:1/callback?") {
		t.Fatalf("redirect to %q, want the client's redirect_uri", resp.Header.Get("Location"))
	}
	return loc.Query()
}

func TestLoginSignsAPersonInWithPKCE(t *testing.T) {
	lw := newLoginWorld(t)
	st, u := lw.login.Start(oauth2.SetAuthURLParam("login_hint", "alice"), oauth2.SetAuthURLParam("dev_groups", devidp.ViewerGroup))
	q := lw.authorize(t, u)
	if q.Get("iss") != lw.idp.Issuer() {
		t.Errorf("redirect iss = %q, want the issuer (RFC 9207)", q.Get("iss"))
	}
	p, err := lw.login.Finish(context.Background(), st, q)
	if err != nil {
		t.Fatalf("Finish: %v", err)
	}
	if p.Subject != "alice" || p.Issuer != "dev" {
		t.Errorf("principal = %s/%s, want dev/alice", p.Issuer, p.Subject)
	}
	if g, _ := p.Claims["groups"].([]any); len(g) != 1 || g[0] != devidp.ViewerGroup {
		t.Errorf("groups = %v, want [%s]", p.Claims["groups"], devidp.ViewerGroup)
	}
	// The code works once.
	if _, err := lw.login.Finish(context.Background(), st, q); err == nil || !strings.Contains(err.Error(), "invalid_grant") {
		t.Errorf("second use of the code: %v, want invalid_grant", err)
	}
}

func TestLoginRefusesWhatDoesNotBelongToTheSession(t *testing.T) {
	lw := newLoginWorld(t)
	ctx := context.Background()
	cases := []struct {
		name   string
		mangle func(st *identity.LoginState, q url.Values)
		want   string
	}{
		{"another session's state", func(st *identity.LoginState, q url.Values) { q.Set("state", "other") }, "state does not match"},
		{"no state kept", func(st *identity.LoginState, q url.Values) { st.State = "" }, "state does not match"},
		{"another issuer (RFC 9207)", func(st *identity.LoginState, q url.Values) { q.Set("iss", "https://evil.example") }, "RFC 9207"},
		{"wrong PKCE verifier", func(st *identity.LoginState, q url.Values) { st.Verifier = strings.Repeat("a", 43) }, "code_verifier does not match"},
		{"another sign-in's nonce", func(st *identity.LoginState, q url.Values) { st.Nonce = "other" }, "nonce does not match"},
		{"provider error", func(st *identity.LoginState, q url.Values) { q.Set("error", "access_denied") }, "refused the sign-in"},
		{"no code", func(st *identity.LoginState, q url.Values) { q.Del("code") }, "no code"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			st, u := lw.login.Start(oauth2.SetAuthURLParam("login_hint", "bob"))
			q := lw.authorize(t, u)
			c.mangle(&st, q)
			_, err := lw.login.Finish(ctx, st, q)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Finish: %v, want an error containing %q", err, c.want)
			}
			if strings.Contains(err.Error(), q.Get("code")) && q.Get("code") != "" {
				t.Errorf("error quotes the code: %v", err)
			}
		})
	}
}

func TestDevIssuerRefusesBadAuthorizationRequests(t *testing.T) {
	lw := newLoginWorld(t)
	_, good := lw.login.Start(oauth2.SetAuthURLParam("login_hint", "alice"))
	cases := map[string]func(q url.Values){
		"plain PKCE":            func(q url.Values) { q.Set("code_challenge_method", "plain") },
		"no PKCE":               func(q url.Values) { q.Del("code_challenge"); q.Del("code_challenge_method") },
		"foreign redirect":      func(q url.Values) { q.Set("redirect_uri", "https://evil.example/cb") },
		"no state":              func(q url.Values) { q.Del("state") },
		"implicit flow":         func(q url.Values) { q.Set("response_type", "token") },
		"bad name":              func(q url.Values) { q.Set("login_hint", "<script>") },
		"repeated redirect_uri": func(q url.Values) { q.Add("redirect_uri", "http://127.0.0.1:2/cb") },
	}
	for name, mangle := range cases {
		t.Run(name, func(t *testing.T) {
			u, _ := url.Parse(good)
			q := u.Query()
			mangle(q)
			u.RawQuery = q.Encode()
			resp, err := lw.client.Get(u.String())
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusBadRequest {
				t.Fatalf("status %d (Location %q), want 400 shown to the person, not a redirect", resp.StatusCode, resp.Header.Get("Location"))
			}
		})
	}
}

func TestDevIssuerSignInFormEscapesAndSignsIn(t *testing.T) {
	lw := newLoginWorld(t)
	st, u := lw.login.Start()
	resp, err := lw.client.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(page), `<form method="post"`) {
		t.Fatalf("GET authorize without login_hint: %d, want the sign-in form", resp.StatusCode)
	}
	au, _ := url.Parse(u)
	form := au.Query()
	form.Set("name", "carol")
	form.Set("group", devidp.ResponderGroup)
	resp, err = lw.client.PostForm(strings.Split(u, "?")[0], form)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	loc, _ := url.Parse(resp.Header.Get("Location"))
	p, err := lw.login.Finish(context.Background(), st, loc.Query())
	if err != nil || p.Subject != "carol" {
		t.Fatalf("form sign-in: %v, %q", err, p.Subject)
	}
}
