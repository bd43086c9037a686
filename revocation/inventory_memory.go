package revocation

import (
	"context"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/inventory"
)

// DefaultInventoryRetention is how long an agent not seen stays in the
// inventory when no retention is configured (30 days).
const DefaultInventoryRetention = 720 * time.Hour

// MemoryInventory is the inventory.Store held in one process's memory, for
// `valet dev` and tests; agents not seen for its retention vanish by the
// injected clock. It is safe for concurrent use.
type MemoryInventory struct {
	now       func() time.Time
	retention time.Duration

	mu     sync.Mutex
	agents map[string]*inventory.Agent
}

var _ inventory.Store = (*MemoryInventory)(nil)

// NewMemoryInventory returns an empty inventory reading the time from now
// (nil: time.Now) that forgets agents not seen for retention
// (DefaultInventoryRetention if zero or negative).
func NewMemoryInventory(now func() time.Time, retention time.Duration) *MemoryInventory {
	if now == nil {
		now = time.Now
	}
	if retention <= 0 {
		retention = DefaultInventoryRetention
	}
	return &MemoryInventory{now: now, retention: retention, agents: map[string]*inventory.Agent{}}
}

// Record merges sightings (see inventory.Store).
func (m *MemoryInventory) Record(_ context.Context, seen []inventory.Seen) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.sweep()
	for _, s := range seen {
		s.At = s.At.UTC().Truncate(time.Millisecond)
		id := inventory.ID(s.Issuer, s.Subject)
		a := m.agents[id]
		if a == nil {
			a = &inventory.Agent{ID: id, Issuer: s.Issuer, Subject: s.Subject, FirstSeen: s.At, LastSeen: s.At, Labels: maps.Clone(s.Labels)}
			m.agents[id] = a
		}
		if s.At.Before(a.FirstSeen) {
			a.FirstSeen = s.At
		}
		if !s.At.Before(a.LastSeen) {
			a.LastSeen, a.Labels = s.At, maps.Clone(s.Labels)
		}
		if s.Template != "" && !slices.Contains(a.Templates, s.Template) && len(a.Templates) < inventory.MaxTemplates {
			a.Templates = append(a.Templates, s.Template)
			slices.Sort(a.Templates)
		}
	}
	return nil
}

// sweep forgets agents not seen for the retention. m.mu is held.
func (m *MemoryInventory) sweep() {
	cut := m.now().Add(-m.retention)
	maps.DeleteFunc(m.agents, func(_ string, a *inventory.Agent) bool { return a.LastSeen.Before(cut) })
}

// List returns one page (see inventory.Store).
func (m *MemoryInventory) List(_ context.Context, q inventory.Query) (inventory.Page, error) {
	if err := q.Validate(); err != nil {
		return inventory.Page{}, err
	}
	var cur *inventory.Cursor
	if q.Cursor != "" {
		c, err := inventory.DecodeCursor(q.Cursor, q.Sort)
		if err != nil {
			return inventory.Page{}, err
		}
		cur = &c
	}
	m.mu.Lock()
	m.sweep()
	var all []inventory.Agent
	for _, a := range m.agents {
		if q.Matches(*a) && (cur == nil || cur.After(*a)) {
			all = append(all, cloneAgent(*a))
		}
	}
	m.mu.Unlock()
	slices.SortFunc(all, func(a, b inventory.Agent) int { return inventory.Compare(a, b, q.Sort) })
	p := inventory.Page{Agents: all}
	if len(all) > q.Limit {
		p.Agents = all[:q.Limit]
		p.NextCursor = inventory.CursorAfter(p.Agents[q.Limit-1], q.Sort)
	}
	if p.Agents == nil {
		p.Agents = []inventory.Agent{}
	}
	return p, nil
}

// Agent returns one agent (see inventory.Store).
func (m *MemoryInventory) Agent(_ context.Context, id string) (inventory.Agent, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.sweep()
	a, ok := m.agents[id]
	if !ok {
		return inventory.Agent{}, broker.ErrNotFound
	}
	return cloneAgent(*a), nil
}

func cloneAgent(a inventory.Agent) inventory.Agent {
	a.Templates = slices.Clone(a.Templates)
	if a.Templates == nil {
		a.Templates = []string{}
	}
	a.Labels = maps.Clone(a.Labels)
	if a.Labels == nil {
		a.Labels = map[string]string{}
	}
	return a
}
