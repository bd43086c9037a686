package e2e

import (
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/valet-dev/valet/internal/oidctest"
	"github.com/valet-dev/valet/internal/testkit"
	"github.com/valet-dev/valet/inventory"
)

// teamIdentity is an identity token for agent with a team claim (the
// inventory's owner label).
func (e *env) teamIdentity(agent, team string) string {
	return e.idp.Token(e.t, map[string]any{"sub": agent, "team": team}, oidctest.WithNow(e.clock.Now()))
}

const triageBody = `{"template":"triage","intent":"triage ticket 4521","tools":["tickets.read","kb.search"],"ttl_seconds":600}`

// TestAgentInventory: agents granted tasks appear in the inventory with
// their owner label; a viewer lists and reads them; a responder previews a
// freeze by label, revokes by label (other owners' tasks untouched) and
// freezes by label, after which those agents get nothing.
func TestAgentInventory(t *testing.T) {
	e := newEnv(t, envOptions{incident: true})
	for _, a := range []struct{ sub, team string }{{"agent-pay", "payments"}, {"agent-paycron", "payments"}, {"agent-search", "search"}} {
		if r := e.declare(e.teamIdentity(a.sub, a.team), triageBody); r.Status != http.StatusCreated {
			t.Fatalf("declare %s: %d %s", a.sub, r.Status, r.Body)
		}
	}
	// A denied declaration is no sighting.
	if r := e.declare(e.teamIdentity("intruder", "payments"), triageBody); r.Status != http.StatusForbidden {
		t.Fatalf("declare intruder: %d %s", r.Status, r.Body)
	}
	viewer, responder := e.adminToken("vera", "valet-viewers"), e.adminToken("rita", "valet-responders")

	var page inventory.Page
	testkit.Eventually(t, func() bool {
		r := e.adminDo(http.MethodGet, "/v1/admin/agents?sort=subject&label="+url.QueryEscape("owner=payments"), viewer, "")
		if r.Status != http.StatusOK || json.Unmarshal(r.Body, &page) != nil {
			t.Fatalf("list agents: %d %s", r.Status, r.Body)
		}
		return len(page.Agents) == 2
	}, "the payments agents never reached the inventory")
	if page.Agents[0].Subject != "agent-pay" || page.Agents[1].Subject != "agent-paycron" || page.Agents[0].Labels["owner"] != "payments" ||
		page.Agents[0].Templates[0] != "triage" {
		t.Errorf("agents = %+v", page.Agents)
	}

	// Paging: one agent a page, three pages, then no cursor.
	seen := map[string]bool{}
	for cursor, n := "", 0; ; n++ {
		r := e.adminDo(http.MethodGet, "/v1/admin/agents?limit=1&cursor="+url.QueryEscape(cursor), viewer, "")
		var p inventory.Page
		if r.Status != http.StatusOK || json.Unmarshal(r.Body, &p) != nil || n > 3 {
			t.Fatalf("page %d: %d %s", n, r.Status, r.Body)
		}
		for _, a := range p.Agents {
			seen[a.Subject] = true
		}
		if cursor = p.NextCursor; cursor == "" {
			break
		}
	}
	if len(seen) != 3 || seen["intruder"] {
		t.Errorf("paged through %v, want the 3 agents granted a task", seen)
	}

	r := e.adminDo(http.MethodGet, "/v1/admin/agents/"+page.Agents[0].ID, viewer, "")
	var detail struct {
		Agent     inventory.Agent  `json:"agent"`
		LiveTasks []map[string]any `json:"live_tasks"`
	}
	if r.Status != http.StatusOK || json.Unmarshal(r.Body, &detail) != nil || len(detail.LiveTasks) != 1 || detail.Agent.Subject != "agent-pay" {
		t.Fatalf("agent detail: %d %s", r.Status, r.Body)
	}
	if r := e.adminDo(http.MethodGet, "/v1/admin/agents/agt_00000000000000000000000000000000", viewer, ""); r.Status != http.StatusNotFound {
		t.Errorf("unknown agent: %d %s", r.Status, r.Body)
	}
	if r := e.adminDo(http.MethodGet, "/v1/admin/agents?sort=owner", viewer, ""); r.Status != http.StatusBadRequest {
		t.Errorf("bad sort: %d %s", r.Status, r.Body)
	}

	// A viewer may not freeze; a responder's dry run counts and changes nothing.
	freeze := `{"kind":"freeze_agent","label":"owner=payments","reason":"incident 9","dry_run":true}`
	if r := e.adminDo(http.MethodPost, "/v1/admin/controls", viewer, freeze); r.Status != http.StatusForbidden {
		t.Errorf("viewer freeze: %d %s", r.Status, r.Body)
	}
	r = e.adminDo(http.MethodPost, "/v1/admin/controls", responder, freeze)
	var dry struct {
		Agents []map[string]string `json:"agents"`
		Tasks  int                 `json:"tasks_matched"`
	}
	if r.Status != http.StatusOK || json.Unmarshal(r.Body, &dry) != nil || len(dry.Agents) != 2 || dry.Tasks != 2 {
		t.Fatalf("dry run: %d %s", r.Status, r.Body)
	}
	if r := e.declare(e.teamIdentity("agent-pay", "payments"), triageBody); r.Status != http.StatusCreated {
		t.Fatalf("a dry run froze agent-pay: %d %s", r.Status, r.Body)
	}

	// Revoke by label: the payments agents' tasks end, search's does not.
	r = e.adminDo(http.MethodPost, "/v1/admin/revocations", responder, `{"selector":{"label":"owner=payments"},"reason":"incident 9"}`)
	var job struct {
		Job struct {
			State   string `json:"state"`
			Tasks   int    `json:"tasks_matched"`
			Revoked int    `json:"revoked"`
		} `json:"job"`
	}
	if r.Status != http.StatusOK || json.Unmarshal(r.Body, &job) != nil || job.Job.State != "done" || job.Job.Tasks != 3 {
		t.Fatalf("revoke by label: %d %s", r.Status, r.Body)
	}
	r = e.adminDo(http.MethodGet, "/v1/admin/tasks?state=active", viewer, "")
	var active struct {
		Tasks []struct{ Agent string } `json:"tasks"`
	}
	if r.Status != http.StatusOK || json.Unmarshal(r.Body, &active) != nil || len(active.Tasks) != 1 || active.Tasks[0].Agent != "agent-search" {
		t.Errorf("active tasks after revoke by label: %d %s", r.Status, r.Body)
	}

	// Freeze by label: both payments agents are frozen, search is not.
	r = e.adminDo(http.MethodPost, "/v1/admin/controls", responder, `{"kind":"freeze_agent","label":"owner=payments","reason":"incident 9"}`)
	if r.Status != http.StatusCreated {
		t.Fatalf("freeze by label: %d %s", r.Status, r.Body)
	}
	testkit.Eventually(t, func() bool {
		return e.declare(e.teamIdentity("agent-paycron", "payments"), triageBody).Status == http.StatusForbidden
	}, "agent-paycron was never frozen")
	if m := e.scrape(); !strings.Contains(m, "valet_inventory_sightings_lost_total 0\n") {
		t.Errorf("metrics lack the lost sightings counter at 0:\n%s", grepLines(m, "valet_inventory"))
	}
	if r := e.declare(e.teamIdentity("agent-search", "search"), triageBody); r.Status != http.StatusCreated {
		t.Errorf("agent-search after the payments freeze: %d %s", r.Status, r.Body)
	}
}

// TestAgentInventoryNoAuditNoSighting: a grant whose audit write failed
// (answered 503, nothing issued) is no sighting; the next agent's grant,
// recorded after it, is.
func TestAgentInventoryNoAuditNoSighting(t *testing.T) {
	a := &brokenAuditor{}
	e := newEnv(t, envOptions{incident: true, auditor: a})
	a.failing.Store(true)
	if r := e.declare(e.teamIdentity("agent-unaudited", "payments"), triageBody); r.Status != http.StatusServiceUnavailable {
		t.Fatalf("declare with a failing audit log: %d %s", r.Status, r.Body)
	}
	a.failing.Store(false)
	if r := e.declare(e.teamIdentity("agent-audited", "payments"), triageBody); r.Status != http.StatusCreated {
		t.Fatalf("declare: %d %s", r.Status, r.Body)
	}
	testkit.Eventually(t, func() bool {
		_, err := e.inc.inventory.Agent(t.Context(), inventory.ID("test", "agent-audited"))
		return err == nil
	}, "the audited grant never reached the inventory")
	if _, err := e.inc.inventory.Agent(t.Context(), inventory.ID("test", "agent-unaudited")); err == nil {
		t.Error("the unaudited grant is in the inventory")
	}
}
