package incident

import (
	"context"
	"time"

	"github.com/valet-dev/valet/broker"
)

// JobState is where a bulk revocation job is.
type JobState string

const (
	JobRunning JobState = "running"
	JobDone    JobState = "done"
)

// RevocationJob is a bulk revocation: its selector, its progress and where
// to resume. Counts are of credentials unless named for tasks.
type RevocationJob struct {
	ID       string    `json:"id"`
	State    JobState  `json:"state"`
	Selector Selector  `json:"selector"`
	By       string    `json:"by"`
	Reason   string    `json:"reason,omitempty"`
	Created  time.Time `json:"created_at"`
	Finished time.Time `json:"finished_at,omitzero"`
	// Epochs are the revoked-before epochs the job set when it started:
	// everything they cover was inactive at introspection from Created on.
	Epochs  []broker.Epoch `json:"epochs,omitempty"`
	Tasks   int            `json:"tasks_matched"`
	Matched int            `json:"matched"`
	Revoked int            `json:"revoked"`
	Failed  int            `json:"failed"`
	Pending int            `json:"pending"`
	// Cursor is the job's place in its enumeration, opaque to the domain.
	Cursor string `json:"cursor,omitempty"`
	// LastError is the last error that interrupted the job (it is retried).
	LastError string `json:"last_error,omitempty"`
}

// JobStore keeps revocation jobs and enumerates the tasks they cover.
// Implementations must be safe for concurrent use by several brokers.
type JobStore interface {
	SaveJob(ctx context.Context, j RevocationJob) error
	Job(ctx context.Context, id string) (RevocationJob, error)
	// Unfinished lists the ids of jobs still running (to resume on start).
	Unfinished(ctx context.Context) ([]string, error)
	// Lease takes or renews the right to run job id for ttl; false means
	// another broker holds it.
	Lease(ctx context.Context, id, owner string, ttl time.Duration) (bool, error)
	// Candidates returns up to about limit ids of tasks that may match sel
	// (a superset: the caller filters), starting at cursor ("" is the
	// start), and the cursor of the next batch ("" when there is none).
	Candidates(ctx context.Context, sel Selector, cursor string, limit int) ([]string, string, error)
	// Tasks reads many tasks and their credentials in one round trip;
	// tasks that no longer exist are left out.
	Tasks(ctx context.Context, ids []string) ([]broker.Task, [][]broker.Credential, error)
}

// TimelineReader reads one task's audit events in order.
type TimelineReader interface {
	Timeline(ctx context.Context, taskID string) ([]broker.Event, error)
}
