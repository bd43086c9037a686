package issuers

import (
	"errors"
	"fmt"

	"github.com/golang-jwt/jwt/v5"
)

// setType is the typ header of a Security Event Token (RFC 8417 section
// 2.3; OpenID SSF 1.0 section 4.1.1 requires it). No verifier of task or
// action tokens accepts it, so a SET can never pass for either.
const setType = "secevent+jwt"

// SignSET signs a Security Event Token (RFC 8417) with the active task-token
// key: iss is set to Valet's issuer, every other claim (jti, iat, aud,
// sub_id, events, txn) is the caller's. A SET carries no exp (RFC 8417
// section 2.2 and SSF 1.0 section 4.1.7), so it grants nothing: it is
// evidence, not a credential.
func (j *JWT) SignSET(claims map[string]any) (string, error) {
	if claims == nil {
		return "", errors.New("signing SET: no claims")
	}
	if _, ok := claims["jti"].(string); !ok {
		return "", errors.New("signing SET: jti is required")
	}
	if _, ok := claims["events"].(map[string]any); !ok {
		return "", errors.New("signing SET: events is required")
	}
	if _, ok := claims["exp"]; ok {
		return "", errors.New("signing SET: a SET must not carry exp")
	}
	mc := jwt.MapClaims{}
	for k, v := range claims {
		mc[k] = v
	}
	mc["iss"] = j.issuer
	tok := jwt.NewWithClaims(j.method, mc)
	tok.Header["typ"] = setType
	tok.Header["kid"] = j.kid
	signed, err := j.sign(tok)
	if err != nil {
		return "", fmt.Errorf("signing SET: %w", err)
	}
	return signed, nil
}

// Issuer is the iss of everything this issuer signs.
func (j *JWT) Issuer() string { return j.issuer }
