package proxy

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/valet-dev/valet/dpop"
)

// DPoP-bound handles (RFC 9449). An agent that declares through the proxy
// with a DPoP proof gets a handle bound to its key's thumbprint: every
// later request with that handle must carry a fresh proof by the same key
// for that request (htm, htu, ath of the handle, iat within dpop.Window, a
// jti not seen before). The htu is the URL the agent called: its
// absolute-form URL in forward mode, else http://<Host><path>.

// maxReplay bounds the jti replay cache; a proof that would overflow it
// is refused (fail closed) until entries expire.
const maxReplay = 1 << 16

// replayCache remembers the jtis of accepted proofs until no proof with
// them could be fresh again. It is safe for concurrent use.
type replayCache struct {
	mu   sync.Mutex
	seen map[string]time.Time // jkt + " " + jti → forget after
	max  int
}

func newReplayCache(max int) *replayCache {
	return &replayCache{seen: map[string]time.Time{}, max: max}
}

var errReplayFull = errors.New("too many recent DPoP proofs: try again shortly")

// use records a proof's jti; it fails when the jti was used already or
// the cache is full of live entries.
func (c *replayCache) use(jkt, jti string, now time.Time) error {
	key := jkt + " " + jti
	c.mu.Lock()
	defer c.mu.Unlock()
	if until, ok := c.seen[key]; ok && now.Before(until) {
		return errors.New("the proof's jti was used before (replay)")
	}
	if len(c.seen) >= c.max {
		for k, until := range c.seen {
			if !now.Before(until) {
				delete(c.seen, k)
			}
		}
		if len(c.seen) >= c.max {
			return errReplayFull
		}
	}
	// iat may be up to dpop.Window in the future and is accepted until
	// dpop.Window in the past: twice the window covers both.
	c.seen[key] = now.Add(2*dpop.Window + time.Second)
	return nil
}

// proofURL is the htu a proof for r must name.
func proofURL(r *http.Request) string {
	if r.URL.IsAbs() {
		return r.URL.String()
	}
	return "http://" + r.Host + r.URL.EscapedPath()
}

// declarationKey checks the DPoP proof of a declaration, if any, and
// returns its key's thumbprint ("" without a proof).
func (p *Proxy) declarationKey(ctx context.Context, r *http.Request) (string, *http.Response) {
	proofs := r.Header.Values("DPoP")
	if len(proofs) == 0 {
		return "", nil
	}
	jkt, err := p.checkProof(r, proofs, "", "")
	if err != nil {
		p.audit(ctx, r, nil, "dpop", "declaration: "+err.Error())
		return "", dpopRefusal(err)
	}
	return jkt, nil
}

// checkBinding checks the proof of a request with the handle of a task
// bound to a DPoP key; a task not bound passes.
func (p *Proxy) checkBinding(ctx context.Context, r *http.Request, t *Task, handle string) *http.Response {
	if t.jkt == "" {
		return nil
	}
	if _, err := p.checkProof(r, r.Header.Values("DPoP"), handle, t.jkt); err != nil {
		p.audit(ctx, r, t, "dpop", err.Error())
		return dpopRefusal(err)
	}
	return nil
}

// checkProof checks the one proof of r, bound to accessToken when given,
// by the key jkt when given, and records its jti.
func (p *Proxy) checkProof(r *http.Request, proofs []string, accessToken, jkt string) (string, error) {
	switch len(proofs) {
	case 0:
		return "", errors.New("the handle is bound to a DPoP key: send a DPoP proof with every request")
	case 1:
	default:
		return "", errors.New("more than one DPoP header")
	}
	now := p.cfg.Now()
	pr, err := dpop.Check(proofs[0], r.Method, proofURL(r), now, accessToken)
	if err != nil {
		return "", err
	}
	if jkt != "" && pr.JKT != jkt {
		return "", errors.New("the DPoP proof is signed by another key than the one the handle is bound to")
	}
	if err := p.replays.use(pr.JKT, pr.JTI, now); err != nil {
		return "", err
	}
	return pr.JKT, nil
}

func dpopRefusal(err error) *http.Response {
	status := http.StatusUnauthorized
	if errors.Is(err, errReplayFull) {
		status = http.StatusServiceUnavailable
	}
	resp := refusal(status, "dpop", "", fmt.Sprintf("DPoP: %s", strings.TrimPrefix(err.Error(), dpop.ErrInvalidProof.Error()+": ")))
	resp.Header.Set("WWW-Authenticate", `DPoP error="invalid_dpop_proof", algs="EdDSA ES256 ES384 RS256 PS256"`)
	return resp
}
