package verify

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"
)

// The revocation feed's wire format (served by Valet at /v1/revocations):
//
//	GET /v1/revocations → {"cursor": "<stream id>",
//	    "revoked": [{"jti", "task_id", "exp"}],
//	    "epochs": [{"dimension": "agent|template|issuer", "key", "before": <unix ms>}],
//	    "controls": [{"kind", "target", "issuer", "active": true}]}
//	GET /v1/revocations/stream?cursor=<id> → text/event-stream of
//	    "event: revoked" data {"jti","task_id","exp"},
//	    "event: epoch" data {"dimension","key","before"} and
//	    "event: control" data {"kind","target","issuer","active"}, each with
//	    an id. Other event types are ignored.
//
// Both take the introspection client's HTTP Basic credentials.

type revokedEntry struct {
	JTI    string `json:"jti"`
	TaskID string `json:"task_id"`
	Exp    int64  `json:"exp"` // unix seconds
}

type epochEntry struct {
	Dimension string `json:"dimension"`
	Key       string `json:"key"`
	Before    int64  `json:"before"` // unix ms
}

// controlEntry is an incident control put (Active) or lifted: a frozen
// agent (Target, narrowed to Issuer when set), a quarantined template or a
// distrusted issuer. While one is in force Valet refuses every path of the
// tasks it covers, and so does the verifier.
type controlEntry struct {
	Kind   string `json:"kind"`
	Target string `json:"target"`
	Issuer string `json:"issuer"`
	Active bool   `json:"active"`
}

const (
	freezeAgent        = "freeze_agent"
	quarantineTemplate = "quarantine_template"
	distrustIssuer     = "distrust_issuer"
)

func (e controlEntry) key() string { return e.Kind + "\x00" + e.Issuer + "\x00" + e.Target }

type snapshot struct {
	Cursor   string         `json:"cursor"`
	Revoked  []revokedEntry `json:"revoked"`
	Epochs   []epochEntry   `json:"epochs"`
	Controls []controlEntry `json:"controls"`
}

// denySet is the local copy of what the feed has said.
type denySet struct {
	mu     sync.RWMutex
	isLive bool
	jtis   map[string]time.Time
	tasks  map[string]time.Time
	epochs map[string]int64 // dimension + "\x00" + key → before (unix ms)
	// controls are the incident controls in force, by controlEntry.key.
	controls map[string]controlEntry
	// cursor is the last event id applied; heard when the stream last spoke.
	cursor string
	heard  time.Time
}

func newDenySet() *denySet {
	return &denySet{jtis: map[string]time.Time{}, tasks: map[string]time.Time{}, epochs: map[string]int64{}, controls: map[string]controlEntry{}}
}

// resumePoint is the id of the last event applied (or the snapshot's
// cursor) and when the stream was last heard from.
func (d *denySet) resumePoint() (string, time.Time) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return d.cursor, d.heard
}

// advance records that the stream was heard at now and, when id is not
// empty, that everything up to id has been applied.
func (d *denySet) advance(id string, now time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if id != "" {
		d.cursor = id
	}
	d.heard = now
}

func (d *denySet) forgetCursor() { d.mu.Lock(); d.cursor = ""; d.mu.Unlock() }

func (d *denySet) live() bool { d.mu.RLock(); defer d.mu.RUnlock(); return d.isLive }

func (d *denySet) setLive(b bool) { d.mu.Lock(); d.isLive = b; d.mu.Unlock() }

func (d *denySet) addRevoked(e revokedEntry) {
	d.mu.Lock()
	defer d.mu.Unlock()
	exp := time.Unix(e.Exp, 0)
	if e.Exp == 0 {
		exp = time.Now().Add(24 * time.Hour) // no exp given: keep it for the longest task life
	}
	if e.JTI != "" {
		d.jtis[e.JTI] = exp
	}
	if e.TaskID != "" && exp.After(d.tasks[e.TaskID]) {
		d.tasks[e.TaskID] = exp
	}
}

func (d *denySet) addEpoch(e epochEntry) {
	d.mu.Lock()
	defer d.mu.Unlock()
	k := e.Dimension + "\x00" + e.Key
	if e.Before > d.epochs[k] {
		d.epochs[k] = e.Before
	}
}

