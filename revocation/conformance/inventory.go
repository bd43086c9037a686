package conformance

import (
	"context"
	"errors"
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/internal/testkit"
	"github.com/valet-dev/valet/inventory"
)

// NewInventory returns an empty inventory.Store that reads the time from
// clock and forgets agents not seen for the retention given to Inventory.
type NewInventory func(t *testing.T, clock *Clock) inventory.Store

type inventoryEnv struct {
	ctx       context.Context
	s         inventory.Store
	clock     *Clock
	retention time.Duration
}

// inventoryCases are the rules of inventory.Store, one function each.
var inventoryCases = []namedCase[inventoryEnv]{
	{"UnknownAgentIsNotFound", unknownAgentIsNotFound},
	{"FirstAndLastSeenWhateverTheOrder", firstAndLastSeenWhateverTheOrder},
	{"TemplatesUsedAreTheUnion", templatesUsedAreTheUnion},
	{"LabelsAreTheLatestSightings", labelsAreTheLatestSightings},
	{"IssuersKeepAgentsApart", issuersKeepAgentsApart},
	{"AgentNotSeenForTheRetentionIsForgotten", agentNotSeenForTheRetentionIsForgotten},
	{"ListFiltersByEachField", listFiltersByEachField},
	{"ListSortsByEachOrder", listSortsByEachOrder},
	{"CursorPagesThroughEveryAgentOnce", cursorPagesThroughEveryAgentOnce},
	{"CursorOfAnotherSortIsRefused", cursorOfAnotherSortIsRefused},
}

// Inventory runs the inventory.Store suite; retention is the one the store
// was built with (the suite advances the clock past it).
func Inventory(t *testing.T, newStore NewInventory, retention time.Duration) {
	if retention <= 0 {
		t.Fatal("conformance: Inventory needs the store's retention")
	}
	run(t, inventoryCases, func(t *testing.T) inventoryEnv {
		clock := testkit.NewClock(time.Now().Truncate(time.Millisecond).UTC())
		return inventoryEnv{ctx: t.Context(), s: newStore(t, clock), clock: clock, retention: retention}
	})
}

func (e inventoryEnv) record(t *testing.T, seen ...inventory.Seen) {
	t.Helper()
	must(t, e.s.Record(e.ctx, seen))
}

func (e inventoryEnv) agent(t *testing.T, issuer, subject string) inventory.Agent {
	t.Helper()
	a, err := e.s.Agent(e.ctx, inventory.ID(issuer, subject))
	if err != nil {
		t.Fatalf("Agent(%s, %s): %v", issuer, subject, err)
	}
	return a
}

// all follows every page of q and returns the agents in order.
func (e inventoryEnv) all(t *testing.T, q inventory.Query) []inventory.Agent {
	t.Helper()
	var out []inventory.Agent
	for range 1000 {
		p, err := e.s.List(e.ctx, q)
		if err != nil {
			t.Fatalf("List(%+v): %v", q, err)
		}
		out = append(out, p.Agents...)
		if p.NextCursor == "" {
			return out
		}
		q.Cursor = p.NextCursor
	}
	t.Fatal("List never ended")
	return nil
}

func subjects(as []inventory.Agent) []string {
	out := make([]string, len(as))
	for i, a := range as {
		out[i] = a.Subject
	}
	return out
}

// unknownAgentIsNotFound: an agent never seen is broker.ErrNotFound, and an
// empty inventory lists nothing.
func unknownAgentIsNotFound(t *testing.T, e inventoryEnv) {
	if _, err := e.s.Agent(e.ctx, inventory.ID("idp", "nobody")); !errors.Is(err, broker.ErrNotFound) {
		t.Errorf("Agent(nobody) = %v, want ErrNotFound", err)
	}
	if got := e.all(t, inventory.Query{}); len(got) != 0 {
		t.Errorf("List = %v, want none", got)
	}
}

// firstAndLastSeenWhateverTheOrder: first_seen is the earliest sighting and
// last_seen the latest, even when sightings arrive out of order.
func firstAndLastSeenWhateverTheOrder(t *testing.T, e inventoryEnv) {
	t0 := e.clock.Now()
	e.record(t, inventory.Seen{Issuer: "idp", Subject: "a", Template: "deploy", At: t0.Add(time.Minute)})
	e.record(t, inventory.Seen{Issuer: "idp", Subject: "a", Template: "deploy", At: t0.Add(2 * time.Minute)},
		inventory.Seen{Issuer: "idp", Subject: "a", Template: "deploy", At: t0})
	a := e.agent(t, "idp", "a")
	if !a.FirstSeen.Equal(t0) || !a.LastSeen.Equal(t0.Add(2*time.Minute)) {
		t.Errorf("first, last = %v, %v; want %v, %v", a.FirstSeen, a.LastSeen, t0, t0.Add(2*time.Minute))
	}
	if a.ID != inventory.ID("idp", "a") || a.Issuer != "idp" || a.Subject != "a" {
		t.Errorf("agent = %+v", a)
	}
}

