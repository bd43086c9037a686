package oauth

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/broker/wire"
	"github.com/valet-dev/valet/delegation"
)

// Grant types of the token endpoint.
const (
	GrantJWTBearer         = "urn:ietf:params:oauth:grant-type:jwt-bearer"
	GrantClientCredentials = "client_credentials"
)

// DetailsType is the RFC 9396 authorization_details type of a Valet task.
const DetailsType = "valet_task"

// TemplateScope prefixes the scope value naming the template of a task
// asked for by scope.
const TemplateScope = "template:"

// Limits on a token request's own parameters; the task inside is bounded
// as any declaration is (wire.DecodeDeclaration).
const (
	maxAssertion = 16 << 10
	maxDetails   = 32 << 10
	maxScope     = 8 << 10
	maxResources = 8
	maxResource  = 512
)

// TaskDetails is one authorization_details entry of type valet_task: the
// task's template, intent, tools, ttl (seconds) and context, as in a task
// declaration.
type TaskDetails struct {
	Type     string          `json:"type"`
	Template string          `json:"template"`
	Intent   string          `json:"intent"`
	Tools    []string        `json:"tools"`
	TTL      *int64          `json:"ttl,omitempty"`
	Context  json.RawMessage `json:"context,omitempty"`
}

// tokenRequest is a decoded token request, before authentication.
type tokenRequest struct {
	grant     string
	assertion string // the jwt-bearer assertion or the client assertion
	clientID  string
	decl      broker.Declaration
	how       via
	// scopeInAssertion: a jwt-bearer request with neither
	// authorization_details nor scope takes the scope claim of its
	// assertion, as Google's service-account flow (and
	// golang.org/x/oauth2/jwt) sends it.
	scopeInAssertion bool
}

// decodeRequest reads the form of a jwt-bearer or client_credentials
// request. It has no side effect: nothing is verified or recorded yet.
func decodeRequest(form url.Values) (tokenRequest, *Error) {
	for k, v := range form {
		if len(v) > 1 && k != "resource" {
			return tokenRequest{}, refuse(ErrInvalidRequest, fmt.Sprintf("parameter %s is given more than once", boundKey(k)))
		}
	}
	req := tokenRequest{grant: form.Get("grant_type"), clientID: form.Get("client_id")}
	switch req.grant {
	case GrantJWTBearer:
		if form.Has("client_assertion") || form.Has("client_assertion_type") {
			return req, refuse(ErrInvalidRequest, "the jwt-bearer grant takes no client assertion: the assertion is the agent's identity")
		}
		if req.assertion = form.Get("assertion"); req.assertion == "" {
			return req, refuse(ErrInvalidRequest, "assertion is required: the agent's workload identity token")
		}
	case GrantClientCredentials:
		if form.Has("client_secret") {
			return req, &Error{Code: ErrInvalidClient, Description: "client authentication must be private_key_jwt", Status: 401}
		}
		if t := form.Get("client_assertion_type"); t != ClientAssertionType {
			return req, &Error{Code: ErrInvalidClient, Description: "client_assertion_type must be " + ClientAssertionType, Status: 401}
		}
		if req.assertion = form.Get("client_assertion"); req.assertion == "" {
			return req, &Error{Code: ErrInvalidClient, Description: "client_assertion is required", Status: 401}
		}
	default:
		return req, refuse(ErrUnsupportedGrantType, "grant_type must be "+GrantJWTBearer+", "+GrantClientCredentials+" or "+delegation.GrantTypeTokenExchange)
	}
	if len(req.assertion) > maxAssertion {
		return req, refuse(ErrInvalidRequest, fmt.Sprintf("the assertion must be at most %d bytes", maxAssertion))
	}
	details, scope := form.Get("authorization_details"), form.Get("scope")
	var err *Error
	switch {
	case details != "" && form.Has("scope"):
		return req, refuse(ErrInvalidRequest, "give authorization_details or scope, not both")
	case details != "":
		req.how = viaDetails
		req.decl, err = decodeDetails(details)
	case form.Has("authorization_details"):
		return req, refuse(ErrInvalidAuthorizationDetails, "authorization_details is empty")
	case !form.Has("scope") && req.grant == GrantJWTBearer:
		req.how, req.scopeInAssertion = viaScope, true
	default:
		req.how = viaScope
		req.decl, err = decodeScope(scope, form.Get("intent"))
	}
	if err != nil {
		return req, err
	}
	if req.how == viaDetails && form.Has("intent") {
		return req, refuse(ErrInvalidRequest, "intent belongs in authorization_details")
	}
	if req.decl.Resources, err = decodeResources(form["resource"]); err != nil {
		return req, err
	}
	return req, nil
}

