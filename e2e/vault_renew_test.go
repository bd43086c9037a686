package e2e

import (
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"github.com/valet-dev/valet/broker"
)

// renewDB renews a db task with the agent's identity token and reads its
// fresh credentials as declareDB does.
func (w *vaultWorld) renewDB(e *env, id string, ttl int) dbTask {
	w.t.Helper()
	r := e.renew(id, e.identity("agent-7"), `{"ttl_seconds":`+itoa(ttl)+`}`)
	if r.Status != http.StatusOK {
		w.t.Fatalf("renew db: %d %s", r.Status, r.Body)
	}
	var body struct {
		Task        broker.Task      `json:"task"`
		Credentials []map[string]any `json:"credentials"`
	}
	if err := json.Unmarshal(r.Body, &body); err != nil {
		w.t.Fatal(err)
	}
	d := dbTask{id: body.Task.ID, deadline: body.Task.Deadline, createdAt: body.Task.CreatedAt}
	for _, c := range body.Credentials {
		switch c["kind"] {
		case "jwt":
			d.taskToken = c["access_token"].(string)
		case "vault_token":
			d.accessor, d.vaultTok = c["accessor"].(string), c["token"].(string)
		case "vault_lease":
			d.leaseID, d.username, d.password = c["lease_id"].(string), c["username"].(string), c["password"].(string)
		}
	}
	if d.taskToken == "" || d.accessor == "" || d.leaseID == "" {
		w.t.Fatalf("renewal credentials incomplete: %s", r.Body)
	}
	return d
}

// TestVaultRenew: a renewal mints a new Vault token and database login
// that die at the new deadline at the latest (checked in Vault), beside the
// old ones that keep theirs; completing the task kills both sets.
func TestVaultRenew(t *testing.T) {
	w := newVaultWorld(t)
	e := w.broker()
	old := w.declareDB(e, 300)
	renewed := w.renewDB(e, old.id, 600)
	if !renewed.deadline.After(old.deadline) {
		t.Fatalf("renewed deadline %s is not after %s", renewed.deadline, old.deadline)
	}
	if renewed.accessor == old.accessor || renewed.leaseID == old.leaseID {
		t.Fatal("the renewal handed out the old Vault credentials")
	}
	for _, c := range []struct {
		name     string
		d        dbTask
		deadline time.Time
	}{{"old", old, old.deadline}, {"renewed", renewed, renewed.deadline}} {
		info, err := w.vault.LookupAccessor(c.d.accessor)
		if err != nil {
			t.Fatalf("%s token: %v", c.name, err)
		}
		expire, err := time.Parse(time.RFC3339Nano, info.Data["expire_time"].(string))
		if err != nil || expire.After(c.deadline.Add(2*time.Second)) { // the two clocks read a moment apart
			t.Fatalf("%s token expires at %v, its deadline is %v (%v)", c.name, expire, c.deadline, err)
		}
		if c.name == "renewed" && !expire.After(old.deadline) {
			t.Fatalf("renewed token expires at %v, not after the old deadline %v", expire, old.deadline)
		}
		w.mustLogIn(c.d)
	}
	r := e.do(http.MethodPost, "/v1/tasks/"+old.id+"/complete", renewed.taskToken, "", nil, false)
	if r.Status != http.StatusOK {
		t.Fatalf("complete: %d %s", r.Status, r.Body)
	}
	w.mustBeGone(old)
	w.mustBeGone(renewed)
}
