package verify

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// Following Valet's OpenID Shared Signals stream (RFC 8936 poll) instead
// of its own revocation feed: the SETs Valet's transmitter sends (CAEP
// session-revoked and credential-change, RISC account-disabled and
// account-enabled) feed the same deny set, so a warm check still asks no
// one. See docs/signals.md for what the stream does not carry.

// The SSF event types the follower applies (CAEP 1.0, RISC 1.0).
const (
	ssfSessionRevoked   = "https://schemas.openid.net/secevent/caep/event-type/session-revoked"
	ssfCredentialChange = "https://schemas.openid.net/secevent/caep/event-type/credential-change"
	ssfAccountDisabled  = "https://schemas.openid.net/secevent/risc/event-type/account-disabled"
	ssfAccountEnabled   = "https://schemas.openid.net/secevent/risc/event-type/account-enabled"
)

// SSFStream is a poll stream (delivery urn:ietf:rfc:8936) on Valet's SSF
// transmitter that the verifier follows, created for this tool server
// (each poll acknowledges what it applied: one stream per follower).
type SSFStream struct {
	// PollURL is the stream's endpoint_url (Valet's /ssf/poll/{stream_id}).
	PollURL string
	// Audience is the stream's aud: every SET must name it.
	Audience string
	// Authorization returns the Authorization header of a poll (a bearer
	// token of a viewer of Valet's admin API); called before each poll.
	Authorization func(ctx context.Context) (string, error)
}

// maxSSFPoll is how many SETs one poll asks for (Valet's maximum).
const maxSSFPoll = 100

// setMaxAge bounds a SET's age, as Valet's own receiver does; an applied
// SET's jti is remembered as long, so its replay changes nothing.
const setMaxAge = 24 * time.Hour

// FollowSSF follows stream until ctx ends, as Run follows the revocation
// feed: until its first poll answers, and whenever a poll fails, Check
// falls back to introspection. It also sends the queued tool-call reports.
// It returns at once with an error when stream is not usable.
func (v *Verifier) FollowSSF(ctx context.Context, stream SSFStream) error {
	u, err := url.Parse(stream.PollURL)
	switch {
	case err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "":
		return fmt.Errorf("verify: SSF poll URL %q must be an absolute http(s) URL", stream.PollURL)
	case stream.Audience == "":
		return errors.New("verify: the SSF stream's audience is required")
	case stream.Authorization == nil:
		return errors.New("verify: the SSF stream needs an Authorization source")
	}
	parser := jwt.NewParser(jwt.WithValidMethods([]string{"EdDSA", "ES256"}), jwt.WithIssuer(v.cfg.Issuer),
		jwt.WithAudience(stream.Audience), jwt.WithIssuedAt(), jwt.WithTimeFunc(v.cfg.Now))
	go v.sendReports(ctx)
	backoff := 100 * time.Millisecond
	var acks []string
	setErrs := map[string]any{}
	seen := map[string]time.Time{} // applied SETs' jtis, until iat + setMaxAge
	lastPrune := time.Now()
	for ctx.Err() == nil {
		sets, err := v.pollSSF(ctx, stream, acks, setErrs, !v.deny.live())
		if err != nil {
			v.deny.setLive(false)
			if ctx.Err() != nil {
				break
			}
			v.cfg.Logger.WarnContext(ctx, "SSF stream poll failed; checking by introspection until it is back", "err", err)
			select {
			case <-ctx.Done():
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 5*time.Second)
			continue // the acks are sent again with the next poll
		}
		acks, setErrs = acks[:0], map[string]any{}
		deferred := false
		for jti, raw := range sets {
			if err := v.applySET(ctx, parser, jti, raw, seen); errors.Is(err, errKeysUnavailable) {
				// Neither acknowledged nor refused: Valet sends it again,
				// and checks ask Valet until it applies.
				deferred = true
				v.cfg.Logger.WarnContext(ctx, "SET deferred; checking by introspection until it applies", "jti", boundID(jti), "err", err)
				continue
			} else if err != nil {
				v.cfg.Logger.WarnContext(ctx, "SET refused", "jti", boundID(jti), "err", err)
				setErrs[jti] = map[string]string{"err": "invalid_request", "description": boundID(err.Error())}
				continue
			}
			acks = append(acks, jti)
		}
		if deferred {
			v.deny.setLive(false)
			select {
			case <-ctx.Done():
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 5*time.Second)
			continue
		}
		backoff = 100 * time.Millisecond
		if !v.deny.live() {
			v.cfg.Logger.InfoContext(ctx, "SSF stream live")
		}
		v.deny.setLive(true)
		if time.Since(lastPrune) > time.Minute {
			now := v.cfg.Now()
			v.deny.prune(now)
			for k, until := range seen {
				if now.After(until) {
					delete(seen, k)
				}
			}
			lastPrune = time.Now()
		}
	}
	v.deny.setLive(false)
	return nil
}

