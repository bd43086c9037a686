package incident

import (
	"context"
	"encoding/base64"
	"errors"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/valet-dev/valet/broker"
)

// TaskFilter narrows GET /v1/admin/tasks.
type TaskFilter struct {
	Agent, Issuer, Template string
	State                   broker.State
	Limit                   int
	// Cursor is the NextCursor of the previous page ("" for the first).
	Cursor string
}

// maxTaskListing bounds the tasks one listing reads from the ledger.
const maxTaskListing = 10000

// Tasks is the first page of TaskPage.
func (a *Admin) Tasks(ctx context.Context, f TaskFilter) ([]broker.Task, error) {
	ts, _, err := a.TaskPage(ctx, f)
	return ts, err
}

// TaskPage lists the tasks that match f, newest first: by created_at,
// then id, both descending. A page holds at most f.Limit (1 to 1000,
// default 100); next is set when more match. One listing reads at most
// maxTaskListing tasks of the ledger.
func (a *Admin) TaskPage(ctx context.Context, f TaskFilter) (page []broker.Task, next string, err error) {
	if f.Limit <= 0 || f.Limit > 1000 {
		f.Limit = 100
	}
	after, err := parseTaskCursor(f.Cursor)
	if err != nil {
		return nil, "", err
	}
	sel := Selector{Agent: f.Agent, Issuer: f.Issuer, Template: f.Template}
	var all []broker.Task
	seen := map[string]bool{} // the index walk may return a task twice
	for cursor, read := "", 0; read < maxTaskListing; {
		ids, next, err := a.jobs.Candidates(ctx, sel, cursor, jobBatch)
		if err != nil {
			return nil, "", broker.Unavailable("the credential ledger", err)
		}
		read += len(ids)
		tasks, _, err := a.jobs.Tasks(ctx, ids)
		if err != nil {
			return nil, "", broker.Unavailable("the credential ledger", err)
		}
		for _, t := range tasks {
			if !seen[t.ID] && sel.Matches(t) && (f.State == "" || t.State == f.State) && (after == nil || taskBefore(*after, t)) {
				seen[t.ID] = true
				all = append(all, t)
			}
		}
		if next == "" {
			break
		}
		cursor = next
	}
	slices.SortFunc(all, func(x, y broker.Task) int {
		if taskBefore(x, y) {
			return -1
		}
		return 1
	})
	if len(all) > f.Limit {
		return all[:f.Limit], taskCursor(all[f.Limit-1]), nil
	}
	if all == nil {
		all = []broker.Task{}
	}
	return all, "", nil
}

// taskBefore reports whether x comes before y in a listing: newer
// created_at first, then the greater id.
func taskBefore(x, y broker.Task) bool {
	if !x.CreatedAt.Equal(y.CreatedAt) {
		return x.CreatedAt.After(y.CreatedAt)
	}
	return x.ID > y.ID
}

// taskCursor is the cursor of the page after last: its sort key.
func taskCursor(last broker.Task) string {
	return base64.RawURLEncoding.EncodeToString([]byte(strconv.FormatInt(last.CreatedAt.UnixNano(), 10) + " " + last.ID))
}

// parseTaskCursor reads a TaskPage cursor: the sort key of the last task
// of the page before.
func parseTaskCursor(c string) (*broker.Task, error) {
	if c == "" {
		return nil, nil
	}
	bad := &broker.Error{Code: broker.CodeInvalid, Message: "cursor is not one Valet gave", Field: "cursor"}
	raw, err := base64.RawURLEncoding.DecodeString(c)
	if err != nil {
		return nil, bad
	}
	ns, id, ok := strings.Cut(string(raw), " ")
	n, err := strconv.ParseInt(ns, 10, 64)
	if !ok || err != nil || id == "" {
		return nil, bad
	}
	return &broker.Task{ID: id, CreatedAt: time.Unix(0, n)}, nil
}

// TaskDetail returns a task and its credential records (ids only).
func (a *Admin) TaskDetail(ctx context.Context, id string) (broker.Task, []broker.Credential, error) {
	t, cs, err := a.ledger.Task(ctx, id)
	switch {
	case errors.Is(err, broker.ErrNotFound):
		return broker.Task{}, nil, broker.Errorf(broker.CodeNotFound, "task %q not found", id)
	case err != nil:
		return broker.Task{}, nil, broker.Unavailable("the credential ledger", err)
	}
	return t, cs, nil
}

// Timeline returns the audit events of a task, in order.
func (a *Admin) Timeline(ctx context.Context, id string) ([]broker.Event, error) {
	evs, err := a.timeline.Timeline(ctx, id)
	if err != nil {
		return nil, broker.Unavailable("the audit stream", err)
	}
	if len(evs) == 0 {
		return nil, broker.Errorf(broker.CodeNotFound, "no audit events for task %q", id)
	}
	return evs, nil
}