// templatesUsedAreTheUnion: every template an agent used is listed once,
// sorted.
func templatesUsedAreTheUnion(t *testing.T, e inventoryEnv) {
	now := e.clock.Now()
	e.record(t, inventory.Seen{Issuer: "idp", Subject: "a", Template: "triage", At: now},
		inventory.Seen{Issuer: "idp", Subject: "a", Template: "deploy", At: now.Add(time.Second)})
	e.record(t, inventory.Seen{Issuer: "idp", Subject: "a", Template: "triage", At: now.Add(2 * time.Second)})
	if got := e.agent(t, "idp", "a").Templates; !slices.Equal(got, []string{"deploy", "triage"}) {
		t.Errorf("templates = %v, want [deploy triage]", got)
	}
}

// labelsAreTheLatestSightings: a later sighting's labels replace the
// earlier ones (a label it lacks is gone); an older sighting's do not.
func labelsAreTheLatestSightings(t *testing.T, e inventoryEnv) {
	now := e.clock.Now()
	e.record(t, inventory.Seen{Issuer: "idp", Subject: "a", Template: "deploy", At: now, Labels: map[string]string{"owner": "payments", "env": "prod"}})
	e.record(t, inventory.Seen{Issuer: "idp", Subject: "a", Template: "deploy", At: now.Add(time.Second), Labels: map[string]string{"owner": "search"}})
	e.record(t, inventory.Seen{Issuer: "idp", Subject: "a", Template: "deploy", At: now.Add(-time.Second), Labels: map[string]string{"owner": "old"}})
	if got := e.agent(t, "idp", "a").Labels; !maps.Equal(got, map[string]string{"owner": "search"}) {
		t.Errorf("labels = %v, want owner=search only", got)
	}
}

// issuersKeepAgentsApart: one subject under two issuers is two agents.
func issuersKeepAgentsApart(t *testing.T, e inventoryEnv) {
	now := e.clock.Now()
	e.record(t, inventory.Seen{Issuer: "idp-a", Subject: "bot", Template: "deploy", At: now},
		inventory.Seen{Issuer: "idp-b", Subject: "bot", Template: "triage", At: now.Add(time.Second)})
	if a, b := e.agent(t, "idp-a", "bot"), e.agent(t, "idp-b", "bot"); a.ID == b.ID || !slices.Equal(a.Templates, []string{"deploy"}) || !slices.Equal(b.Templates, []string{"triage"}) {
		t.Errorf("agents mixed up: %+v and %+v", a, b)
	}
	if got := e.all(t, inventory.Query{Issuer: "idp-b"}); len(got) != 1 || got[0].Issuer != "idp-b" {
		t.Errorf("List(issuer idp-b) = %+v", got)
	}
}

// agentNotSeenForTheRetentionIsForgotten: past last seen plus the
// retention the agent is neither read nor listed; seen again, it starts
// anew.
func agentNotSeenForTheRetentionIsForgotten(t *testing.T, e inventoryEnv) {
	now := e.clock.Now()
	e.record(t, inventory.Seen{Issuer: "idp", Subject: "old", Template: "deploy", At: now},
		inventory.Seen{Issuer: "idp", Subject: "fresh", Template: "deploy", At: now.Add(e.retention / 2)})
	e.clock.Advance(e.retention - time.Millisecond)
	e.agent(t, "idp", "old") // still there
	e.clock.Advance(2 * time.Millisecond)
	if _, err := e.s.Agent(e.ctx, inventory.ID("idp", "old")); !errors.Is(err, broker.ErrNotFound) {
		t.Errorf("Agent(old) after the retention = %v, want ErrNotFound", err)
	}
	if got := subjects(e.all(t, inventory.Query{})); !slices.Equal(got, []string{"fresh"}) {
		t.Errorf("List after the retention = %v, want [fresh]", got)
	}
	again := e.clock.Now()
	e.record(t, inventory.Seen{Issuer: "idp", Subject: "old", Template: "triage", At: again})
	if a := e.agent(t, "idp", "old"); !a.FirstSeen.Equal(again) {
		t.Errorf("first seen of an agent seen again = %v, want %v", a.FirstSeen, again)
	}
}

