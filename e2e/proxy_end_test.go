package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/valet-dev/valet/proxy/pgwire"
)

// TestProxyEndsTasksAndSessionsFast is issue 12's measurement: Valet with
// a real Vault issuing dynamic PostgreSQL roles, and `valet proxy` with
// its HTTP side and its PostgreSQL listener. Each trial, with an agent of
// its own (so a freeze ends only its task), declares a task through the
// proxy, calls the upstream through it, opens a PostgreSQL session through
// the listener with the handle as the password and runs `select 1`, then
// ends the task by a bulk revocation, a freeze of the agent or its
// completion through the proxy, in turn. From the trigger's send it
// measures (a) until the next HTTP call through the proxy is refused with
// rule task_ended (polling every 2 ms from the trigger's answer, so (a)
// includes the trigger's own round trip, logged too; 5 s cap) and (b) until the open
// session is closed: a reader blocked on the agent's connection gets EOF.
// The p50/p99/max are logged per trigger and overall; only p99 > 2 s fails
// (the goal is under 1 s).
func TestProxyEndsTasksAndSessionsFast(t *testing.T) {
	skipWithoutVault(t)
	up := newUpstream(t)
	tmpl := strings.ReplaceAll(secretlessTemplates, "ORDERS", strings.TrimPrefix(up.URL, "http://"))
	w := newVaultWorld(t)
	w.withOrders()
	e := w.broker(func(o *envOptions) { o.templates, o.incident = tmpl, true })
	sp := startSecretlessProxy(t, w, e, tmpl, nil)
	rita := sp.adminToken("rita", "valet-responders")

	trials := 100
	if testing.Short() {
		trials = 30
	}
	kinds := []string{"bulk_revoke", "freeze", "complete"}
	refused, closed, answered := map[string][]time.Duration{}, map[string][]time.Duration{}, map[string][]time.Duration{}
	reasons := map[string]int{}
	began := time.Now()
	for i := range trials {
		kind := kinds[i%len(kinds)]
		agent := fmt.Sprintf("agent-end%d", i)
		sp.agent.Store(agent)
		w.syncClock()
		id, handle := declareSecretless(t, sp)
		if r := sp.agentDo(t, http.MethodGet, "/u/orders/orders/4521", handle, nil, nil); r.Status != http.StatusOK {
			t.Fatalf("trial %d: first call %d %s", i, r.Status, r.Body)
		}
		sessionClosed := openSession(t, sp.pgAddr, handle)

		start := time.Now()
		switch kind {
		case "bulk_revoke":
			if r := sp.adminDo(http.MethodPost, "/v1/admin/revocations", rita, `{"selector":{"task_id":"`+id+`"},"reason":"trial"}`); r.Status/100 != 2 {
				t.Fatalf("trial %d: revoke: %d %s", i, r.Status, r.Body)
			}
		case "freeze":
			if r := sp.adminDo(http.MethodPost, "/v1/admin/controls", rita, `{"kind":"freeze_agent","target":"`+agent+`","reason":"trial"}`); r.Status != http.StatusCreated {
				t.Fatalf("trial %d: freeze: %d %s", i, r.Status, r.Body)
			}
		case "complete":
			if r := sp.agentDo(t, http.MethodPost, "/v1/tasks/"+id+"/complete", handle, nil, nil); r.Status != http.StatusOK {
				t.Fatalf("trial %d: complete: %d %s", i, r.Status, r.Body)
			}
		}
		answered[kind] = append(answered[kind], time.Since(start))
		waitTaskEnded(t, fmt.Sprintf("trial %d (%s)", i, kind), start, func() response {
			return sp.agentDo(t, http.MethodGet, "/u/orders/orders/4521", handle, nil, nil)
		})
		refused[kind] = append(refused[kind], time.Since(start))
		select {
		case at := <-sessionClosed:
			closed[kind] = append(closed[kind], at.Sub(start))
		case <-time.After(time.Until(start.Add(5 * time.Second))):
			t.Fatalf("trial %d (%s): the PostgreSQL session is still open 5s after the trigger", i, kind)
		}
		// The listener's account of the session: the proxy closed it
		// (task_ended) or, the role's lease revoked first, the server did.
		select {
		case end := <-sp.ended:
			if end.ev.TaskID != id || (end.ev.EndReason != pgwire.EndTask && end.ev.EndReason != pgwire.EndServer) {
				t.Fatalf("trial %d (%s): the session ended with %q for task %s, want %q or %q for %s",
					i, kind, end.ev.EndReason, end.ev.TaskID, pgwire.EndTask, pgwire.EndServer, id)
			}
			reasons[kind+" "+end.ev.EndReason]++
		case <-time.After(5 * time.Second):
			t.Fatalf("trial %d (%s): the listener did not report the session's end", i, kind)
		}
	}
	elapsed := time.Since(began)

	var allRefused, allClosed []time.Duration
	for _, k := range kinds {
		a, b := refused[k], closed[k]
		allRefused, allClosed = append(allRefused, a...), append(allClosed, b...)
		c := answered[k]
		t.Logf("%-12s n=%3d refused p50=%s p99=%s max=%s | session closed p50=%s p99=%s max=%s | trigger answered p50=%s p99=%s | ends %d task_ended, %d server_closed",
			k, len(a), pct(a, 50), pct(a, 99), pct(a, 100), pct(b, 50), pct(b, 99), pct(b, 100), pct(c, 50), pct(c, 99),
			reasons[k+" "+pgwire.EndTask], reasons[k+" "+pgwire.EndServer])
	}
	t.Logf("%-12s n=%3d refused p50=%s p99=%s max=%s | session closed p50=%s p99=%s max=%s",
		"all", len(allRefused), pct(allRefused, 50), pct(allRefused, 99), pct(allRefused, 100),
		pct(allClosed, 50), pct(allClosed, 99), pct(allClosed, 100))
	t.Logf("%d trials in %s", trials, elapsed.Round(100*time.Millisecond))
	if p := pct(allRefused, 99); p > 2*time.Second {
		t.Errorf("p99 delay to the next refused request %s, want well under 1s (bound 2s)", p)
	}
	if p := pct(allClosed, 99); p > 2*time.Second {
		t.Errorf("p99 delay to the closed session %s, want well under 1s (bound 2s)", p)
	}
}

