package issuers

import (
	"fmt"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/valet-dev/valet/broker"
)

// VerifyExpired is Verify for reports made after a token's life: the
// signature, type, issuer and claims are checked as by Verify, and exp may
// have passed by at most grace. It grants nothing; the broker uses it only
// to accept late tool-call reports (toolevents.LateVerifier).
func (j *JWT) VerifyExpired(raw string, grace time.Duration) (broker.TaskClaims, error) {
	if len(raw) > j.maxBytes {
		return broker.TaskClaims{}, fmt.Errorf("%w: token is %d bytes, more than the %d allowed", ErrInvalidToken, len(raw), j.maxBytes)
	}
	if grace < 0 {
		grace = 0
	}
	p := jwt.NewParser(jwt.WithValidMethods([]string{j.alg}), jwt.WithIssuer(j.issuer), jwt.WithExpirationRequired(),
		jwt.WithIssuedAt(), jwt.WithTimeFunc(j.now), jwt.WithStrictDecoding(), jwt.WithLeeway(grace))
	return j.verifyWith(p, raw)
}
