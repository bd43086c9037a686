package e2e

import (
	"context"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/internal/redistest"
	"github.com/valet-dev/valet/internal/testkit"
)

// The fault runs of issue 9 ("Reliability under faults"). Each logs its
// figures on a "FIGURE" line and asserts only the invariants, never a
// time. They are long: scripts/faults runs them (VALET_FAULTS=1).

// followRealTime makes the env's clock follow the wall clock until ctx ends.
func followRealTime(ctx context.Context, c *testkit.Clock) {
	set := func() { c.Set(time.Now()) }
	set()
	go func() {
		for ctx.Err() == nil {
			set()
			time.Sleep(time.Millisecond)
		}
	}()
}

// declareMany declares n tasks over HTTP and returns their task tokens.
func declareMany(e *env, n, ttl int) []string {
	toks := make([]string, 0, n)
	for range n {
		_, tok := e.declared("agent-7", ttl)
		toks = append(toks, tok)
	}
	return toks
}

// TestFaultRedisKilled: Redis killed with kill -9, with AOF everysec and
// without persistence. With AOF no recorded credential is lost; without,
// every one is, and none of them stays valid: the generation marker
// notices and introspection denies all of them.
func TestFaultRedisKilled(t *testing.T) {
	faultRun(t)
	const n = 1000
	for _, c := range []struct {
		name string
		opts []redistest.Option
	}{{"aof-everysec", []redistest.Option{redistest.WithAOFEverySec()}}, {"no-persistence", nil}} {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t, envOptions{redis: redistest.Start(t, c.opts...)})
			toks := declareMany(e, n, 600)
			e.redis.Kill()
			e.redis.Restart()
			lost, active := 0, 0
			for _, tok := range toks {
				cl, err := e.tokens.Verify(tok)
				if err != nil {
					t.Fatal(err)
				}
				if _, _, err := e.raw.Credential(context.Background(), cl.ID); err != nil {
					lost++
				}
				if e.introspect(tok)["active"] == true {
					active++
				}
			}
			_, loss := e.raw.LastLoss()
			t.Logf("FIGURE redis kill -9 (%s): %d of %d credentials lost, %d still active, loss detected %v", c.name, lost, n, active, loss)
			if c.opts != nil && (lost != 0 || active != n || loss) {
				t.Errorf("with AOF: %d lost, %d active, loss %v; want 0, %d, false", lost, active, loss, n)
			}
			if c.opts == nil && active != 0 {
				t.Errorf("without persistence: %d lost credentials still active", active)
			}
		})
	}
}

// TestFaultRedisStall: Redis paused for 3 s (CLIENT PAUSE ALL).
// Declarations answer 503 within a bound instead of hanging, and the first
// one after the pause succeeds.
func TestFaultRedisStall(t *testing.T) {
	faultRun(t)
	e := newEnv(t, envOptions{incident: true})
	declareMany(e, 5, 600)
	admin := redis.NewClient(&redis.Options{Addr: e.redis.Addr()})
	defer admin.Close()
	start := time.Now()
	if err := admin.Do(context.Background(), "CLIENT", "PAUSE", "3000", "ALL").Err(); err != nil {
		t.Fatal(err)
	}
	var slowest time.Duration
	codes := map[int]int{}
	for time.Since(start) < 3*time.Second {
		t0 := time.Now()
		r := e.declare(e.identity("agent-7"), `{"template":"triage","intent":"triage ticket 1","tools":["tickets.read"]}`)
		slowest = max(slowest, time.Since(t0))
		codes[r.Status]++
	}
	var recovered time.Duration
	for {
		r := e.declare(e.identity("agent-7"), `{"template":"triage","intent":"triage ticket 1","tools":["tickets.read"]}`)
		if r.Status == http.StatusCreated {
			recovered = time.Since(start) - 3*time.Second
			break
		}
		if time.Since(start) > 15*time.Second {
			t.Fatalf("no declaration succeeded 12 s after the stall: %d %s", r.Status, r.Body)
		}
	}
	t.Logf("FIGURE redis stall 3 s: answers during the stall %v, slowest answer %v, first success %v after the stall ended", codes, slowest.Round(time.Millisecond), recovered.Round(time.Millisecond))
	if codes[http.StatusCreated] > 0 && codes[http.StatusServiceUnavailable] == 0 {
		t.Errorf("the stall did not show: %v", codes)
	}
}

