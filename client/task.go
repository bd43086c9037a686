package client

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/valet-dev/valet/client/valetapi"
	"github.com/valet-dev/valet/dpop"
)

// IdentitySource gives the agent's current identity token (a projected
// service-account token, a workload identity, the development issuer's),
// asked again for every declaration and renewal so a rotated token is used.
type IdentitySource func(ctx context.Context) (string, error)

// Task is a declared task that an agent holds while it works: its token
// for tool calls, its deadline, and the calls that act for it. Close
// completes it, so `defer task.Close()` revokes every credential of the
// task when the work ends, also when it ends by a panic or an error.
// A Task is safe for concurrent use.
type Task struct {
	c        *Client
	identity IdentitySource
	signer   *dpop.Signer
	now      func() time.Time

	mu     sync.Mutex
	grant  Grant
	closed bool
}

// Option changes how Start declares a task.
type Option func(*Task)

// WithDPoP binds the task's tokens to key (RFC 9449): the declaration
// carries a proof, every later call of the task a proof bound to its
// token, and a stolen task token is useless without the key.
func WithDPoP(key *dpop.Signer) Option { return func(t *Task) { t.signer = key } }

// WithClock sets the clock of DPoP proofs' iat (default time.Now), for
// tests that run Valet on a fake clock.
func WithClock(now func() time.Time) Option { return func(t *Task) { t.now = now } }

// Start declares a task with the agent's identity and answers it, ready
// for `defer task.Close()`.
func (c *Client) Start(ctx context.Context, identity IdentitySource, d valetapi.Declaration, opts ...Option) (*Task, error) {
	t := &Task{c: c, identity: identity, now: time.Now}
	for _, o := range opts {
		o(t)
	}
	id, err := identity(ctx)
	if err != nil {
		return nil, fmt.Errorf("valet: the agent's identity token: %w", err)
	}
	resp, err := c.api.DeclareTaskWithResponse(ctx, nil, d, bearer(id), t.proof(""))
	if err != nil {
		return nil, fmt.Errorf("valet: declaring a task: %w", err)
	}
	if resp.JSON201 == nil {
		return nil, refusal(resp.StatusCode(), resp.Body)
	}
	t.grant = Grant{Task: resp.JSON201.Task, Credentials: resp.JSON201.Credentials}
	return t, nil
}

// Grant is the task and its current credentials (after renewals, the
// newest).
func (t *Task) Grant() Grant {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.grant
}

// ID is the task's id.
func (t *Task) ID() string { return t.Grant().Task.Id }

// Token is the task token to present to tool servers.
func (t *Task) Token() string {
	g := t.Grant()
	return g.TaskToken()
}

// Deadline is when the task ends by itself.
func (t *Task) Deadline() time.Time { return t.Grant().Task.Deadline }

// Close completes the task, revoking its credentials. It waits at most
// 10 s, whatever the caller's context, and a second Close does nothing.
func (t *Task) Close() error {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return nil
	}
	t.closed = true
	id, token := t.grant.Task.Id, t.grant.TaskToken()
	t.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := t.c.api.CompleteTaskWithResponse(ctx, id, t.auth(token), t.proof(token))
	if err != nil {
		return fmt.Errorf("valet: completing task %s: %w", id, err)
	}
	if resp.JSON200 == nil {
		return refusal(resp.StatusCode(), resp.Body)
	}
	t.mu.Lock()
	t.grant.Task = resp.JSON200.Task
	t.mu.Unlock()
	return nil
}

// Renew asks for a later deadline (a zero ttl asks for the template's
// default) with a fresh identity token; the task then holds the fresh
// credentials.
func (t *Task) Renew(ctx context.Context, ttl time.Duration) error {
	id, err := t.identity(ctx)
	if err != nil {
		return fmt.Errorf("valet: the agent's identity token: %w", err)
	}
	g, err := t.c.Renew(ctx, id, t.ID(), ttl)
	if err != nil {
		return err
	}
	t.mu.Lock()
	t.grant = *g
	t.mu.Unlock()
	return nil
}

// KeepAliveOptions tunes KeepAlive; the zero value renews 1 minute before
// the deadline, checking every second, by the wall clock.
type KeepAliveOptions struct {
	// Margin is how long before the deadline to renew; default 1 minute.
	Margin time.Duration
	// TTL is asked for at each renewal; zero means the template's default.
	TTL time.Duration
	// Every is how often the deadline is looked at; default 1 s.
	Every time.Duration
	// Now is the clock; default time.Now.
	Now func() time.Time
}

