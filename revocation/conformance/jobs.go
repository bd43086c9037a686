package conformance

import (
	"encoding/json"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/incident"
)

// jobLedger is a ledger that keeps bulk revocation jobs beside its records.
type jobLedger interface {
	broker.Ledger
	incident.JobStore
}

type jobEnv struct {
	ledgerEnv
	s jobLedger
}

// jobCases are the rules of incident.JobStore, one function each.
var jobCases = []namedCase[jobEnv]{
	{"SaveJobThenRead", saveJobThenRead},
	{"UnfinishedListsRunningJobsOnly", unfinishedListsRunningJobsOnly},
	{"LeaseHeldByOneOwner", leaseHeldByOneOwner},
	{"CandidatesCoverMatchingTasks", candidatesCoverMatchingTasks},
	{"TasksLeavesOutUnknown", tasksLeavesOutUnknown},
}

func newJob(id string, now time.Time) incident.RevocationJob {
	return incident.RevocationJob{
		ID: id, State: incident.JobRunning, Selector: incident.Selector{Template: "deploy"},
		By: "admin", Reason: "incident 7", Created: now,
		Epochs:  []broker.Epoch{{Dimension: broker.DimTemplate, Key: "deploy", Before: now}},
		Matched: 3, Revoked: 2, Failed: 1, Cursor: "c1",
	}
}

// saveJobThenRead: a saved job reads back whole; an unknown one is
// ErrNotFound.
func saveJobThenRead(t *testing.T, e jobEnv) {
	j := newJob("job-1", e.clock.Now())
	must(t, e.s.SaveJob(e.ctx, j))
	got, err := e.s.Job(e.ctx, j.ID)
	if err != nil {
		t.Fatalf("Job: %v", err)
	}
	if got.ID != j.ID || got.State != j.State || !sameSelector(got.Selector, j.Selector) || got.By != j.By || got.Reason != j.Reason ||
		!sameMs(got.Created, j.Created) || len(got.Epochs) != 1 || got.Matched != j.Matched || got.Revoked != j.Revoked ||
		got.Failed != j.Failed || got.Cursor != j.Cursor {
		t.Errorf("job differs:\n got  %+v\n want %+v", got, j)
	}
	if _, err := e.s.Job(e.ctx, "no-such-job"); !errors.Is(err, broker.ErrNotFound) {
		t.Errorf("Job(unknown): err = %v, want ErrNotFound", err)
	}
}

// unfinishedListsRunningJobsOnly: a job saved done leaves Unfinished.
func unfinishedListsRunningJobsOnly(t *testing.T, e jobEnv) {
	a, b := newJob("job-a", e.clock.Now()), newJob("job-b", e.clock.Now())
	must(t, e.s.SaveJob(e.ctx, a))
	must(t, e.s.SaveJob(e.ctx, b))
	ids, err := e.s.Unfinished(e.ctx)
	if err != nil || !slices.Equal(ids, []string{"job-a", "job-b"}) {
		t.Fatalf("Unfinished = %v, %v; want both", ids, err)
	}
	b.State, b.Finished = incident.JobDone, e.clock.Now()
	must(t, e.s.SaveJob(e.ctx, b))
	if ids, err := e.s.Unfinished(e.ctx); err != nil || !slices.Equal(ids, []string{"job-a"}) {
		t.Errorf("Unfinished after job-b is done = %v, %v; want [job-a]", ids, err)
	}
}

// leaseHeldByOneOwner: while one broker holds a job's lease no other gets
// it; the holder renews it; a job saved done frees it.
func leaseHeldByOneOwner(t *testing.T, e jobEnv) {
	j := newJob("job-lease", e.clock.Now())
	must(t, e.s.SaveJob(e.ctx, j))
	lease := func(owner string) bool {
		t.Helper()
		ok, err := e.s.Lease(e.ctx, j.ID, owner, time.Minute)
		if err != nil {
			t.Fatalf("Lease %s: %v", owner, err)
		}
		return ok
	}
	if !lease("broker-a") {
		t.Fatal("first Lease refused")
	}
	if lease("broker-b") {
		t.Error("a second owner took a held lease")
	}
	if !lease("broker-a") {
		t.Error("the holder could not renew its lease")
	}
	j.State = incident.JobDone
	must(t, e.s.SaveJob(e.ctx, j))
	if !lease("broker-b") {
		t.Error("the lease of a finished job is still held")
	}
}

// candidatesCoverMatchingTasks: walking Candidates from "" to the end, a
// few at a time, yields every task the selector matches (more may come;
// the caller filters).
func candidatesCoverMatchingTasks(t *testing.T, e jobEnv) {
	now := e.clock.Now()
	var tasks []broker.Task
	for _, r := range []struct{ template, agent string }{
		{"release", "agent-a"}, {"deploy", "agent-a"}, {"release", "agent-a"}, {"audit", "agent-b"}, {"release", "agent-b"},
	} {
		task, creds := newTask(now, "cand", 1)
		task.Template, task.Agent = r.template, r.agent
		e.record(t, task, creds)
		tasks = append(tasks, task)
	}
	for _, sel := range []incident.Selector{{Template: "release"}, {Issuer: "corp-idp"}, {Agent: "agent-a", Issuer: "corp-idp"}, {Agent: "agent-b"}} {
		seen := map[string]bool{}
		cursor := ""
		for range 100 {
			ids, next, err := e.s.Candidates(e.ctx, sel, cursor, 2)
			if err != nil {
				t.Fatalf("Candidates(%+v): %v", sel, err)
			}
			for _, id := range ids {
				seen[id] = true
			}
			if cursor = next; cursor == "" {
				break
			}
		}
		for _, task := range tasks {
			if sel.Matches(task) && !seen[task.ID] {
				t.Errorf("Candidates(%+v) never yielded matching task %s", sel, task.ID)
			}
		}
	}
}

// tasksLeavesOutUnknown: Tasks reads many tasks with their credentials and
// leaves out ids it does not hold.
func tasksLeavesOutUnknown(t *testing.T, e jobEnv) {
	a, aCreds := newTask(e.clock.Now(), "many-a", 2)
	b, bCreds := newTask(e.clock.Now(), "many-b", 0)
	e.record(t, a, aCreds)
	e.record(t, b, bCreds)
	tasks, creds, err := e.s.Tasks(e.ctx, []string{a.ID, "no-such-task", b.ID})
	if err != nil {
		t.Fatalf("Tasks: %v", err)
	}
	if len(tasks) != 2 || len(creds) != 2 {
		t.Fatalf("Tasks returned %d tasks, %d credential lists; want 2 and 2", len(tasks), len(creds))
	}
	wantTask(t, tasks[0], a)
	wantCreds(t, creds[0], aCreds)
	wantTask(t, tasks[1], b)
	wantCreds(t, creds[1], nil)
}

// sameSelector compares two selectors as they are stored: as JSON.
func sameSelector(a, b incident.Selector) bool {
	x, _ := json.Marshal(a)
	y, _ := json.Marshal(b)
	return string(x) == string(y)
}