// TestFaultReplicaKilled: replica A records tasks and dies before their
// deadline; replica B's reaper ends every one of them, once.
func TestFaultReplicaKilled(t *testing.T) {
	faultRun(t)
	a := newEnv(t, envOptions{})
	b := newEnv(t, envOptions{redis: a.redis, idp: a.idp, clock: a.clock})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	followRealTime(ctx, a.clock)
	ids := make([]string, 0, 200)
	for range 200 {
		id, _ := a.declared("agent-7", 2)
		ids = append(ids, id)
	}
	// A is gone (its reaper never ran); B reaps.
	go b.reaper.Run(ctx, time.Second)
	time.Sleep(4 * time.Second)
	var worst time.Duration
	ended := 0
	for _, id := range ids {
		task, _, err := b.raw.Task(ctx, id)
		if err == nil && task.State == broker.StateExpired {
			ended++
			worst = max(worst, task.EndedAt.Sub(task.Deadline))
		}
	}
	times := strings.Count(b.audit.String(), `"task.expired"`) + strings.Count(a.audit.String(), `"task.expired"`)
	var creds int
	for _, ev := range b.auditEvents("task.expired") {
		creds += len(ev["credentials"].([]any))
	}
	t.Logf("FIGURE replica killed: %d of %d of its tasks ended by the survivor, worst lag %v, %d batch records naming %d credentials", ended, len(ids), worst.Round(time.Millisecond), times, creds)
	if ended != len(ids) || creds != len(ids) {
		t.Errorf("%d of %d ended, %d credentials in the trail", ended, len(ids), creds)
	}
}

// TestFaultSoak: 5 s tasks declared for VALET_SOAK (default 2m) with the
// reaper running; every task ends, and goroutines and RSS stay flat.
func TestFaultSoak(t *testing.T) {
	faultRun(t)
	d := 2 * time.Minute
	if v := os.Getenv("VALET_SOAK"); v != "" {
		var err error
		if d, err = time.ParseDuration(v); err != nil {
			t.Fatal(err)
		}
	}
	// The audit goes nowhere: the default in-memory sink would grow RSS
	// by itself.
	e := newEnv(t, envOptions{auditor: discardAuditor{}})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	followRealTime(ctx, e.clock)
	go e.reaper.Run(ctx, time.Second)
	var ids []string
	var g0, r0 int
	start := time.Now()
	refused := map[int]int{} // a loaded machine may answer 503: counted, not fatal
	for time.Since(start) < d {
		r := e.declare(e.identity("agent-7"), `{"template":"triage","intent":"soak run","tools":["tickets.read"],"ttl_seconds":5}`)
		if r.Status != http.StatusCreated {
			if refused[r.Status]++; refused[r.Status] == 1 {
				t.Logf("first %d: %s", r.Status, r.Body)
			}
			continue
		}
		ids = append(ids, r.json(t)["task"].(map[string]any)["id"].(string))
		if g0 == 0 && time.Since(start) > 10*time.Second { // after warm-up
			g0, r0 = runtime.NumGoroutine(), rssKB(t)
		}
	}
	g1, r1 := runtime.NumGoroutine(), rssKB(t)
	time.Sleep(7 * time.Second)
	unended := 0
	for _, id := range ids {
		if task, _, err := e.raw.Task(ctx, id); err != nil || task.State != broker.StateExpired {
			unended++
		}
	}
	t.Logf("FIGURE soak %v of 5 s tasks: %d declared (refused: %v), %d not ended; goroutines %d → %d, RSS %d → %d KiB", d, len(ids), refused, unended, g0, g1, r0, r1)
	if unended > 0 {
		t.Errorf("%d tasks never ended", unended)
	}
}

func rssKB(t *testing.T) int {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			n, _ := strconv.Atoi(f[1])
			return n
		}
	}
	return 0
}

type discardAuditor struct{}

func (discardAuditor) Record(context.Context, broker.Event) error { return nil }
