// Package client is a small Go client for agents that use Valet: declare a
// task, renew it, delegate part of it to a sub-agent and complete it, with
// Valet's refusals as typed errors. It is built on the client generated from
// openapi/openapi.yaml (package client/valetapi), so the wire types are the
// contract's. It never logs, and no error it returns holds a token.
package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/valet-dev/valet/client/valetapi"
)

// Client talks to one Valet broker. It is safe for concurrent use.
type Client struct {
	api *valetapi.ClientWithResponses
}

// New returns a client of the broker at baseURL (e.g.
// "https://valet.example.com"). A nil httpClient means a client with a 30 s
// timeout.
func New(baseURL string, httpClient *http.Client) (*Client, error) {
	if _, err := url.ParseRequestURI(baseURL); err != nil {
		return nil, fmt.Errorf("valet client: base URL: %w", err)
	}
	if httpClient == nil {
		httpClient = &http.Client{Timeout: 30 * time.Second}
	}
	api, err := valetapi.NewClientWithResponses(strings.TrimSuffix(baseURL, "/"), valetapi.WithHTTPClient(httpClient))
	if err != nil {
		return nil, fmt.Errorf("valet client: %w", err)
	}
	return &Client{api: api}, nil
}

// Grant is a task and the credentials Valet handed out for it: its task
// token (kind jwt) first, then any Vault credentials. Credentials are
// secrets: keep them out of logs.
type Grant struct {
	Task        valetapi.Task
	Credentials []valetapi.Credential
}

// TaskToken is the grant's task token (its jwt credential's access_token),
// or "" if it has none.
func (g *Grant) TaskToken() string {
	for _, c := range g.Credentials {
		if c.Kind == valetapi.CredentialKindJwt && c.AccessToken != nil {
			return *c.AccessToken
		}
	}
	return ""
}

// Error is a refusal by Valet: the HTTP status and the body's code,
// message, rule (the policy rule or control that decided), field (the part
// of the request that was wrong) and request id (the key to Valet's log and
// audit lines). Use errors.As to read it.
type Error struct {
	Status    int
	Code      string
	Message   string
	Rule      string
	Field     string
	RequestID string
}

func (e *Error) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "valet: %d %s: %s", e.Status, e.Code, e.Message)
	if e.Rule != "" {
		fmt.Fprintf(&b, " (rule %s)", e.Rule)
	}
	if e.Field != "" {
		fmt.Fprintf(&b, " (field %s)", e.Field)
	}
	if e.RequestID != "" {
		fmt.Fprintf(&b, " [request %s]", e.RequestID)
	}
	return b.String()
}

// Is lets errors.Is match an *Error by Code alone: errors.Is(err,
// &client.Error{Code: "conflict"}).
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Code != "" && t.Code == e.Code && (t.Status == 0 || t.Status == e.Status)
}

// Common refusals, for errors.Is.
var (
	ErrUnauthenticated = &Error{Code: "unauthenticated"}
	ErrForbidden       = &Error{Code: "forbidden"}
	ErrNotFound        = &Error{Code: "not_found"}
	ErrConflict        = &Error{Code: "conflict"}
	ErrUnavailable     = &Error{Code: "unavailable"}
)

// maxQuoted bounds how much of an unexpected answer an error quotes.
const maxQuoted = 256

// refusal turns a non-success answer into an *Error, from Valet's Error body
// or an OAuth error body; an answer in neither shape keeps its status and
// a bounded quote.
func refusal(status int, body []byte) error {
	var e struct {
		Error            string `json:"error"`
		Message          string `json:"message"`
		ErrorDescription string `json:"error_description"`
		Rule             string `json:"rule"`
		Field            string `json:"field"`
		RequestID        string `json:"request_id"`
	}
	if err := json.Unmarshal(body, &e); err != nil || e.Error == "" {
		quoted := string(body)
		if len(quoted) > maxQuoted {
			quoted = quoted[:maxQuoted] + "..."
		}
		return &Error{Status: status, Code: "http_" + strconv.Itoa(status), Message: strconv.Quote(quoted)}
	}
	msg := e.Message
	if msg == "" {
		msg = e.ErrorDescription
	}
	return &Error{Status: status, Code: e.Error, Message: msg, Rule: e.Rule, Field: e.Field, RequestID: e.RequestID}
}