// applyControl puts a control in force or lifts it.
func (d *denySet) applyControl(e controlEntry) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if e.Active {
		d.controls[e.key()] = e
	} else {
		delete(d.controls, e.key())
	}
}

// setControls replaces the controls with a snapshot's: a lift missed
// while the stream was down is not kept.
func (d *denySet) setControls(list []controlEntry) {
	d.mu.Lock()
	defer d.mu.Unlock()
	clear(d.controls)
	for _, e := range list {
		d.controls[e.key()] = e
	}
}

// controlled reports whether a control in force covers c's task, with
// broker.Control.Matches semantics over every link the token names: the
// agent holding it (of issuer agent_issuer), the other agents of its act
// chain and its subject (the user or root agent it acts for), its template
// and agent_issuer. The token does not say the issuer of a link other than
// the holder; when a control could cover such a link only by that issuer
// (a freeze narrowed to an issuer, a distrusted issuer) the answer is
// unsure: the caller asks Valet, which knows the task's chain.
func (d *denySet) controlled(c Claims) (deny, unsure bool) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if len(d.controls) == 0 {
		return false, false
	}
	// The links of unnamed issuer: the subject and the act chain beyond
	// the holder (none when the holder is the subject).
	var others []string
	if len(c.Act) > 0 {
		others = append([]string{c.Subject}, c.Act[1:]...)
	}
	for _, e := range d.controls {
		switch e.Kind {
		case freezeAgent:
			if e.Target == c.Actor() && (e.Issuer == "" || e.Issuer == c.AgentIssuer) {
				return true, false
			}
			for _, who := range others {
				if who == e.Target {
					if e.Issuer == "" {
						return true, false
					}
					unsure = true
				}
			}
		case quarantineTemplate:
			if e.Target == c.Template {
				return true, false
			}
		case distrustIssuer:
			if e.Target == c.AgentIssuer {
				return true, false
			}
			if len(c.Act) > 0 {
				unsure = true // the subject or another agent of the chain may be of that issuer
			}
		}
	}
	return false, unsure
}

// denied reports whether c's token, its task or an epoch covering it was
// revoked.
func (d *denySet) denied(c Claims, now time.Time) bool {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if _, ok := d.jtis[c.ID]; ok {
		return true
	}
	if _, ok := d.tasks[c.TaskID]; ok {
		return true
	}
	iat := c.IssuedAt.UnixMilli()
	for _, k := range []string{
		"agent\x00" + c.AgentIssuer + "/" + c.Actor(),
		"agent\x00" + c.AgentIssuer + "/" + c.Subject,
		"template\x00" + c.Template,
		"issuer\x00" + c.AgentIssuer,
		"all\x00*", // the global epoch Valet sets when Redis lost its data
		// An agent's epoch heard on the SSF stream, by subject alone.
		"agentsub\x00" + c.Actor(),
		"agentsub\x00" + c.Subject,
	} {
		if before, ok := d.epochs[k]; ok && iat < before {
			return true
		}
	}
	return false
}

// prune drops entries whose tokens have expired anyway.
func (d *denySet) prune(now time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for k, exp := range d.jtis {
		if now.After(exp) {
			delete(d.jtis, k)
		}
	}
	for k, exp := range d.tasks {
		if now.After(exp) {
			delete(d.tasks, k)
		}
	}
}

