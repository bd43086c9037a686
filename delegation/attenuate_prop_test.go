package delegation

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/policy"
)

// TestAttenuateProperty: over 10,000 random (template, parent grant, child
// request) triples, a child never holds a tool, audience, scope or lifetime
// that its parent or its template lacks, and every refusal is a
// forbidden or invalid error, never a silently narrowed grant of something
// that was asked for.
func TestAttenuateProperty(t *testing.T) {
	rng := rand.New(rand.NewPCG(20260501, 5))
	universe := func(prefix string, n int) []string {
		out := make([]string, n)
		for i := range out {
			out[i] = fmt.Sprintf("%s%d", prefix, i)
		}
		return out
	}
	tools, auds, scopes := universe("tool.", 8), universe("https://aud", 5), universe("scope", 5)
	subset := func(from []string) []string {
		var out []string
		for _, x := range from {
			if rng.IntN(2) == 0 {
				out = append(out, x)
			}
		}
		return out
	}
	now := time.Unix(1_800_000_000, 0)
	var granted, denied int
	for i := range 10_000 {
		tmpl := &policy.Template{Name: "t", Tools: subset(tools), Audiences: subset(auds), Scopes: subset(scopes),
			MaxTTL: time.Duration(1+rng.IntN(3600)) * time.Second}
		if rng.IntN(4) == 0 {
			tmpl.Tools = append(tmpl.Tools, "tool.*") // a wildcard admits every tool
		}
		if rng.IntN(2) == 0 { // templates usually allow what their tasks hold
			tmpl.Audiences, tmpl.Scopes = auds, scopes
		}
		if rng.IntN(10) > 0 {
			tmpl.Delegation = &policy.DelegationPolicy{MaxDepth: 1 + rng.IntN(policy.MaxDelegationDepth)}
		}
		parent := ParentGrant{Tools: subset(tools), Audiences: subset(auds), Scopes: subset(scopes),
			Deadline: now.Add(time.Duration(rng.IntN(7200)-60) * time.Second), Depth: rng.IntN(4)}
		// Mostly ask within the parent, sometimes for anything: both the
		// grants and the refusals must be exercised.
		within := func(parentHas, all []string) []string {
			if rng.IntN(4) == 0 {
				return subset(all)
			}
			return subset(parentHas)
		}
		req := Request{Tools: within(parent.Tools, tools), Audiences: within(parent.Audiences, auds)}
		if rng.IntN(2) == 0 {
			req.Scopes = within(parent.Scopes, scopes)
		}
		if rng.IntN(2) == 0 {
			req.TTL = time.Duration(1+rng.IntN(7200)) * time.Second
		}
		g, depth, err := Attenuate(tmpl, parent, req, now)
		if err != nil {
			var e *broker.Error
			if !errors.As(err, &e) || (e.Code != broker.CodeForbidden && e.Code != broker.CodeInvalid) {
				t.Fatalf("case %d: refusal is not a 403 or 400: %v", i, err)
			}
			denied++
			continue
		}
		granted++
		where := fmt.Sprintf("case %d: template %+v parent %+v request %+v grant %+v", i, tmpl, parent, req, g)
		if len(g.Tools) == 0 || len(g.Audiences) == 0 {
			t.Fatalf("%s: empty tools or audiences granted", where)
		}
		for _, x := range g.Tools {
			if !slices.Contains(parent.Tools, x) || !slices.Contains(req.Tools, x) || !tmpl.AllowsTool(x) {
				t.Fatalf("%s: tool %s is not in parent ∩ request ∩ template", where, x)
			}
		}
		for _, x := range g.Audiences {
			if !slices.Contains(parent.Audiences, x) || !slices.Contains(tmpl.Audiences, x) ||
				(len(req.Audiences) > 0 && !slices.Contains(req.Audiences, x)) {
				t.Fatalf("%s: audience %s is not in parent ∩ request ∩ template", where, x)
			}
		}
		for _, x := range g.Scopes {
			if !slices.Contains(parent.Scopes, x) || !slices.Contains(tmpl.Scopes, x) ||
				(req.Scopes != nil && !slices.Contains(req.Scopes, x)) {
				t.Fatalf("%s: scope %s is not in parent ∩ request ∩ template", where, x)
			}
		}
		if g.TTL <= 0 || now.Add(g.TTL).After(parent.Deadline) || g.TTL > tmpl.MaxTTL || (req.TTL > 0 && g.TTL != req.TTL) {
			t.Fatalf("%s: lifetime %s outlives the parent (deadline %s) or the template", where, g.TTL, parent.Deadline)
		}
		if tmpl.Delegation == nil || depth != parent.Depth+1 || depth > tmpl.Delegation.MaxDepth {
			t.Fatalf("%s: depth %d not allowed", where, depth)
		}
	}
	t.Logf("10,000 triples: %d granted, %d refused", granted, denied)
	if granted < 100 || denied < 100 {
		t.Fatalf("the generator is lopsided (%d granted, %d refused): the property is not exercised", granted, denied)
	}
}
