package stepup

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/valet-dev/valet/broker"
)

// listRecords keeps Records lists (Append, Items) in memory, with their
// until, and fails reads when down; every other method is unused.
type listRecords struct {
	broker.Records
	mu    sync.Mutex
	lists map[string][][]byte
	down  bool
}

func (l *listRecords) Append(_ context.Context, kind, id string, rec []byte, _ time.Time, max int) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	k := kind + "/" + id
	if len(l.lists[k]) >= max {
		return broker.ErrExists
	}
	l.lists[k] = append(l.lists[k], rec)
	return nil
}

func (l *listRecords) Items(_ context.Context, kind, id string, limit int) ([][]byte, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.down {
		return nil, errors.New("redis down")
	}
	return l.lists[kind+"/"+id], nil
}

type eventLog struct {
	mu     sync.Mutex
	events []broker.Event
}

func (e *eventLog) Record(_ context.Context, ev broker.Event) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.events = append(e.events, ev)
	return nil
}

// TestApprovalRequirementIsBoundedAndCleared: a requirement holds for its
// agent only, until its until (then it is over by itself) or a clearing;
// a later requirement after a clearing holds again; an unreadable store is
// an error (the caller answers 503), never "not required"; each step is
// audited.
func TestApprovalRequirementIsBoundedAndCleared(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	recs := &listRecords{lists: map[string][][]byte{}}
	audit := &eventLog{}
	s, err := New(Config{Core: unusedCore{}, Tokens: unusedTokens{}, Auditor: audit, Records: recs, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	required := func(agent string) string {
		t.Helper()
		rule, err := s.ApprovalRequirement(ctx, "idp", agent)
		if err != nil {
			t.Fatal(err)
		}
		return rule
	}
	if required("a") != "" {
		t.Fatal("required before any rule fired")
	}
	if err := s.RequireApproval(ctx, "idp", "a", "burst", "tsk_1", now.Add(10*time.Minute)); err != nil {
		t.Fatal(err)
	}
	if required("a") != "burst" || required("b") != "" {
		t.Fatalf("after the trigger: a %q, b %q", required("a"), required("b"))
	}
	now = now.Add(10 * time.Minute)
	if required("a") != "" {
		t.Fatal("still required once its time is over")
	}
	if err := s.RequireApproval(ctx, "idp", "a", "burst", "", now.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	if err := s.ClearApprovalRequirement(ctx, "approver:ops", "idp", "a", "tsk_2", "approved apr_1"); err != nil {
		t.Fatal(err)
	}
	if required("a") != "" {
		t.Fatal("still required after it was cleared")
	}
	now = now.Add(time.Second)
	if err := s.RequireApproval(ctx, "idp", "a", "night", "", now.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	if required("a") != "night" {
		t.Fatal("a requirement after a clearing does not hold")
	}
	recs.down = true
	if _, err := s.ApprovalRequirement(ctx, "idp", "a"); broker.ErrorCode(err) != broker.CodeUnavailable {
		t.Fatalf("unreadable store: %v, want unavailable", err)
	}
	var types []string
	for _, e := range audit.events {
		types = append(types, e.Type+":"+e.Rule)
	}
	want := []string{"approval.required:burst", "approval.required:burst", "approval.requirement_cleared:burst", "approval.required:night"}
	if len(types) != len(want) {
		t.Fatalf("audit %v, want %v", types, want)
	}
	for i := range want {
		if types[i] != want[i] {
			t.Fatalf("audit %v, want %v", types, want)
		}
	}
	if e := audit.events[2]; e.Actor != "approver:ops" || e.TaskID != "tsk_2" || e.Detail["agent"] != "a" {
		t.Fatalf("cleared event = %+v", e)
	}
}
