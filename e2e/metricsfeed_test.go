package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/fanout"
	"github.com/valet-dev/valet/internal/testkit"
	"github.com/valet-dev/valet/issuers"
)

// scrape reads /metrics (checked against the contract).
func (e *env) scrape() string {
	e.t.Helper()
	r := e.do(http.MethodGet, "/metrics", "", "", nil, false)
	if r.Status != http.StatusOK {
		e.t.Fatalf("metrics: %d %s", r.Status, r.Body)
	}
	return string(r.Body)
}

// gauge is the value of an unlabelled metric in a scrape, or -1e9 if absent.
func gauge(t *testing.T, scrape, name string) float64 {
	t.Helper()
	m := regexp.MustCompile(`(?m)^` + name + ` (\S+)$`).FindStringSubmatch(scrape)
	if m == nil {
		return -1e9
	}
	v, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

var durationSeries = regexp.MustCompile(`(?m)^valet_http_request_duration_seconds_count\{(.*)\} `)

// TestAttackRandomMethodsAndPaths is issue 9 #3 as an attack: 1,000
// distinct random methods and paths, then 1,000 more, and three 64 KiB
// methods over a raw connection, leave the series of /metrics where they
// were (the method label was the method as sent: 100 methods of 64 KiB
// made /metrics 105 MB).
func TestAttackRandomMethodsAndPaths(t *testing.T) {
	e := newEnv(t, envOptions{incident: true})
	rng := rand.New(rand.NewPCG(9, 3))
	const chars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.~!$&'*+^|"
	word := func(n int) string {
		b := make([]byte, n)
		for i := range b {
			b[i] = chars[rng.IntN(len(chars))]
		}
		return string(b)
	}
	attacker := &http.Client{Timeout: 10 * time.Second}
	attack := func(n int) {
		for i := range n {
			path := []string{"/v1/tasks/" + word(12), "/" + word(1+rng.IntN(40)), "/v1/admin/tasks/" + word(8) + "/timeline", "/metrics"}[i%4]
			req, err := http.NewRequest(word(1+rng.IntN(24)), e.srv.URL+path, nil)
			if err != nil {
				t.Fatal(err)
			}
			resp, err := attacker.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	}
	attack(1000)
	first := durationSeries.FindAllStringSubmatch(e.scrape(), -1)
	attack(1000)
	for i := range 3 {
		conn, err := net.Dial("tcp", e.srv.Listener.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(conn, "%s /v1/tasks/%d HTTP/1.1\r\nHost: valet\r\nConnection: close\r\n\r\n", strings.Repeat(string(rune('K'+i)), 64<<10), i)
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		conn.Close()
	}
	body := e.scrape()
	second := durationSeries.FindAllStringSubmatch(body, -1)
	// The scrape itself adds GET /metrics 2xx once.
	if len(second) > len(first)+1 || len(second) > 60 {
		t.Fatalf("series grew from %d to %d", len(first), len(second))
	}
	for _, s := range second {
		if len(s[1]) > 80 {
			t.Errorf("label set of %d bytes: %.80s…", len(s[1]), s[1])
		}
	}
	t.Logf("%d series, /metrics is %d bytes after 2,003 hostile requests", len(second), len(body))
}

// TestAttackFeedFollowers is issue 9 #4 as an attack: 500 followers of
// the revocation stream stay open while declarations, introspection,
// revocation and the reaper keep working with no 503, every follower
// hears a revocation, and the ledger's Redis pool is not taken by them
// (each follower held a connection of it: with 20 streams open, 19 of 20
// declarations answered 503).
func TestAttackFeedFollowers(t *testing.T) {
	const followers = 500
	e := newEnv(t, envOptions{incident: true, feed: fanout.Limits{MaxSubscribers: followers + 10, MaxPerCaller: followers}})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	tr := &http.Transport{MaxIdleConnsPerHost: -1, DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	streamClient := &http.Client{Transport: tr}

	var mu sync.Mutex
	heard := map[int]string{} // follower → the data of every revoked event, joined
	var opened, done sync.WaitGroup
	opened.Add(followers)
	done.Add(followers)
	errs := make(chan error, followers)
	for i := range followers {
		go func() {
			defer done.Done()
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, e.srv.URL+"/v1/revocations/stream", nil)
			req.SetBasicAuth(clientID, clientSecret)
			resp, err := streamClient.Do(req)
			if err != nil || resp.StatusCode != http.StatusOK {
				if err == nil {
					err = fmt.Errorf("status %d", resp.StatusCode)
					resp.Body.Close()
				}
				errs <- fmt.Errorf("follower %d: %w", i, err)
				opened.Done()
				return
			}
			defer resp.Body.Close()
			sc := bufio.NewScanner(resp.Body)
			sc.Scan() // ": cursor ...": the stream is open
			opened.Done()
			for sc.Scan() {
				if line := sc.Text(); strings.HasPrefix(line, "data: ") {
					mu.Lock()
					heard[i] += line
					mu.Unlock()
				}
			}
		}()
	}
	opened.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if n := e.inc.hub.Subscribers(); n != followers {
		t.Fatalf("%d subscribers, want %d", n, followers)
	}
	// One more of the same client is over its cap: 429 in the error shape.
	if r := e.do(http.MethodGet, "/v1/revocations/stream", "", "", nil, true); r.Status != http.StatusTooManyRequests || r.Header.Get("Retry-After") == "" {
		t.Fatalf("stream %d of one client: %d %s", followers+1, r.Status, r.Body)
	}

	// The broker keeps working: declarations, introspection, revocation.
	var tokens []string
	for i := range 20 {
		_, tt := e.declared(fmt.Sprintf("agent-%d", i), 120)
		tokens = append(tokens, tt)
	}
	for _, tt := range tokens {
		if in := e.introspect(tt); in["active"] != true {
			t.Fatalf("introspection: %v", in)
		}
	}
	claims, err := e.tokens.Verify(tokens[0])
	if err != nil {
		t.Fatal(err)
	}
	rv := e.do(http.MethodPost, "/v1/revoke", "", "application/x-www-form-urlencoded", strings.NewReader("token="+url.QueryEscape(tokens[0])), true)
	if rv.Status != http.StatusOK {
		t.Fatalf("revoke: %d %s", rv.Status, rv.Body)
	}
	// The reaper ends a task past its deadline.
	e.declared("agent-short", 1)
	e.clock.Advance(2 * time.Second)
	if n, err := e.reaper.Once(ctx); err != nil || n != 1 {
		t.Fatalf("reaper: ended %d, %v", n, err)
	}
	// Every follower hears the revocation.
	testkit.EventuallyWithin(t, 20*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		for i := range followers {
			if !strings.Contains(heard[i], claims.ID) {
				return false
			}
		}
		return true
	}, "every follower to hear the revocation")
	// The ledger's pool held none of the streams.
	if st := e.inc.rc.PoolStats(); st.TotalConns > 20 {
		t.Fatalf("the ledger's Redis pool has %d connections with %d followers open", st.TotalConns, followers)
	}
	if v := gauge(t, e.scrape(), "valet_feed_subscribers"); v != followers {
		t.Fatalf("valet_feed_subscribers %v", v)
	}
	cancel()
	done.Wait()
}

// TestLiveGaugeAcrossRestart guards the Low finding: valet_credentials_live
// was granted minus ended per process, so a broker restarted on the same
// Redis counted from 0 and went negative (seen: -29). It is now read from
// the ledger: right after a restart, and the same on every replica.
func TestLiveGaugeAcrossRestart(t *testing.T) {
	k, err := issuers.GenerateSigningKey("EdDSA")
	if err != nil {
		t.Fatal(err)
	}
	key := issuers.SigningKey{Private: k}
	e := newEnv(t, envOptions{incident: true, key: key})
	var ids, tokens []string
	for i := range 3 {
		id, tt := e.declared(fmt.Sprintf("agent-%d", i), 120)
		ids, tokens = append(ids, id), append(tokens, tt)
	}
	if r := e.do(http.MethodPost, "/v1/tasks/"+ids[0]+"/complete", tokens[0], "", nil, false); r.Status != http.StatusOK {
		t.Fatalf("complete: %d %s", r.Status, r.Body)
	}
	s := e.scrape()
	if gauge(t, s, "valet_tasks_live") != 2 || gauge(t, s, "valet_credentials_live") != 2 {
		t.Fatalf("before the restart: tasks %v, credentials %v", gauge(t, s, "valet_tasks_live"), gauge(t, s, "valet_credentials_live"))
	}
	// A new broker on the same Redis (a restart, or another replica), that
	// has granted and ended nothing itself.
	e2 := newEnv(t, envOptions{incident: true, key: key, redis: e.redis, idp: e.idp, clock: e.clock})
	if v := gauge(t, e2.scrape(), "valet_credentials_live"); v != 2 {
		t.Fatalf("after the restart: credentials %v, want 2", v)
	}
	for i := 1; i < 3; i++ {
		if r := e.do(http.MethodPost, "/v1/tasks/"+ids[i]+"/complete", tokens[i], "", nil, false); r.Status != http.StatusOK {
			t.Fatalf("complete: %d %s", r.Status, r.Body)
		}
	}
	e.clock.Advance(6 * time.Second) // past the gauge's cache
	for _, b := range []*env{e, e2} {
		if v := gauge(t, b.scrape(), "valet_credentials_live"); v != 0 {
			t.Fatalf("after ending every task: credentials %v, want 0", v)
		}
	}
}

// TestFeedCatchupIsBoundedPerStream: a follower far behind gets one page
// per stream, then `event: dropped` {"reason":"catchup_limit"} and the end
// of the stream; reconnecting from its last id it gets the rest.
func TestFeedCatchupIsBoundedPerStream(t *testing.T) {
	e := newEnv(t, envOptions{incident: true, feed: fanout.Limits{MaxCatchup: 1}})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	now := e.clock.Now()
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < 1001; i += 8 {
				id := fmt.Sprintf("tsk_catchup_%04d", i)
				task := broker.Task{ID: id, State: broker.StateActive, Agent: "agent-7", Issuer: "test", Template: "triage", Intent: "test",
					Tools: []string{"tickets.read"}, CreatedAt: now, Deadline: now.Add(time.Hour)}
				cred := broker.Credential{ID: "jti-" + id, Kind: broker.KindJWT, TaskID: id, IssuedAt: now, ExpiresAt: now.Add(time.Hour)}
				if err := e.raw.Record(ctx, task, []broker.Credential{cred}); err != nil {
					t.Error(err)
					return
				}
				if _, _, err := e.raw.End(ctx, id, broker.StateRevoked, "test", now); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	seen := map[string]bool{}
	count := func(events <-chan sseEvent) (revoked int, last sseEvent, dropped string) {
		timeout := time.After(20 * time.Second)
		for {
			select {
			case ev, ok := <-events:
				if !ok {
					return revoked, last, dropped
				}
				switch ev.event {
				case "revoked", "epoch": // the ledger generation's start is an epoch entry of the feed
					revoked, last = revoked+1, ev
					seen[ev.data] = true
				case "dropped":
					dropped = ev.data
				}
			case <-timeout:
				t.Fatalf("stream still open after %d events", revoked)
			}
		}
	}
	n, last, dropped := count(e.follow(ctx, "0-0"))
	if n != 1000 || dropped != `{"reason":"catchup_limit"}` {
		t.Fatalf("first stream: %d events, dropped %q", n, dropped)
	}
	rest := e.follow(ctx, last.id)
	select {
	case ev := <-rest:
		if ev.event != "revoked" || seen[ev.data] {
			t.Fatalf("resumed stream starts with %+v, want the one event not yet seen", ev)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("resumed stream is silent")
	}
}