// bearer sets the Authorization header of one request.
func bearer(token string) valetapi.RequestEditorFn {
	return func(_ context.Context, req *http.Request) error {
		req.Header.Set("Authorization", "Bearer "+token)
		return nil
	}
}

// Declare declares a task with the agent's identity token and answers its
// grant.
func (c *Client) Declare(ctx context.Context, identityToken string, d valetapi.Declaration) (*Grant, error) {
	resp, err := c.api.DeclareTaskWithResponse(ctx, nil, d, bearer(identityToken))
	if err != nil {
		return nil, fmt.Errorf("valet: declaring a task: %w", err)
	}
	if resp.JSON201 == nil {
		return nil, refusal(resp.StatusCode(), resp.Body)
	}
	return &Grant{Task: resp.JSON201.Task, Credentials: resp.JSON201.Credentials}, nil
}

// Renew asks for a later deadline for task id, with a fresh identity token
// of the agent that declared it, and answers the task with its new deadline
// and fresh credentials that live until it (those held before keep their
// own expiry). A zero ttl asks for the template's default.
func (c *Client) Renew(ctx context.Context, identityToken, taskID string, ttl time.Duration) (*Grant, error) {
	var body valetapi.RenewRequest
	if ttl > 0 {
		secs := int((ttl + time.Second - 1) / time.Second)
		body.TtlSeconds = &secs
	}
	resp, err := c.api.RenewTaskWithResponse(ctx, taskID, body, bearer(identityToken))
	if err != nil {
		return nil, fmt.Errorf("valet: renewing task %s: %w", taskID, err)
	}
	if resp.JSON200 == nil {
		return nil, refusal(resp.StatusCode(), resp.Body)
	}
	return &Grant{Task: resp.JSON200.Task, Credentials: resp.JSON200.Credentials}, nil
}

// Complete ends task id with one of its task tokens (or the agent's
// identity token); every credential of it is revoked. Completing a
// completed task again answers it unchanged.
func (c *Client) Complete(ctx context.Context, token, taskID string) (valetapi.Task, error) {
	resp, err := c.api.CompleteTaskWithResponse(ctx, taskID, bearer(token))
	if err != nil {
		return valetapi.Task{}, fmt.Errorf("valet: completing task %s: %w", taskID, err)
	}
	if resp.JSON200 == nil {
		return valetapi.Task{}, refusal(resp.StatusCode(), resp.Body)
	}
	return resp.JSON200.Task, nil
}

// Delegation asks for a sub-agent's task: the tools (each held by the
// parent) and, optionally, a shorter life than the parent's remaining one.
type Delegation struct {
	// ParentToken is the parent task's token; ActorIdentityToken the
	// sub-agent's identity token.
	ParentToken, ActorIdentityToken string
	Tools                           []string
	TTL                             time.Duration
}

// Delegate exchanges a parent task token for a sub-agent's (RFC 8693 token
// exchange) and answers the child task and its token.
func (c *Client) Delegate(ctx context.Context, d Delegation) (task valetapi.Task, token string, err error) {
	form := url.Values{
		"grant_type":         {"urn:ietf:params:oauth:grant-type:token-exchange"},
		"subject_token":      {d.ParentToken},
		"subject_token_type": {"urn:ietf:params:oauth:token-type:access_token"},
		"actor_token":        {d.ActorIdentityToken},
		"actor_token_type":   {"urn:ietf:params:oauth:token-type:id_token"},
		"tools":              {strings.Join(d.Tools, " ")},
	}
	if d.TTL > 0 {
		form.Set("ttl_seconds", strconv.FormatInt(int64((d.TTL+time.Second-1)/time.Second), 10))
	}
	resp, err := c.api.TokenWithBodyWithResponse(ctx, nil, "application/x-www-form-urlencoded", strings.NewReader(form.Encode()))
	if err != nil {
		return valetapi.Task{}, "", fmt.Errorf("valet: delegating: %w", err)
	}
	if resp.JSON200 == nil {
		return valetapi.Task{}, "", refusal(resp.StatusCode(), resp.Body)
	}
	x, err := resp.JSON200.AsTokenExchangeResponse()
	if err != nil || x.AccessToken == "" || x.Task.Id == "" {
		return valetapi.Task{}, "", errors.New("valet: delegating: the answer is not a token exchange response")
	}
	return x.Task, x.AccessToken, nil
}
