package e2e

import (
	"net/http"
	"testing"
)

// TestVaultBulkRevoke: a bulk revocation job, which ends tasks in batches
// (broker.Service.EndMany), still kills a task's Vault token and database
// lease at their source: the PostgreSQL login is refused, and the token
// and lease are gone from Vault, when the job is done.
func TestVaultBulkRevoke(t *testing.T) {
	w := newVaultWorld(t)
	e := w.broker(func(o *envOptions) { o.incident = true })
	d := w.declareDB(e, 300)
	w.mustLogIn(d)
	rita := e.adminToken("rita", "valet-responders")
	r := e.adminDo(http.MethodPost, "/v1/admin/revocations", rita, `{"selector":{"agent":"agent-7"},"reason":"incident 14"}`)
	if r.Status != http.StatusOK {
		t.Fatalf("revoke: %d %s", r.Status, r.Body)
	}
	job := r.json(t)["job"].(map[string]any)
	if job["state"] != "done" || job["tasks_matched"] != 1.0 || job["revoked"] != 3.0 || job["failed"] != 0.0 {
		t.Fatalf("job = %s, want done with the task's 3 credentials revoked", r.Body)
	}
	w.mustBeGone(d)
}
