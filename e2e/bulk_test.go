package e2e

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/incident"
)

// seeded is a ledger seeded with many live credentials and their tokens.
type seeded struct {
	hot, cold []string // task tokens
	hotTasks  int
}

// seed records tasks × perTask credentials for agent through the ledger;
// each credential is a real signed task token.
func (e *env) seed(tb testing.TB, agent string, tasks, perTask int) []string {
	tb.Helper()
	now := e.clock.Now()
	p := broker.Principal{Issuer: "test", Subject: agent}
	g := broker.Grant{Tools: []string{"tickets.read"}, Audiences: []string{"https://tools.example.com"}, Scopes: []string{"tickets:read"}}
	out := make([]string, 0, tasks*perTask)
	var mu sync.Mutex
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	for i := 0; i < tasks; i++ {
		wg.Add(1)
		sem <- struct{}{}
		go func(i int) {
			defer func() { <-sem; wg.Done() }()
			task := broker.Task{ID: fmt.Sprintf("tsk_%s%05d", agent, i), State: broker.StateActive, Agent: agent, Issuer: "test",
				Template: "triage", Intent: "seeded", Tools: g.Tools, CreatedAt: now, Deadline: now.Add(10 * time.Minute)}
			creds := make([]broker.Credential, 0, perTask)
			toks := make([]string, 0, perTask)
			for j := 0; j < perTask; j++ {
				m, err := e.tokens.Mint(context.Background(), task, p, g)
				if err != nil {
					tb.Error(err)
					return
				}
				creds = append(creds, m[0].Credential)
				toks = append(toks, m[0].Material["access_token"].(string))
			}
			if err := e.raw.Record(context.Background(), task, creds); err != nil {
				tb.Error(err)
				return
			}
			mu.Lock()
			out = append(out, toks...)
			mu.Unlock()
		}(i)
	}
	wg.Wait()
	if tb.Failed() {
		tb.FailNow()
	}
	return out
}

// activeCount introspects every token (through the service, 16 at a time)
// and counts the active ones.
func (e *env) activeCount(tb testing.TB, toks []string) int {
	var n atomic.Int64
	var wg sync.WaitGroup
	ch := make(chan string)
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for tt := range ch {
				in, err := e.svc.Introspect(context.Background(), tt)
				if err != nil {
					tb.Error(err)
					continue
				}
				if in.Active {
					n.Add(1)
				}
			}
		}()
	}
	for _, tt := range toks {
		ch <- tt
	}
	close(ch)
	wg.Wait()
	return int(n.Load())
}

// crashingJobs is a job store whose broker dies (its context is
// cancelled) right after it saves progress for the n-th time.
type crashingJobs struct {
	incident.JobStore
	n      atomic.Int64
	after  int64
	cancel context.CancelFunc
}

func (c *crashingJobs) SaveJob(ctx context.Context, j incident.RevocationJob) error {
	err := c.JobStore.SaveJob(ctx, j)
	if c.n.Add(1) == c.after {
		c.cancel()
	}
	return err
}