// KeepAlive renews the task whenever its deadline is within Margin, until
// ctx ends (nil) or a renewal is refused (the refusal: the template's
// max_lifetime was reached, the agent was frozen, the task ended). A
// refused renewal leaves the task to end at its deadline.
func (t *Task) KeepAlive(ctx context.Context, o KeepAliveOptions) error {
	if o.Margin <= 0 {
		o.Margin = time.Minute
	}
	if o.Every <= 0 {
		o.Every = time.Second
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	tick := time.NewTicker(o.Every)
	defer tick.Stop()
	for {
		if t.Deadline().Sub(o.Now()) <= o.Margin {
			if err := t.Renew(ctx, o.TTL); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return err
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

// ActionToken is a one-shot token for one call of a sensitive tool with
// exactly these arguments; it is a secret, like the task token.
type ActionToken struct {
	Token     string
	JTI       string
	Tool      string
	ArgsHash  string
	ExpiresAt time.Time
}

// ErrDenied is returned by Action when an approver denied the call or the
// approval expired undecided.
var ErrDenied = errors.New("valet: the action was not approved")

// Action asks for an action token for one call of a sensitive tool. When a
// person must approve first, it waits, polling every `poll` (default 2 s),
// until the approval is decided or ctx ends; onPending, if set, is told the
// approval id once so the agent can say what it waits for.
func (t *Task) Action(ctx context.Context, tool string, args, why map[string]any, poll time.Duration, onPending func(approvalID string)) (*ActionToken, error) {
	if poll <= 0 {
		poll = 2 * time.Second
	}
	token, id := t.Token(), t.ID()
	body := valetapi.ActionRequest{Tool: tool}
	if args != nil {
		body.Args = &args
	}
	if why != nil {
		body.Context = &why
	}
	resp, err := t.c.api.RequestActionWithResponse(ctx, id, nil, body, t.auth(token), t.proof(token))
	if err != nil {
		return nil, fmt.Errorf("valet: asking for an action token: %w", err)
	}
	switch {
	case resp.JSON201 != nil:
		return actionToken(resp.JSON201), nil
	case resp.JSON202 == nil:
		return nil, refusal(resp.StatusCode(), resp.Body)
	}
	approval := resp.JSON202.ApprovalId
	if onPending != nil {
		onPending(approval)
	}
	tick := time.NewTicker(poll)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("valet: waiting for approval %s: %w", approval, ctx.Err())
		case <-tick.C:
		}
		st, err := t.c.api.ActionStatusWithResponse(ctx, id, approval, nil, t.auth(token), t.proof(token))
		if err != nil {
			return nil, fmt.Errorf("valet: polling approval %s: %w", approval, err)
		}
		switch {
		case st.JSON201 != nil:
			return actionToken(st.JSON201), nil
		case st.JSON202 != nil:
			continue
		case st.StatusCode() == http.StatusForbidden || st.StatusCode() == http.StatusConflict:
			return nil, errors.Join(ErrDenied, refusal(st.StatusCode(), st.Body))
		default:
			return nil, refusal(st.StatusCode(), st.Body)
		}
	}
}

func actionToken(g *valetapi.ActionGrant) *ActionToken {
	return &ActionToken{Token: g.ActionToken, JTI: g.Jti, Tool: g.Tool, ArgsHash: g.ArgsHash, ExpiresAt: g.ExpiresAt}
}

// Report records one tool call the agent made in the task's timeline.
func (t *Task) Report(ctx context.Context, ev valetapi.EventReport) (valetapi.ToolEvent, error) {
	token, id := t.Token(), t.ID()
	resp, err := t.c.api.ReportEventWithResponse(ctx, id, nil, ev, t.auth(token), t.proof(token))
	if err != nil {
		return valetapi.ToolEvent{}, fmt.Errorf("valet: reporting a tool call: %w", err)
	}
	if resp.JSON201 == nil {
		return valetapi.ToolEvent{}, refusal(resp.StatusCode(), resp.Body)
	}
	return resp.JSON201.Event, nil
}

// auth presents token as Bearer, or as DPoP for a bound task.
func (t *Task) auth(token string) valetapi.RequestEditorFn {
	if t.signer == nil {
		return bearer(token)
	}
	return func(_ context.Context, req *http.Request) error {
		req.Header.Set("Authorization", "DPoP "+token)
		return nil
	}
}

// proof adds a DPoP proof for the request, bound to token when it is set;
// without a key it does nothing.
func (t *Task) proof(token string) valetapi.RequestEditorFn {
	return func(_ context.Context, req *http.Request) error {
		if t.signer == nil {
			return nil
		}
		u := *req.URL
		u.RawQuery, u.Fragment = "", ""
		p, err := t.signer.Proof(req.Method, u.String(), t.now(), token)
		if err != nil {
			return err
		}
		req.Header.Set("DPoP", p)
		return nil
	}
}
