package e2e

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/revocation"
)

// TestReaperBatchAudit guards issue 9 #10: every reaped task cost a
// ledger round trip and an audit write (each waiting on the audit lock),
// so the reaper fell seconds behind under load. Now a pass ends due tasks
// in batches, with one audit record per batch naming every task and
// credential, and tasks not yet due are left alone.
func TestReaperBatchAudit(t *testing.T) {
	e := newEnv(t, envOptions{})
	var ids []string
	for range 3 {
		id, _ := e.declared("agent-7", 60)
		ids = append(ids, id)
	}
	keep, _ := e.declared("agent-8", 600)
	e.clock.Advance(61 * time.Second)
	writes := e.ledger.writes.Load()
	n, err := e.reaper.Once(context.Background())
	if err != nil || n != 3 {
		t.Fatalf("reaper.Once = %d, %v; want 3", n, err)
	}
	if w := e.ledger.writes.Load() - writes; w > 2 {
		t.Fatalf("%d ledger writes for one batch of 3, want one script (and one empty one)", w)
	}
	evs := e.auditEvents("task.expired")
	if len(evs) != 1 {
		t.Fatalf("%d task.expired records, want one for the batch", len(evs))
	}
	detail := evs[0]["detail"].(map[string]any)
	var got []string
	for _, id := range detail["tasks"].([]any) {
		got = append(got, id.(string))
	}
	slices.Sort(got)
	slices.Sort(ids)
	if !slices.Equal(got, ids) || len(evs[0]["credentials"].([]any)) != 3 {
		t.Fatalf("batch record: %v", evs[0])
	}
	for _, id := range ids {
		if task, _, err := e.raw.Task(context.Background(), id); err != nil || task.State != broker.StateExpired {
			t.Fatalf("reaped task %s: %+v %v", id, task, err)
		}
	}
	if task, _, err := e.raw.Task(context.Background(), keep); err != nil || task.State != broker.StateActive {
		t.Fatalf("task not yet due: %+v %v", task, err)
	}
}

// TestFaultReaperLag measures the reaper's lag (deadline to end) at 1,000
// expiring tasks per second for 10 s, with the reaper running as `valet
// serve` runs it (the reaper every second, batches through the real Redis
// ledger and audit log). Tasks are recorded straight into the ledger so
// that declaring them does not compete for the CPU. It reports p50, p99
// and max lag (issue 9 #10's goal: p99 under 2 s); it asserts only that
// every task was ended. A fault run: scripts/faults runs it.
func TestFaultReaperLag(t *testing.T) {
	faultRun(t)
	e := newEnv(t, envOptions{})
	reapLag(t, e, 1000, 10)
}

// faultRun skips the long fault runs unless VALET_FAULTS is set.
func faultRun(t *testing.T) {
	if os.Getenv("VALET_FAULTS") == "" {
		t.Skip("a long fault run: set VALET_FAULTS=1 (scripts/faults)")
	}
}

func reapLag(b *testing.T, e *env, rate, seconds int) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	followRealTime(ctx, e.clock)
	go e.reaper.Run(ctx, time.Second)

	var mu sync.Mutex
	var ids []string
	start := time.Now()
	total := rate * seconds
	for i := range total {
		at := start.Add(time.Duration(i) * time.Second / time.Duration(rate))
		if d := time.Until(at); d > 0 {
			time.Sleep(d)
		}
		// Each task is due 200 ms after it is recorded.
		task := broker.Task{ID: fmt.Sprintf("tsk_bench_%d", i), State: broker.StateActive, Agent: "agent-b", Issuer: "test",
			Template: "triage", Tools: []string{"tickets.read"}, CreatedAt: time.Now(), Deadline: time.Now().Add(200 * time.Millisecond)}
		cred := broker.Credential{ID: "jti_" + task.ID, Kind: broker.KindJWT, TaskID: task.ID, IssuedAt: task.CreatedAt, ExpiresAt: task.Deadline}
		if err := e.raw.Record(ctx, task, []broker.Credential{cred}); err != nil {
			b.Fatalf("Record: %v", err)
		}
		mu.Lock()
		ids = append(ids, task.ID)
		mu.Unlock()
	}
	recorded := time.Since(start)
	// Let the last ones come due and be reaped.
	time.Sleep(2500 * time.Millisecond)
	var lags []time.Duration
	unended := 0
	for _, id := range ids {
		task, _, err := e.raw.Task(ctx, id)
		if err != nil || task.State != broker.StateExpired {
			unended++
			continue
		}
		lags = append(lags, task.EndedAt.Sub(task.Deadline))
	}
	slices.Sort(lags)
	q := func(p float64) time.Duration {
		if len(lags) == 0 {
			return 0
		}
		return lags[min(len(lags)-1, int(p*float64(len(lags))))]
	}
	b.Logf("FIGURE reaper: %d tasks recorded in %v (%.0f/s, target %d/s): lag p50 %v, p99 %v, max %v; %d not ended", len(ids), recorded.Round(time.Millisecond), float64(len(ids))/recorded.Seconds(), rate, q(0.5), q(0.99), q(1), unended)
	if unended > 0 {
		b.Errorf("%d tasks never ended", unended)
	}
}