// declareSecretless declares a task of the secretless template through the
// proxy, with the proxy's current agent, and returns its id and handle.
func declareSecretless(t *testing.T, sp *secretlessProxy) (string, string) {
	t.Helper()
	r := sp.agentDo(t, http.MethodPost, "/v1/tasks", "", strings.NewReader(
		`{"template":"secretless","intent":"count the open orders","tools":["orders.read","db.query"]}`),
		http.Header{"Content-Type": {"application/json"}})
	if r.Status != http.StatusCreated {
		t.Fatalf("declare through the proxy: %d %s", r.Status, r.Body)
	}
	var d struct {
		Task struct {
			ID string `json:"id"`
		} `json:"task"`
		Handle string `json:"handle"`
	}
	if err := json.Unmarshal(r.Body, &d); err != nil || d.Task.ID == "" || !strings.HasPrefix(d.Handle, "vph_") {
		t.Fatalf("the proxy's answer: %v %s", err, r.Body)
	}
	return d.Task.ID, d.Handle
}

// openSession logs in to the proxy's PostgreSQL listener with the handle
// as the password, runs `select 1`, and leaves the session open with a
// reader blocked on its connection; the channel gets the time that reader
// saw the connection closed. The connection is closed at the test's end.
func openSession(t *testing.T, addr, handle string) <-chan time.Time {
	t.Helper()
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := pgconn.ParseConfig(fmt.Sprintf("host=%s port=%s user=agent database=postgres sslmode=disable connect_timeout=5", host, port))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Password = handle
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatalf("logging in through the proxy's listener: %v", err)
	}
	rows, err := conn.Exec(ctx, "select 1").ReadAll()
	if err != nil || len(rows) != 1 || len(rows[0].Rows) != 1 || string(rows[0].Rows[0][0]) != "1" {
		t.Fatalf("select 1 through the proxy: %v %v", rows, err)
	}
	// Take the idle connection from pgconn: nothing else reads it now.
	hc, err := conn.Hijack()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = hc.Conn.Close() })
	closed := make(chan time.Time, 1)
	go func() {
		buf := make([]byte, 512)
		for {
			if _, err := hc.Conn.Read(buf); err != nil { // a server's FATAL notice may come first
				closed <- time.Now()
				return
			}
		}
	}()
	return closed
}
