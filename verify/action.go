package verify

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"

	"github.com/golang-jwt/jwt/v5"

	"github.com/valet-dev/valet/canonical"
)

// ActionHeader carries the one-shot action token of a sensitive tool call.
const ActionHeader = "Valet-Action"

// actionWire is an action token's payload.
type actionWire struct {
	jwt.RegisteredClaims
	TaskID   string `json:"task_id"`
	Tool     string `json:"tool"`
	ArgsHash string `json:"args_hash"`
	Cnf      *struct {
		JKT string `json:"jkt"`
	} `json:"cnf"`
}

// CheckAction checks a call of a sensitive tool, which is never in a task
// token's tools: the task token as Check does (signature, audience,
// expiry, DPoP proof, revocation), and the one-shot action token in the
// Valet-Action header: signed by Valet, typ action+jwt, for this audience,
// not expired, for the same task, for tool, for exactly args (the
// arguments the tool server is about to use, hashed in canonical form, see
// package canonical), bound to the same DPoP key as the task token; and
// finally consumed at Valet (POST /v1/actions/consume), so it works once.
// This is the one call to Valet a sensitive tool costs; other tools cost
// none. Any error means refuse; it is an *Error with the status to answer.
func (v *Verifier) CheckAction(ctx context.Context, r *http.Request, tool string, args any) (Claims, error) {
	c, err := v.checkToken(ctx, r)
	if err != nil {
		return Claims{}, err
	}
	canon, err := canonical.Value(args)
	if err != nil {
		return Claims{}, refuse(500, "the tool server's arguments cannot be hashed", err)
	}
	if err := v.checkAction(ctx, r, c, tool, canon); err != nil {
		return Claims{}, err
	}
	return c, nil
}

// checkAction is CheckAction after the task token's own checks: the tool
// is one of the task's sensitive tools, the task is not revoked, and the
// request's action token is for this task, tool, arguments (canon, their
// canonical form) and key, and is consumed at Valet.
func (v *Verifier) checkAction(ctx context.Context, r *http.Request, c Claims, tool string, canon []byte) error {
	if tool == "" || !slices.Contains(c.ActionTools, tool) {
		return refuse(403, fmt.Sprintf("tool %q is not granted to this task", tool), nil)
	}
	if err := v.checkRevoked(ctx, bearerOf(r), c); err != nil {
		return err
	}
	raw := strings.TrimSpace(r.Header.Get(ActionHeader))
	if raw == "" {
		return refuse(403, fmt.Sprintf("tool %q needs an action token (header %s)", tool, ActionHeader), errors.New("no action token"))
	}
	if len(raw) > 8192 {
		return refuse(403, "invalid action token", errors.New("action token too long"))
	}
	var aw actionWire
	tok, err := v.actionParser.ParseWithClaims(raw, &aw, func(t *jwt.Token) (any, error) { return v.key(ctx, t, "action+jwt") })
	if err != nil || !tok.Valid {
		return refuse(403, "invalid action token", err)
	}
	if err := expired(aw.ExpiresAt, v.cfg.Now()); err != nil {
		return refuse(403, "invalid action token", err)
	}
	jkt := ""
	if aw.Cnf != nil {
		jkt = aw.Cnf.JKT
	}
	switch {
	case aw.ID == "" || aw.TaskID == "":
		return refuse(403, "invalid action token", errors.New("missing jti or task_id"))
	case aw.TaskID != c.TaskID:
		return refuse(403, "the action token is for another task", nil)
	case aw.Tool != tool:
		return refuse(403, fmt.Sprintf("the action token is not for tool %q", tool), nil)
	case aw.ArgsHash != canonical.Hash(canon):
		return refuse(403, "the action token is for other arguments", nil)
	case jkt != c.JKT:
		return refuse(403, "the action token is bound to another key", nil)
	}
	consumed, err := v.consume(ctx, raw)
	if err != nil {
		return refuse(503, "Valet cannot be reached to use the action token", err)
	}
	if !consumed {
		return refuse(403, "the action token was used already, expired or was revoked", nil)
	}
	return nil
}

// consume asks Valet to use up an action token.
func (v *Verifier) consume(ctx context.Context, raw string) (bool, error) {
	var body struct {
		Consumed bool `json:"consumed"`
	}
	if err := v.postToken(ctx, "/v1/actions/consume", raw, &body); err != nil {
		return false, fmt.Errorf("consuming action token: %w", err)
	}
	return body.Consumed, nil
}