// decodeDetails reads authorization_details: a JSON array holding exactly
// one object of type valet_task, validated as a task declaration.
func decodeDetails(raw string) (broker.Declaration, *Error) {
	bad := func(format string, args ...any) (broker.Declaration, *Error) {
		return broker.Declaration{}, refuse(ErrInvalidAuthorizationDetails, fmt.Sprintf(format, args...))
	}
	if len(raw) > maxDetails {
		return bad("authorization_details must be at most %d bytes", maxDetails)
	}
	var entries []json.RawMessage
	if err := json.Unmarshal([]byte(raw), &entries); err != nil {
		return bad("authorization_details must be a JSON array of objects")
	}
	if len(entries) != 1 {
		return bad("authorization_details must hold exactly one entry of type %s", DetailsType)
	}
	var typ struct {
		Type string `json:"type"`
	}
	if err := json.Unmarshal(entries[0], &typ); err != nil || typ.Type != DetailsType {
		return bad("authorization_details type must be %s", DetailsType)
	}
	var td TaskDetails
	if err := wire.DecodeJSON(bytes.NewReader(entries[0]), &td); err != nil {
		msg, be := err.Error(), (*broker.Error)(nil)
		if errors.As(err, &be) {
			msg = be.Message
		}
		return bad("authorization_details entry: %s", broker.Bound(msg, 200))
	}
	// The entry is a declaration by another name: the declaration's own
	// decoder bounds and checks it.
	body, err := json.Marshal(map[string]any{"template": td.Template, "intent": td.Intent, "tools": td.Tools, "ttl_seconds": td.TTL, "context": td.Context})
	if err != nil {
		return bad("authorization_details entry could not be read")
	}
	d, err := wire.DecodeDeclaration(bytes.NewReader(body))
	if err != nil {
		return broker.Declaration{}, detailsError(err)
	}
	return d, nil
}

// detailsError turns a declaration's validation error into
// invalid_authorization_details, naming the field as the entry calls it.
func detailsError(err error) *Error {
	var be *broker.Error
	msg := "authorization_details entry is not a valid task"
	if errors.As(err, &be) {
		msg = strings.ReplaceAll(be.Message, "ttl_seconds", "ttl")
	}
	return &Error{Code: ErrInvalidAuthorizationDetails, Description: msg, Status: 400, Err: err}
}

// decodeScope maps a scope to a task: one "template:<name>" value and the
// tools (every other value). The intent is the intent parameter, or a
// generic one naming the scope.
func decodeScope(scope, intent string) (broker.Declaration, *Error) {
	if len(scope) > maxScope || !utf8.ValidString(scope) {
		return broker.Declaration{}, refuse(ErrInvalidScope, fmt.Sprintf("scope must be valid UTF-8 of at most %d bytes", maxScope))
	}
	var template string
	var tools []string
	for _, v := range strings.Fields(scope) {
		name, isTemplate := strings.CutPrefix(v, TemplateScope)
		switch {
		case isTemplate && template != "":
			return broker.Declaration{}, refuse(ErrInvalidScope, "scope names more than one template")
		case isTemplate:
			template = name
		default:
			tools = append(tools, v)
		}
	}
	if template == "" {
		return broker.Declaration{}, refuse(ErrInvalidScope, "a task is required: authorization_details of type "+DetailsType+", or a scope with "+TemplateScope+"<name> and the tools")
	}
	if !utf8.ValidString(intent) {
		// JSON encoding below would quietly replace the bad bytes.
		return broker.Declaration{}, refuse(ErrInvalidRequest, "intent must be valid UTF-8")
	}
	if intent == "" {
		intent = "OAuth token request for scope " + broker.Bound(scope, 512)
	}
	body, err := json.Marshal(map[string]any{"template": template, "intent": intent, "tools": tools})
	if err != nil {
		return broker.Declaration{}, refuse(ErrInvalidScope, "scope could not be read")
	}
	d, err := wire.DecodeDeclaration(bytes.NewReader(body))
	if err != nil {
		e := detailsError(err)
		e.Code = ErrInvalidScope
		if be := (*broker.Error)(nil); errors.As(err, &be) && be.Field == "intent" {
			e.Code = ErrInvalidRequest
		}
		return broker.Declaration{}, e
	}
	return d, nil
}

// decodeResources checks RFC 8707 resource indicators: absolute URIs
// without a fragment.
func decodeResources(values []string) ([]string, *Error) {
	if len(values) > maxResources {
		return nil, refuse(ErrInvalidTarget, fmt.Sprintf("at most %d resources", maxResources))
	}
	var out []string
	for _, v := range values {
		u, err := url.Parse(v)
		if err != nil || len(v) > maxResource || !u.IsAbs() || u.Host == "" || u.Fragment != "" || strings.Contains(v, "#") {
			return nil, refuse(ErrInvalidTarget, fmt.Sprintf("resource %s must be an absolute URI without a fragment, at most %d bytes", broker.QuoteUntrusted(v), maxResource))
		}
		if !slices.Contains(out, v) {
			out = append(out, v)
		}
	}
	return out, nil
}

// boundKey quotes a form key from the client for a message.
func boundKey(k string) string { return broker.Bound(k, 64) }