// TestReaperOrphanedBatchAudited: a reaper that ends a batch and dies
// before writing its audit record leaves the batch under a lease; once the
// lease expires, another replica's reaper writes the record, once.
func TestReaperOrphanedBatchAudited(t *testing.T) {
	e := newEnv(t, envOptions{})
	id, _ := e.declared("agent-7", 60)
	e.clock.Advance(61 * time.Second)
	rc, err := revocation.NewClient(e.redis.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	// The dying replica: a lease of 0 ms, so the test need not wait 30 s.
	dying, err := revocation.NewRedisLedger(rc, revocation.RedisOptions{Prefix: "valet", ReapLease: time.Nanosecond})
	if err != nil {
		t.Fatal(err)
	}
	if ended, err := dying.EndDue(context.Background(), e.clock.Now(), 256, "deadline passed"); err != nil || len(ended) != 1 {
		t.Fatalf("EndDue on the dying replica: %v %v", ended, err)
	}
	// It dies here: no audit record, no acknowledgement.
	for range 2 {
		if _, err := e.reaper.Once(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	evs := e.auditEvents("task.expired")
	if len(evs) != 1 || evs[0]["task_id"] != id || !strings.Contains(evs[0]["reason"].(string), "another replica") {
		t.Fatalf("audit of the orphaned batch: %v", evs)
	}
	if n, err := rc.ZCard(context.Background(), "valet:reaped").Result(); err != nil || n != 0 {
		t.Fatalf("batches still waiting: %d %v", n, err)
	}
}

// TestReaperBatchOverAuditBound: a reaped batch larger than the audit's
// list bound (broker.MaxAuditList) is recorded in as many records as it
// takes, so no task or credential id is cut from the evidence, and each
// task's timeline shows its expiry even when it ended in a batch of many.
// (Merging the batched reaper with the audit bounds cut a batch of 256
// to its first 64 ids, and timelines of batched tasks showed no expiry.)
func TestReaperBatchOverAuditBound(t *testing.T) {
	e := newEnv(t, envOptions{incident: true})
	const n = broker.MaxAuditList + 36
	var ids []string
	for range n {
		id, _ := e.declared("agent-7", 60)
		ids = append(ids, id)
	}
	e.clock.Advance(61 * time.Second)
	if got, err := e.reaper.Once(context.Background()); err != nil || got != n {
		t.Fatalf("reaper.Once = %d, %v; want %d", got, err, n)
	}
	var tasks []string
	creds := 0
	for _, ev := range e.auditEvents("task.expired") {
		for _, id := range ev["detail"].(map[string]any)["tasks"].([]any) {
			tasks = append(tasks, id.(string))
		}
		creds += len(ev["credentials"].([]any))
	}
	slices.Sort(tasks)
	slices.Sort(ids)
	if !slices.Equal(tasks, ids) || creds != n {
		t.Fatalf("the batch's records name %d tasks (want all %d) and %d credentials", len(tasks), n, creds)
	}
	rita := e.adminToken("rita", "valet-responders")
	r := e.adminDo(http.MethodGet, "/v1/admin/tasks/"+ids[n-1]+"/timeline", rita, "")
	if r.Status != http.StatusOK || !strings.Contains(string(r.Body), `"task.expired"`) {
		t.Fatalf("timeline of a task reaped in a batch: %d %s", r.Status, r.Body)
	}
}
