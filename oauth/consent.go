package oauth

import (
	"html/template"
	"net/http"
)

// consentPage asks the person, once per client and template, whether the
// client may act for them. Every value in it came from the client or its
// metadata document: html/template escapes each.
var consentPage = template.Must(template.New("consent").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Allow access?</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body>
<h1>Allow {{if .Name}}{{.Name}}{{else}}this client{{end}} to act for you?</h1>
<p>Client: <code>{{.ClientID}}</code></p>
<p>It asks for tasks of template <strong>{{.Template}}</strong>{{if .Tools}} with the tools{{range .Tools}} <code>{{.}}</code>{{end}}{{end}}{{if .Resources}}, for{{range .Resources}} <code>{{.}}</code>{{end}}{{end}}.</p>
<p>Every token it gets is a task of Valet: it expires by itself, is recorded and can be revoked. You are asked once for this client and template.</p>
<form method="post" action="{{.Action}}">
<input type="hidden" name="consent" value="{{.Ask}}">
<button type="submit" name="decision" value="allow">Allow</button>
<button type="submit" name="decision" value="deny">Deny</button>
</form>
</body></html>
`))

// renderConsent writes the consent page for a; ask names the stored
// request the form answers.
func renderConsent(w http.ResponseWriter, a authzRequest, ask string) {
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'")
	h.Set("Referrer-Policy", "no-referrer")
	w.WriteHeader(http.StatusOK)
	_ = consentPage.Execute(w, map[string]any{
		"Name": a.ClientName, "ClientID": a.ClientID, "Template": a.Template, "Tools": a.Tools, "Resources": a.Resources,
		"Action": ConsentPath, "Ask": ask,
	})
}