// pollSSF makes one RFC 8936 poll: it acknowledges acks, reports setErrs
// and returns the SETs given, by jti. Unless immediate, Valet holds the
// request until a SET comes or its wait ends.
func (v *Verifier) pollSSF(ctx context.Context, s SSFStream, acks []string, setErrs map[string]any, immediate bool) (map[string]string, error) {
	auth, err := s.Authorization(ctx)
	if err != nil {
		return nil, fmt.Errorf("SSF poll authorization: %w", err)
	}
	body := map[string]any{"ack": acks, "maxEvents": maxSSFPoll, "returnImmediately": immediate}
	if acks == nil {
		body["ack"] = []string{}
	}
	if len(setErrs) > 0 {
		body["setErrs"] = setErrs
	}
	b, _ := json.Marshal(body) // plain maps and strings
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.PollURL, bytes.NewReader(b))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")
	req.Header.Set("Authorization", auth)
	resp, err := v.cfg.HTTPClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("polling the SSF stream: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		return nil, fmt.Errorf("polling the SSF stream: status %d", resp.StatusCode)
	}
	var pr struct {
		Sets map[string]string `json:"sets"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 16<<20)).Decode(&pr); err != nil {
		return nil, fmt.Errorf("decoding the SSF poll answer: %w", err)
	}
	return pr.Sets, nil
}

// errKeysUnavailable: Valet's JWKS could not be read for a SET's unknown
// kid (the fetch failed, or the last began under jwksMinRefresh ago, as
// right after a key rotation). Such a SET is deferred, not refused.
var errKeysUnavailable = errors.New("valet's keys cannot be read yet")

// applySET verifies one SET (Valet's key, typ secevent+jwt, iss, aud, iat
// not ahead nor older than setMaxAge, jti the poll's and not in seen) and
// applies its events to the deny set, recording its jti in seen. An error
// wrapping errKeysUnavailable defers the SET.
func (v *Verifier) applySET(ctx context.Context, parser *jwt.Parser, jti, raw string, seen map[string]time.Time) error {
	var claims jwt.MapClaims
	if _, err := parser.ParseWithClaims(raw, &claims, func(t *jwt.Token) (any, error) {
		kid, _ := t.Header["kid"].(string)
		v.keysMu.RLock()
		_, known := v.keys[kid]
		v.keysMu.RUnlock()
		if !known && kid != "" {
			if err := v.refreshKeys(ctx); err != nil {
				return nil, fmt.Errorf("%w: %w", errKeysUnavailable, err)
			}
		}
		return v.key(ctx, t, "secevent+jwt")
	}); err != nil {
		return err
	}
	iatf, ok := claims["iat"].(float64)
	if !ok {
		return errors.New("a SET must carry iat")
	}
	iat, now := time.Unix(int64(iatf), 0), v.cfg.Now()
	switch {
	case iat.Before(now.Add(-setMaxAge)):
		return errors.New("the SET is more than 24 h old")
	case claims["jti"] != jti:
		return errors.New("the SET's jti is not the poll's")
	case now.Before(seen[jti]):
		return errors.New("jti replayed: this SET was applied already")
	}
	events, ok := claims["events"].(map[string]any)
	if !ok || len(events) == 0 {
		return errors.New("a SET must carry events")
	}
	seen[jti] = iat.Add(setMaxAge)
	sub, _ := claims["sub_id"].(map[string]any)
	for typ, p := range events {
		payload, _ := p.(map[string]any)
		v.applySSFEvent(typ, sub, payload)
	}
	return nil
}

// applySSFEvent applies one event about subject sub.
func (v *Verifier) applySSFEvent(typ string, sub, payload map[string]any) {
	member := func(s map[string]any, name string) map[string]any {
		if s["format"] == "complex" {
			m, _ := s[name].(map[string]any)
			return m
		}
		return nil
	}
	id := func(s map[string]any) string {
		if s == nil {
			return ""
		}
		switch s["format"] {
		case "opaque":
			x, _ := s["id"].(string)
			return x
		case "iss_sub":
			x, _ := s["sub"].(string)
			return x
		}
		return ""
	}
	agent := id(sub) // an agent subject (iss_sub or opaque)
	if sub["format"] == "complex" {
		agent = id(member(sub, "user"))
	}
	switch typ {
	case ssfCredentialChange:
		jti, task := id(member(sub, "credential")), id(member(sub, "session"))
		if jti != "" || task != "" {
			v.deny.addRevoked(revokedEntry{JTI: jti, TaskID: task})
		}
	case ssfSessionRevoked:
		if task := id(member(sub, "session")); task != "" {
			v.deny.addRevoked(revokedEntry{TaskID: task})
			return
		}
		// Every session of the agent begun at or before event_timestamp:
		// Valet's agent epoch. The subject names the issuer by URL, not
		// by the name tokens carry: it covers the agent of every issuer.
		if ts, ok := payload["event_timestamp"].(float64); ok && agent != "" {
			v.deny.addEpoch(epochEntry{Dimension: "agentsub", Key: agent, Before: int64(ts)*1000 + 999})
		}
	case ssfAccountDisabled, ssfAccountEnabled:
		if agent != "" {
			// As above: a freeze of that agent under every issuer.
			v.deny.applyControl(controlEntry{Kind: freezeAgent, Target: agent, Active: typ == ssfAccountDisabled})
		}
	}
}

// boundID bounds a transmitter-sent value for logs and setErrs.
func boundID(s string) string {
	if len(s) > 128 {
		s = s[:128]
	}
	return strings.ToValidUTF8(s, "?")
}