// listFiltersByEachField: issuer, subject prefix, template, label and
// seen-since each narrow the listing, and together all must match.
func listFiltersByEachField(t *testing.T, e inventoryEnv) {
	now := e.clock.Now()
	pay := map[string]string{"owner": "payments"}
	e.record(t,
		inventory.Seen{Issuer: "idp-a", Subject: "ci-build", Template: "deploy", At: now, Labels: pay},
		inventory.Seen{Issuer: "idp-a", Subject: "ci-test", Template: "triage", At: now.Add(time.Second), Labels: map[string]string{"owner": "search"}},
		inventory.Seen{Issuer: "idp-b", Subject: "support", Template: "deploy", At: now.Add(2 * time.Second), Labels: pay},
	)
	for _, c := range []struct {
		name string
		q    inventory.Query
		want []string
	}{
		{"issuer", inventory.Query{Issuer: "idp-a", Sort: inventory.SortSubject}, []string{"ci-build", "ci-test"}},
		{"subject prefix", inventory.Query{SubjectPrefix: "ci-", Sort: inventory.SortSubject}, []string{"ci-build", "ci-test"}},
		{"template", inventory.Query{Template: "deploy", Sort: inventory.SortSubject}, []string{"ci-build", "support"}},
		{"label", inventory.Query{LabelKey: "owner", LabelValue: "payments", Sort: inventory.SortSubject}, []string{"ci-build", "support"}},
		{"label of no one", inventory.Query{LabelKey: "owner", LabelValue: "nobody"}, nil},
		{"seen since", inventory.Query{SeenSince: now.Add(time.Second), Sort: inventory.SortSubject}, []string{"ci-test", "support"}},
		{"all together", inventory.Query{Issuer: "idp-a", SubjectPrefix: "ci-", Template: "deploy", LabelKey: "owner", LabelValue: "payments"}, []string{"ci-build"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := subjects(e.all(t, c.q)); !slices.Equal(got, c.want) && !(len(got) == 0 && len(c.want) == 0) {
				t.Errorf("List = %v, want %v", got, c.want)
			}
		})
	}
}

// listSortsByEachOrder: last_seen and first_seen list newest first,
// subject A to Z.
func listSortsByEachOrder(t *testing.T, e inventoryEnv) {
	now := e.clock.Now()
	// b first seen earliest, last seen latest; c in the middle; a newest.
	e.record(t,
		inventory.Seen{Issuer: "idp", Subject: "b", Template: "deploy", At: now},
		inventory.Seen{Issuer: "idp", Subject: "c", Template: "deploy", At: now.Add(time.Second)},
		inventory.Seen{Issuer: "idp", Subject: "a", Template: "deploy", At: now.Add(2 * time.Second)},
		inventory.Seen{Issuer: "idp", Subject: "b", Template: "deploy", At: now.Add(3 * time.Second)},
	)
	for sort, want := range map[inventory.Sort][]string{
		inventory.SortLastSeen:  {"b", "a", "c"},
		inventory.SortFirstSeen: {"a", "c", "b"},
		inventory.SortSubject:   {"a", "b", "c"},
		"":                      {"b", "a", "c"},
	} {
		if got := subjects(e.all(t, inventory.Query{Sort: sort})); !slices.Equal(got, want) {
			t.Errorf("sort %q = %v, want %v", sort, got, want)
		}
	}
}

// cursorPagesThroughEveryAgentOnce: pages of 3 over 8 agents (some seen
// in the same millisecond) return each agent exactly once, in order, and
// the last page has no next cursor.
func cursorPagesThroughEveryAgentOnce(t *testing.T, e inventoryEnv) {
	now := e.clock.Now()
	var seen []inventory.Seen
	for i, s := range []string{"h", "g", "f", "e", "d", "c", "b", "a"} {
		seen = append(seen, inventory.Seen{Issuer: "idp", Subject: s, Template: "deploy", At: now.Add(time.Duration(i/2) * time.Second)})
	}
	e.record(t, seen...)
	for _, sort := range []inventory.Sort{inventory.SortLastSeen, inventory.SortFirstSeen, inventory.SortSubject} {
		whole := e.all(t, inventory.Query{Sort: sort, Limit: inventory.MaxPage})
		paged := e.all(t, inventory.Query{Sort: sort, Limit: 3})
		if len(whole) != 8 || !slices.Equal(subjects(paged), subjects(whole)) {
			t.Errorf("sort %s: paged %v, whole %v", sort, subjects(paged), subjects(whole))
		}
		if !slices.IsSortedFunc(whole, func(a, b inventory.Agent) int { return inventory.Compare(a, b, sort) }) {
			t.Errorf("sort %s: %v is not in order", sort, subjects(whole))
		}
	}
	first, err := e.s.List(e.ctx, inventory.Query{Sort: inventory.SortSubject, Limit: 3})
	if err != nil || len(first.Agents) != 3 || first.NextCursor == "" {
		t.Fatalf("first page = %+v, %v; want 3 agents and a next cursor", first, err)
	}
}

// cursorOfAnotherSortIsRefused: a cursor is good only for its own sort,
// and a forged one is refused.
func cursorOfAnotherSortIsRefused(t *testing.T, e inventoryEnv) {
	now := e.clock.Now()
	e.record(t, inventory.Seen{Issuer: "idp", Subject: "a", At: now}, inventory.Seen{Issuer: "idp", Subject: "b", At: now})
	p, err := e.s.List(e.ctx, inventory.Query{Sort: inventory.SortSubject, Limit: 1})
	if err != nil || p.NextCursor == "" {
		t.Fatalf("List = %+v, %v", p, err)
	}
	for _, q := range []inventory.Query{{Sort: inventory.SortLastSeen, Cursor: p.NextCursor}, {Cursor: "not-a-cursor"}} {
		if _, err := e.s.List(e.ctx, q); err == nil {
			t.Errorf("List(cursor %q, sort %q) = nil error, want refused", q.Cursor, q.Sort)
		}
	}
}
