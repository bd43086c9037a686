package issuers

import "github.com/valet-dev/valet/broker"

// maxActDepth bounds the act chain a token may carry, and so the nesting
// Verify decodes: no template allows deeper delegation.
const maxActDepth = 32

// actClaim is the RFC 8693 section 4.1 act claim: the current actor, with
// the actors before it nested inside.
type actClaim struct {
	Sub string    `json:"sub"`
	Act *actClaim `json:"act,omitempty"`
}

// actChain nests chain (current actor first) into act claims.
func actChain(chain []string) *actClaim {
	var a *actClaim
	for i := len(chain) - 1; i >= 0; i-- {
		a = &actClaim{Sub: chain[i], Act: a}
	}
	return a
}

// chain flattens an act claim, current actor first. A chain deeper than
// maxActDepth or with an empty sub is cut where it goes wrong, and the
// caller sees the cut as the end of the chain; Verify refuses such tokens
// (see checkAct).
func (a *actClaim) chain() []string {
	var out []string
	for ; a != nil && len(out) < maxActDepth; a = a.Act {
		out = append(out, a.Sub)
	}
	return out
}

// valid reports whether every level names an actor and the nesting stays
// within maxActDepth.
func (a *actClaim) valid() bool {
	n := 0
	for ; a != nil; a = a.Act {
		if a.Sub == "" || n >= maxActDepth {
			return false
		}
		n++
	}
	return true
}

// cnfClaim is the RFC 7800 confirmation claim with an RFC 9449 jkt.
type cnfClaim struct {
	JKT string `json:"jkt"`
}

func cnf(jkt string) *cnfClaim {
	if jkt == "" {
		return nil
	}
	return &cnfClaim{JKT: jkt}
}

func (c *cnfClaim) jkt() string {
	if c == nil {
		return ""
	}
	return c.JKT
}

// tokenSubject is the sub of a task token: the user or root agent the task
// acts for, else the agent itself.
func tokenSubject(t broker.Task) string {
	if t.Subject != "" {
		return t.Subject
	}
	return t.Agent
}
