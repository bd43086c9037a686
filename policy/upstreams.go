package policy

import (
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Upstream is one entry of a template's upstreams block: an HTTP service
// `valet proxy` calls for the agent (secretless mode, docs/proxy.md). Each
// route maps a method and path pattern under URL to a tool; a request is
// forwarded only when its route's tool was granted to the task, and then
// with Credential attached and the agent's own credentials stripped.
type Upstream struct {
	Name string
	// URL is the base: scheme (http or https), host, optional port and
	// base path; route paths are relative to its path.
	URL *url.URL
	// AllowPrivate lets the proxy dial loopback, private, link-local and
	// other non-public addresses for this upstream. Without it the check
	// is made on the address actually dialled, after DNS.
	AllowPrivate bool
	// PassHeaders are the agent's credential-bearing headers forwarded
	// anyway (canonical form: "Cookie", "Authorization"); none by default.
	PassHeaders []string
	Credential  UpstreamCredential
	Routes      []Route
}

// PostgresUpstream is an upstreams entry with a postgres block: the
// proxy's PostgreSQL listener serves a task of the template only when Tool
// was granted to it, and reports each session as tool-call events of Tool
// in the task's timeline (opened; closed with its duration, bytes and
// number of queries). SQLText opts in to the statements' text in the
// closing event, bounded and escaped; without it no SQL text leaves the
// proxy.
type PostgresUpstream struct {
	Name    string
	Tool    string
	SQLText bool
	line    int // of the tool, for late problems
	index   int // in the upstreams list
}

// UpstreamCredential says which of the task's credentials the proxy
// attaches to a forwarded request, and how.
type UpstreamCredential struct {
	// From is the credential: "task_token" (the task's JWT),
	// "vault_token" (the task's Vault token), "database_password" (the
	// password of the task's Vault database lease) or "oauth:<provider>"
	// (an access token the proxy gets from one of its configured OAuth
	// providers with the client credentials grant; Provider names it).
	From string
	// Provider is the OAuth provider of an "oauth:<provider>" source.
	Provider string
	// Scopes are the scopes asked of the OAuth provider; empty means the
	// provider's default scopes. Only for an oauth source.
	Scopes []string
	// As is "header", "query" or "basic".
	As string
	// Name is the header (default Authorization) or query parameter
	// (required) that carries the secret.
	Name string
	// Scheme prefixes a header value ("Bearer" by default for
	// Authorization, none for other headers).
	Scheme string
	// Username is the basic-auth user name; for database_password the
	// lease's username is used when it is empty.
	Username string
}

// Route maps requests to a tool: one of Methods and a path matching Path.
// A path pattern is "/"-separated segments; "*" matches one non-empty
// segment and a final "**" matches the rest (zero or more segments).
type Route struct {
	Methods []string
	Path    string
	Tool    string
	segs    []string
	line    int // of the tool, for late problems
}

// Credential sources and placements an upstream may name.
const (
	FromTaskToken        = "task_token"
	FromVaultToken       = "vault_token"
	FromDatabasePassword = "database_password"
	// FromOAuthPrefix starts an "oauth:<provider>" source.
	FromOAuthPrefix = "oauth:"

	AsHeader = "header"
	AsQuery  = "query"
	AsBasic  = "basic"
)

var (
	upstreamNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,62}$`)
	// pathSegRE is a literal segment of a route pattern: unreserved and
	// sub-delims characters only, so it compares byte for byte with the
	// escaped path of a request.
	pathSegRE   = regexp.MustCompile(`^[A-Za-z0-9._~!$&'()+,;=:@-]+$`)
	headerRE    = regexp.MustCompile(`^[A-Za-z0-9-]{1,64}$`)
	queryNameRE = regexp.MustCompile(`^[A-Za-z0-9._~-]{1,64}$`)
	schemeRE    = regexp.MustCompile(`^[A-Za-z0-9._~+/-]{0,32}$`)
	// ProviderNameRE is an OAuth provider's name, in the proxy's
	// configuration and in "oauth:<provider>".
	ProviderNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,62}$`)
	// oauthScopeRE is one OAuth scope (RFC 6749 section 3.3, bounded).
	oauthScopeRE = regexp.MustCompile(`^[\x21\x23-\x5b\x5d-\x7e]{1,128}$`)
)

// Upstream returns the template's upstream called name.
func (t *Template) Upstream(name string) (*Upstream, bool) {
	for i := range t.Upstreams {
		if t.Upstreams[i].Name == name {
			return &t.Upstreams[i], true
		}
	}
	return nil, false
}

// UpstreamFor returns the upstream a forward-proxy request for host (a
// lower-case host name or IP literal) and port (as written, "" when
// absent) goes to: the one whose URL names that host and whose port is
// the same, or whose default port a request without one implies. The
// port of a plain-HTTP request may be left out or be 80 for an https
// upstream: the proxy makes the TLS call.
func (t *Template) UpstreamFor(host, port string) (*Upstream, bool) {
	for i := range t.Upstreams {
		u := &t.Upstreams[i]
		if !strings.EqualFold(u.URL.Hostname(), host) {
			continue
		}
		if port == "" || port == "80" || port == u.Port() {
			return u, true
		}
	}
	return nil, false
}

// Port is the port the upstream is dialled on.
func (u *Upstream) Port() string {
	if p := u.URL.Port(); p != "" {
		return p
	}
	if u.URL.Scheme == "https" {
		return "443"
	}
	return "80"
}

// Match finds the route of a request: method and its escaped path, which
// must lie under the upstream's base path. It returns nil when no route
// matches. The caller has already refused paths that are not clean
// (dot segments, empty segments, encoded slashes).
func (u *Upstream) Match(method, escapedPath string) *Route {
	base := strings.TrimSuffix(u.URL.EscapedPath(), "/")
	rest, ok := strings.CutPrefix(escapedPath, base)
	if !ok || (rest != "" && rest[0] != '/') {
		return nil
	}
	segs := splitPath(rest)
	for i := range u.Routes {
		r := &u.Routes[i]
		if slices.Contains(r.Methods, method) && matchSegs(r.segs, segs) {
			return r
		}
	}
	return nil
}

func splitPath(p string) []string {
	p = strings.Trim(p, "/")
	if p == "" {
		return nil
	}
	return strings.Split(p, "/")
}

func matchSegs(pat, segs []string) bool {
	for i, p := range pat {
		if p == "**" {
			return true
		}
		if i >= len(segs) || (p != "*" && p != segs[i]) || segs[i] == "" {
			return false
		}
	}
	return len(pat) == len(segs)
}

func decodeUpstreams(l *templateLoader, n *yaml.Node, path string, t *Template) {
	items, ok := l.seq(n, path, "upstreams")
	if !ok {
		return
	}
	names := map[string]int{}
	hosts := map[string]int{}
	for i, item := range items {
		ipath := indexPath(path, i)
		if hasKey(item, "postgres") {
			pg := &PostgresUpstream{}
			if !decodeMapping(l, item, ipath, postgresEntryFields, pg) || pg.Name == "" || pg.Tool == "" {
				continue
			}
			if j, dup := names[pg.Name]; dup {
				l.report(item, joinPath(ipath, "name"), "upstream name %q is used twice (also at %s)", pg.Name, indexPath(path, j))
				continue
			}
			if t.Postgres != nil {
				l.report(item, joinPath(ipath, "postgres"), "only one postgres upstream per template: the proxy has one PostgreSQL server")
				continue
			}
			names[pg.Name], pg.index = i, i
			t.Postgres = pg
			continue
		}
		u := &Upstream{}
		if !decodeMapping(l, item, ipath, upstreamFields, u) || u.Name == "" || u.URL == nil {
			continue
		}
		if j, dup := names[u.Name]; dup {
			l.report(item, joinPath(ipath, "name"), "upstream name %q is used twice (also at %s)", u.Name, indexPath(path, j))
			continue
		}
		hp := strings.ToLower(u.URL.Hostname()) + ":" + u.Port()
		if j, dup := hosts[hp]; dup {
			l.report(urlNode(item), joinPath(ipath, "url"), "host %s is already the upstream at %s: one upstream per host and port", hp, indexPath(path, j))
			continue
		}
		names[u.Name], hosts[hp] = i, i
		l.checkCredentialPlacement(item, ipath, u)
		t.Upstreams = append(t.Upstreams, *u)
	}
}

// checkUpstreamTools reports routes whose tool the template does not
// allow: once the whole template is decoded, whatever the key order.
func (l *templateLoader) checkUpstreamTools(path string, t *Template) {
	for i, u := range t.Upstreams {
		for j, r := range u.Routes {
			if !t.AllowsTool(r.Tool) {
				l.report(&yaml.Node{Line: r.line}, fmt.Sprintf("%s.upstreams[%d].routes[%d].tool", path, i, j),
					"tool %q is not in the template's tools, so no task could use this route", truncate(r.Tool, 64))
			}
		}
	}
	if pg := t.Postgres; pg != nil && !t.AllowsTool(pg.Tool) {
		l.report(&yaml.Node{Line: pg.line}, fmt.Sprintf("%s.upstreams[%d].postgres.tool", path, pg.index),
			"tool %q is not in the template's tools, so no task could open a database session", truncate(pg.Tool, 64))
	}
}

// hasKey reports whether mapping n has key.
func hasKey(n *yaml.Node, key string) bool {
	if n.Kind != yaml.MappingNode {
		return false
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == key {
			return true
		}
	}
	return false
}

// postgresEntryFields is the schema of an upstreams entry for the proxy's
// PostgreSQL listener.
var postgresEntryFields = []field[*PostgresUpstream]{
	{key: "name", required: true, decode: func(l *templateLoader, n *yaml.Node, path string, pg *PostgresUpstream) {
		pg.Name = l.upstreamName(n, path)
	}},
	{key: "postgres", required: true, decode: func(l *templateLoader, n *yaml.Node, path string, pg *PostgresUpstream) {
		decodeMapping(l, n, path, postgresFields, pg)
	}},
}

var postgresFields = []field[*PostgresUpstream]{
	{key: "tool", required: true, decode: func(l *templateLoader, n *yaml.Node, path string, pg *PostgresUpstream) {
		s, ok := l.str(n, path)
		if !ok {
			return
		}
		if !ValidToolName(s) {
			l.report(n, path, "%q is not a valid tool name (a database session reports as one tool, no pattern): %s", truncate(s, 64), ToolNameRules)
			return
		}
		pg.Tool, pg.line = s, n.Line
	}},
	{key: "sql_text", decode: func(l *templateLoader, n *yaml.Node, path string, pg *PostgresUpstream) {
		pg.SQLText = l.boolean(n, path)
	}},
}

// upstreamName decodes an upstream entry's name: "" (reported) when it is
// not one.
func (l *templateLoader) upstreamName(n *yaml.Node, path string) string {
	s, ok := l.str(n, path)
	if !ok {
		return ""
	}
	if !upstreamNameRE.MatchString(s) {
		l.report(n, path, "%q is not a valid upstream name: use 1 to 63 of a-z, 0-9, '_', '-', starting with a letter or digit", truncate(s, 64))
		return ""
	}
	return s
}

func (l *templateLoader) checkCredentialPlacement(n *yaml.Node, path string, u *Upstream) {
	c := u.Credential
	for _, h := range u.PassHeaders {
		if h == "Authorization" && (c.As == AsBasic || (c.As == AsHeader && http.CanonicalHeaderKey(c.Name) == "Authorization")) {
			l.report(n, joinPath(path, "pass_headers"), "cannot pass the agent's Authorization: the credential goes there")
		}
	}
}

var upstreamFields = []field[*Upstream]{
	{key: "name", required: true, decode: func(l *templateLoader, n *yaml.Node, path string, u *Upstream) {
		u.Name = l.upstreamName(n, path)
	}},
	{key: "url", required: true, decode: func(l *templateLoader, n *yaml.Node, path string, u *Upstream) {
		s, ok := l.str(n, path)
		if !ok {
			return
		}
		p, err := url.Parse(s)
		switch {
		case err != nil:
			l.report(n, path, "%q is not a URL", truncate(s, 64))
		case p.Scheme != "https" && p.Scheme != "http":
			l.report(n, path, "%q must be an http or https URL", truncate(s, 64))
		case p.Host == "" || p.Hostname() == "":
			l.report(n, path, "%q has no host", truncate(s, 64))
		case p.User != nil || p.RawQuery != "" || p.Fragment != "" || p.Opaque != "":
			l.report(n, path, "%q must not carry a user, query or fragment", truncate(s, 64))
		case !cleanPattern(p.EscapedPath(), false):
			l.report(n, path, "%q: the base path must be clean (no '.', '..' or empty segments)", truncate(s, 64))
		default:
			p.Host = strings.ToLower(p.Host)
			u.URL = p
		}
	}},
	{key: "allow_private", decode: func(l *templateLoader, n *yaml.Node, path string, u *Upstream) {
		u.AllowPrivate = l.boolean(n, path)
	}},
	{key: "pass_headers", decode: func(l *templateLoader, n *yaml.Node, path string, u *Upstream) {
		u.PassHeaders = l.stringList(n, path, "header names", func(s string) string {
			switch http.CanonicalHeaderKey(s) {
			case "Cookie", "Authorization":
				return ""
			}
			return fmt.Sprintf("%q cannot be passed: only Cookie and Authorization are stripped, and Proxy-Authorization carries the handle", truncate(s, 64))
		})
		for i, h := range u.PassHeaders {
			u.PassHeaders[i] = http.CanonicalHeaderKey(h)
		}
	}},
	{key: "credential", required: true, decode: func(l *templateLoader, n *yaml.Node, path string, u *Upstream) {
		c := &u.Credential
		if !decodeMapping(l, n, path, credentialFields, c) {
			return
		}
		switch c.As {
		case AsHeader:
			if c.Name == "" {
				c.Name = "Authorization"
			}
			if !headerRE.MatchString(c.Name) {
				l.report(n, joinPath(path, "name"), "%q is not a valid header name: use 1 to 64 of A-Z, a-z, 0-9, '-'", truncate(c.Name, 64))
			}
			c.Name = http.CanonicalHeaderKey(c.Name)
			if c.Name == "Authorization" && c.Scheme == "" {
				c.Scheme = "Bearer"
			}
			switch c.Name {
			case "Host", "Content-Length", "Transfer-Encoding", "Connection", "Cookie", "Proxy-Authorization":
				l.report(n, joinPath(path, "name"), "%s cannot carry a credential", c.Name)
			}
		case AsQuery:
			if c.Name == "" {
				l.report(n, joinPath(path, "name"), "is required when the credential goes in the query")
			}
		case AsBasic:
			if c.Name != "" || c.Scheme != "" {
				l.report(n, path, "name and scheme do not apply to basic auth")
			}
		}
		if c.As != AsBasic && c.Username != "" {
			l.report(n, joinPath(path, "username"), "applies to basic auth only")
		}
		if c.Provider == "" && len(c.Scopes) > 0 {
			l.report(n, joinPath(path, "scopes"), "apply to an oauth:<provider> credential only")
		}
	}},
	{key: "routes", required: true, decode: func(l *templateLoader, n *yaml.Node, path string, u *Upstream) {
		items, ok := l.seq(n, path, "routes")
		if !ok {
			return
		}
		if isEmptyList(n) {
			l.report(n, path, "must list at least one route")
		}
		for i, item := range items {
			r := &Route{}
			before := len(l.problems)
			if decodeMapping(l, item, indexPath(path, i), routeFields, r) && len(l.problems) == before {
				u.Routes = append(u.Routes, *r)
			}
		}
	}},
}

var credentialFields = []field[*UpstreamCredential]{
	{key: "from", required: true, decode: func(l *templateLoader, n *yaml.Node, path string, c *UpstreamCredential) {
		s, ok := l.str(n, path)
		if !ok {
			return
		}
		if name, isOAuth := strings.CutPrefix(s, FromOAuthPrefix); isOAuth {
			if !ProviderNameRE.MatchString(name) {
				l.report(n, path, "%q: the OAuth provider name must be 1 to 63 of a-z, 0-9, '_', '-', starting with a letter or digit", truncate(s, 64))
				return
			}
			c.From, c.Provider = s, name
			return
		}
		c.From = l.oneOf(n, path, FromTaskToken, FromVaultToken, FromDatabasePassword)
	}},
	{key: "scopes", decode: func(l *templateLoader, n *yaml.Node, path string, c *UpstreamCredential) {
		c.Scopes = l.stringList(n, path, "OAuth scopes", func(s string) string {
			if !oauthScopeRE.MatchString(s) {
				return fmt.Sprintf("%q is not an OAuth scope (1 to 128 printable characters, no space, '\"' or '\\')", truncate(s, 64))
			}
			return ""
		})
	}},
	{key: "as", required: true, decode: func(l *templateLoader, n *yaml.Node, path string, c *UpstreamCredential) {
		c.As = l.oneOf(n, path, AsHeader, AsQuery, AsBasic)
	}},
	{key: "name", decode: func(l *templateLoader, n *yaml.Node, path string, c *UpstreamCredential) {
		if s, ok := l.str(n, path); ok {
			if !queryNameRE.MatchString(s) {
				l.report(n, path, "%q is not a valid header or parameter name: use 1 to 64 of A-Z, a-z, 0-9, '-' ('.', '_', '~' in a query)", truncate(s, 64))
				return
			}
			c.Name = s
		}
	}},
	{key: "scheme", decode: func(l *templateLoader, n *yaml.Node, path string, c *UpstreamCredential) {
		if s, ok := l.str(n, path); ok {
			if !schemeRE.MatchString(s) {
				l.report(n, path, "%q is not a valid auth scheme", truncate(s, 64))
				return
			}
			c.Scheme = s
		}
	}},
	{key: "username", decode: func(l *templateLoader, n *yaml.Node, path string, c *UpstreamCredential) {
		if s, ok := l.str(n, path); ok {
			if strings.ContainsAny(s, ":\r\n") || len(s) > 128 {
				l.report(n, path, "must be at most 128 characters without ':' or line breaks")
				return
			}
			c.Username = s
		}
	}},
}

var routeFields = []field[*Route]{
	{key: "methods", required: true, decode: func(l *templateLoader, n *yaml.Node, path string, r *Route) {
		r.Methods = l.stringList(n, path, "HTTP methods", func(s string) string {
			switch s {
			case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete, http.MethodOptions:
				return ""
			}
			return fmt.Sprintf("%q is not a method the proxy forwards: use GET, HEAD, POST, PUT, PATCH, DELETE or OPTIONS (upper case)", truncate(s, 16))
		})
		if isEmptyList(n) {
			l.report(n, path, "must list at least one method")
		}
	}},
	{key: "path", required: true, decode: func(l *templateLoader, n *yaml.Node, path string, r *Route) {
		s, ok := l.str(n, path)
		if !ok {
			return
		}
		if !strings.HasPrefix(s, "/") || !cleanPattern(s, true) {
			l.report(n, path, "%q is not a valid path pattern: start with '/', use literal segments, '*' for one segment and a final '**' for the rest", truncate(s, 64))
			return
		}
		r.Path, r.segs = s, splitPath(s)
	}},
	{key: "tool", required: true, decode: func(l *templateLoader, n *yaml.Node, path string, r *Route) {
		s, ok := l.str(n, path)
		if !ok {
			return
		}
		if !ValidToolName(s) {
			l.report(n, path, "%q is not a valid tool name (a route names one tool, no pattern): %s", truncate(s, 64), ToolNameRules)
			return
		}
		r.Tool, r.line = s, n.Line
	}},
}

// cleanPattern reports whether p is a clean path: no empty, "." or ".."
// segments and (for patterns) literal segments, "*" and a final "**".
func cleanPattern(p string, pattern bool) bool {
	segs := splitPath(p)
	if strings.Contains(strings.Trim(p, "/"), "//") {
		return false
	}
	for i, s := range segs {
		switch {
		case s == "" || s == "." || s == "..":
			return false
		case pattern && s == "**" && i == len(segs)-1:
		case pattern && s == "*":
		case !pathSegRE.MatchString(s) || strings.Contains(s, "*"):
			return false
		}
	}
	return true
}

// oneOf decodes a string that must be one of choices.
func (l *templateLoader) oneOf(n *yaml.Node, path string, choices ...string) string {
	s, ok := l.str(n, path)
	if !ok {
		return ""
	}
	if !slices.Contains(choices, s) {
		l.report(n, path, "%q must be one of %s", truncate(s, 64), strings.Join(choices, ", "))
		return ""
	}
	return s
}

// boolean decodes true or false.
func (l *templateLoader) boolean(n *yaml.Node, path string) bool {
	if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!bool" {
		l.report(n, path, "must be true or false")
		return false
	}
	return n.Value == "true"
}

// urlNode is the value of an upstream's url key (the upstream when absent).
func urlNode(n *yaml.Node) *yaml.Node {
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == "url" {
			return n.Content[i+1]
		}
	}
	return n
}