// TestBulkRevoke100k: 100,000 live credentials of one agent across 1,000
// tasks, 10,000 of other agents as controls. The broker running the job
// dies a few batches in; another resumes it. Every hot credential is
// inactive from the moment the request returns (the epoch), the job ends
// every task exactly once, controls are untouched and a rerun changes
// nothing. Set VALET_BULK_TASKS to scale it down (for -race runs).
func TestBulkRevoke100k(t *testing.T) {
	if testing.Short() {
		t.Skip("seeds 110,000 signed credentials; skipped with -short")
	}
	e := newEnv(t, envOptions{incident: true, noAdminResume: true}) // brokers A and B below are the only ones working on jobs
	tasks, per := 1000, 100
	t0 := time.Now()
	hot := e.seed(t, "agent-hot", tasks, per)
	var cold []string
	for i := 0; i < 10; i++ {
		cold = append(cold, e.seed(t, fmt.Sprintf("agent-cold%d", i), 10, per)...)
	}
	t.Logf("seeded %d hot and %d control credentials in %v", len(hot), len(cold), time.Since(t0))
	if n := e.activeCount(t, hot[:1000]); n != 1000 {
		t.Fatalf("%d of 1000 sampled seeded tokens active before revocation", n)
	}

	// Broker A takes the request and dies after its third progress save.
	actx, crash := context.WithCancel(context.Background())
	jobsA := &crashingJobs{JobStore: e.raw, after: 3, cancel: crash}
	brokerA := e.newAdmin(jobsA, 500*time.Millisecond, 100)
	brokerA.Start(actx, time.Hour)
	rita := incident.AdminPrincipal{Issuer: "corp", Subject: "rita", Role: incident.RoleResponder}

	start := time.Now()
	job, err := brokerA.Revoke(context.Background(), rita, incident.Selector{Agent: "agent-hot", Issuer: "test"}, "incident 100k")
	answered := time.Since(start)
	if err != nil {
		t.Fatal(err)
	}
	active := e.activeCount(t, hot)
	allInactive := time.Since(start)
	if active != 0 {
		t.Fatalf("%d hot credentials still active after the revocation answered", active)
	}
	t.Logf("revocation answered in %v; all %d hot credentials checked inactive by %v (introspection pass included)", answered, len(hot), allInactive)

	// Broker A died mid-job.
	<-actx.Done()
	deadline := time.Now().Add(10 * time.Second)
	for brokerA.RunningJobs() > 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	mid, err := e.raw.Job(context.Background(), job.ID)
	if err != nil {
		t.Fatal(err)
	}
	if mid.State != incident.JobRunning || mid.Revoked == 0 || mid.Revoked >= tasks*per {
		t.Fatalf("broker A did not die mid-job: %+v", mid)
	}
	t.Logf("broker A died after revoking %d of %d credentials", mid.Revoked, tasks*per)

	// Broker B starts, finds the unfinished job and resumes it once A's
	// lease has lapsed.
	bctx, stopB := context.WithCancel(context.Background())
	defer stopB()
	brokerB := e.newAdmin(e.raw, 500*time.Millisecond, 100)
	resumed := time.Now()
	brokerB.Start(bctx, 100*time.Millisecond)
	var done incident.RevocationJob
	for deadline := time.Now().Add(60 * time.Second); ; {
		if done, err = brokerB.Job(context.Background(), job.ID); err == nil && done.State == incident.JobDone {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("job not done 60s after restart: %+v %v", done, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("broker B finished the job %v after it started", time.Since(resumed))
	if done.Tasks != tasks || done.Matched != tasks*per || done.Revoked != tasks*per || done.Pending != 0 || done.Failed != 0 {
		t.Fatalf("job after resume: %+v", done)
	}
	got, err := brokerB.Tasks(context.Background(), incident.TaskFilter{Agent: "agent-hot", State: broker.StateActive, Limit: 1000})
	if err != nil || len(got) != 0 {
		t.Fatalf("%d hot tasks still active in the ledger (%v)", len(got), err)
	}
	if n := e.activeCount(t, cold); n != len(cold) {
		t.Fatalf("%d of %d control credentials touched", len(cold)-n, len(cold))
	}

	// A rerun changes nothing.
	writes := e.ledger.writes.Load()
	again, err := brokerB.Revoke(context.Background(), rita, incident.Selector{Agent: "agent-hot", Issuer: "test"}, "incident 100k again")
	if err != nil {
		t.Fatal(err)
	}
	for again.State != incident.JobDone {
		time.Sleep(10 * time.Millisecond)
		again, _ = brokerB.Job(context.Background(), again.ID)
	}
	if again.Matched != 0 || again.Revoked != 0 || e.ledger.writes.Load() != writes {
		t.Fatalf("rerun changed something: %+v, ledger writes %d → %d", again, writes, e.ledger.writes.Load())
	}
	if n := e.activeCount(t, hot); n != 0 {
		t.Fatalf("%d hot credentials active after the rerun", n)
	}
	if n := e.activeCount(t, cold); n != len(cold) {
		t.Fatalf("the rerun touched %d control credentials", len(cold)-n)
	}
}
