package issuers

import (
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/valet-dev/valet/stepup"
)

// actionTokenType is the typ header of one-shot action tokens, distinct
// from task tokens so neither can pass for the other.
const actionTokenType = "action+jwt"

var _ stepup.ActionTokens = (*JWT)(nil)

// actionClaims is the payload of an action token.
type actionClaims struct {
	jwt.RegisteredClaims
	TaskID   string    `json:"task_id"`
	Tool     string    `json:"tool"`
	ArgsHash string    `json:"args_hash"`
	Template string    `json:"template,omitempty"`
	Cnf      *cnfClaim `json:"cnf,omitempty"`
}

type mintActionClaims struct {
	actionClaims
	Audience []string `json:"aud"`
}

// MintAction signs an action token with the active task-token key: typ
// "action+jwt", the task's audiences, and exp as given (whole seconds).
func (j *JWT) MintAction(c stepup.ActionClaims) (string, error) {
	switch {
	case c.ID == "" || c.TaskID == "" || c.Tool == "" || c.ArgsHash == "" || c.Subject == "":
		return "", errors.New("minting action token: jti, task_id, tool, args_hash and sub are required")
	case len(c.Audience) == 0:
		return "", errors.New("minting action token: no audience")
	case !c.ExpiresAt.After(c.IssuedAt):
		return "", errors.New("minting action token: it would expire before it is issued")
	}
	iat := jwt.NewNumericDate(c.IssuedAt)
	claims := mintActionClaims{
		actionClaims: actionClaims{
			RegisteredClaims: jwt.RegisteredClaims{Issuer: j.issuer, Subject: c.Subject, ID: c.ID,
				IssuedAt: iat, NotBefore: iat, ExpiresAt: jwt.NewNumericDate(c.ExpiresAt)},
			TaskID: c.TaskID, Tool: c.Tool, ArgsHash: c.ArgsHash, Template: c.Template, Cnf: cnf(c.JKT),
		},
		Audience: slices.Clone(c.Audience),
	}
	tok := jwt.NewWithClaims(j.method, claims)
	tok.Header["typ"] = actionTokenType
	tok.Header["kid"] = j.kid
	signed, err := j.sign(tok)
	if err != nil {
		return "", fmt.Errorf("minting action token: %w", err)
	}
	return signed, nil
}

// VerifyAction checks an action token's signature, typ, issuer, expiry and
// required claims. Any error means refuse.
func (j *JWT) VerifyAction(raw string) (stepup.ActionClaims, error) {
	if len(raw) > j.maxBytes {
		return stepup.ActionClaims{}, fmt.Errorf("%w: action token too long", ErrInvalidToken)
	}
	var c actionClaims
	tok, err := j.parser.ParseWithClaims(raw, &c, func(t *jwt.Token) (any, error) {
		if typ, _ := t.Header["typ"].(string); typ != actionTokenType {
			return nil, fmt.Errorf("typ header must be %q", actionTokenType)
		}
		if _, ok := t.Header["crit"]; ok {
			return nil, errors.New("crit header is not supported")
		}
		kid, _ := t.Header["kid"].(string)
		pub, ok := j.keys[kid]
		if !ok {
			return nil, fmt.Errorf("kid %.64q is not a configured key", kid)
		}
		return pub, nil
	})
	switch {
	case err != nil:
		return stepup.ActionClaims{}, fmt.Errorf("%w: %w", ErrInvalidToken, err)
	case !tok.Valid || (j.alg == AlgES256 && highS(tok.Signature)):
		return stepup.ActionClaims{}, fmt.Errorf("%w: action token is not valid", ErrInvalidToken)
	case c.ID == "" || c.TaskID == "" || c.Tool == "" || c.ArgsHash == "" || c.IssuedAt == nil:
		return stepup.ActionClaims{}, fmt.Errorf("%w: action token lacks jti, task_id, tool, args_hash or iat", ErrInvalidToken)
	case c.Cnf != nil && c.Cnf.JKT == "":
		return stepup.ActionClaims{}, fmt.Errorf("%w: cnf claim without jkt", ErrInvalidToken)
	}
	return stepup.ActionClaims{ID: c.ID, TaskID: c.TaskID, Tool: c.Tool, ArgsHash: c.ArgsHash, Subject: c.Subject,
		Template: c.Template, Audience: c.Audience, JKT: c.Cnf.jkt(), IssuedAt: c.IssuedAt.UTC(),
		ExpiresAt: c.ExpiresAt.Time.UTC().Truncate(time.Second)}, nil
}