// Run follows the revocation feed until ctx ends: it loads the snapshot,
// then the stream from its cursor, reconnecting after a break (backing off
// up to 5 s). While it is not connected, Check falls back to
// introspection, so a broken feed never lets a revoked token through.
// Run also sends the queued tool-call reports.
func (v *Verifier) Run(ctx context.Context) {
	go v.sendReports(ctx)
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		err := v.follow(ctx)
		if v.deny.live() {
			backoff = 100 * time.Millisecond // it was connected: retry soon
		}
		v.deny.setLive(false)
		if ctx.Err() != nil {
			return
		}
		v.cfg.Logger.WarnContext(ctx, "revocation feed broke; checking by introspection until it is back", "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// Live reports whether the deny set is fed (Check then asks no one).
func (v *Verifier) Live() bool { return v.deny.live() }

// resumeWithin is how recent the last stream read must be for a
// reconnection to resume from the last event id instead of reloading the
// snapshot; the feed keeps 24 h, so this is only about a long outage.
const resumeWithin = time.Minute

func (v *Verifier) follow(ctx context.Context) error {
	cursor, seen := v.deny.resumePoint()
	if cursor == "" || v.cfg.Now().Sub(seen) > resumeWithin {
		snap, err := v.snapshot(ctx)
		if err != nil {
			return err
		}
		for _, e := range snap.Revoked {
			v.deny.addRevoked(e)
		}
		for _, e := range snap.Epochs {
			v.deny.addEpoch(e)
		}
		v.deny.setControls(snap.Controls)
		cursor = snap.Cursor
		v.deny.advance(cursor, v.cfg.Now())
	}
	// A stream client without the overall timeout of HTTPClient: the
	// stream is meant to stay open.
	sc := *v.cfg.HTTPClient
	sc.Timeout = 0
	req, err := http.NewRequestWithContext(ctx, http.MethodGet,
		v.cfg.Issuer+"/v1/revocations/stream?cursor="+url.QueryEscape(cursor), nil)
	if err != nil {
		return err
	}
	req.SetBasicAuth(v.cfg.ClientID, v.cfg.ClientSecret)
	req.Header.Set("Accept", "text/event-stream")
	resp, err := sc.Do(req)
	if err != nil {
		return fmt.Errorf("opening revocation stream: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		v.deny.forgetCursor() // e.g. a cursor the feed no longer holds: reload the snapshot next time
		return fmt.Errorf("opening revocation stream: status %d", resp.StatusCode)
	}
	v.deny.setLive(true)
	v.cfg.Logger.InfoContext(ctx, "revocation feed live", "cursor", cursor)
	lastPrune := time.Now()
	sr := bufio.NewReader(io.LimitReader(resp.Body, 1<<40))
	var event, id string
	var data strings.Builder
	for {
		line, err := sr.ReadString('\n')
		if err != nil {
			return fmt.Errorf("reading revocation stream: %w", err)
		}
		if len(line) > 64<<10 {
			return errors.New("reading revocation stream: line too long")
		}
		line = strings.TrimRight(line, "\r\n")
		switch {
		case line == "":
			v.apply(event, data.String())
			if id != "" {
				v.deny.advance(id, v.cfg.Now()) // after applying: a resume never skips it
			} else {
				v.deny.advance("", v.cfg.Now())
			}
			event, id = "", ""
			data.Reset()
			if time.Since(lastPrune) > time.Minute {
				v.deny.prune(v.cfg.Now())
				lastPrune = time.Now()
			}
		case strings.HasPrefix(line, "id:"):
			id = strings.TrimSpace(strings.TrimPrefix(line, "id:"))
		case strings.HasPrefix(line, "event:"):
			event = strings.TrimSpace(strings.TrimPrefix(line, "event:"))
		case strings.HasPrefix(line, "data:"):
			data.WriteString(strings.TrimSpace(strings.TrimPrefix(line, "data:")))
		}
	}
}

func (v *Verifier) apply(event, data string) {
	switch event {
	case "revoked":
		var e revokedEntry
		if json.Unmarshal([]byte(data), &e) == nil {
			v.deny.addRevoked(e)
		}
	case "epoch":
		var e epochEntry
		if json.Unmarshal([]byte(data), &e) == nil {
			v.deny.addEpoch(e)
		}
	case "control":
		var e controlEntry
		if json.Unmarshal([]byte(data), &e) == nil {
			v.deny.applyControl(e)
		}
	}
}

func (v *Verifier) snapshot(ctx context.Context) (snapshot, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, v.cfg.Issuer+"/v1/revocations", nil)
	if err != nil {
		return snapshot{}, err
	}
	req.SetBasicAuth(v.cfg.ClientID, v.cfg.ClientSecret)
	resp, err := v.cfg.HTTPClient.Do(req)
	if err != nil {
		return snapshot{}, fmt.Errorf("reading revocation snapshot: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return snapshot{}, fmt.Errorf("reading revocation snapshot: status %d", resp.StatusCode)
	}
	var s snapshot
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<20)).Decode(&s); err != nil {
		return snapshot{}, fmt.Errorf("decoding revocation snapshot: %w", err)
	}
	return s, nil
}
