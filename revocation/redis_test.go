package revocation_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/internal/redistest"
	"github.com/valet-dev/valet/revocation"
	"github.com/valet-dev/valet/revocation/conformance"
)

// newClient connects to srv the way production does.
func newClient(t testing.TB, url string) *redis.Client {
	t.Helper()
	c, err := revocation.NewClient(url)
	if err != nil {
		t.Fatalf("NewClient: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func newRedisLedger(t testing.TB, c redis.UniversalClient, opts revocation.RedisOptions) *revocation.RedisLedger {
	t.Helper()
	l, err := revocation.NewRedisLedger(c, opts)
	if err != nil {
		t.Fatalf("NewRedisLedger: %v", err)
	}
	return l
}

// redisOptions: the Redis ledger expires by Redis's own clock, so its
// expiry is tested by its TTLs.
var redisOptions = conformance.Options{RealClockExpiry: "TestRedisEveryKeyExpires (the TTL of every key)"}

// redisLedgers returns a constructor of Redis ledgers on one server, each
// in a fresh key space.
func redisLedgers(t *testing.T) func(t *testing.T, clock *conformance.Clock) *revocation.RedisLedger {
	c := newClient(t, redistest.Start(t).URL())
	var n atomic.Int64
	return func(t *testing.T, clock *conformance.Clock) *revocation.RedisLedger {
		return newRedisLedger(t, c, revocation.RedisOptions{Prefix: fmt.Sprint("case", n.Add(1)), Now: clock.Now, Logger: quiet})
	}
}

// quiet drops the ledger's log lines (each fresh key space logs a new
// generation).
var quiet = slog.New(slog.DiscardHandler)

func TestRedisLedgerConformance(t *testing.T) {
	newLedger := redisLedgers(t)
	conformance.Ledger(t, func(t *testing.T, clock *conformance.Clock) broker.Ledger {
		return newLedger(t, clock)
	}, redisOptions)
}

func TestNewRedisLedgerRejects(t *testing.T) {
	if _, err := revocation.NewRedisLedger(nil, revocation.RedisOptions{}); err == nil {
		t.Error("nil client accepted")
	}
	c := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"})
	defer c.Close()
	if _, err := revocation.NewRedisLedger(c, revocation.RedisOptions{Retention: -time.Second}); err == nil {
		t.Error("negative retention accepted")
	}
}

func TestDuplicateRecordIsErrDuplicate(t *testing.T) {
	c := newClient(t, redistest.Start(t).URL())
	ledgers := map[string]broker.Ledger{
		"redis":  newRedisLedger(t, c, revocation.RedisOptions{}),
		"memory": revocation.NewMemoryLedger(time.Now, time.Hour),
	}
	for name, l := range ledgers {
		t.Run(name, func(t *testing.T) {
			ctx := t.Context()
			now := time.Now()
			task := activeTask("dup", now, time.Hour)
			creds := []broker.Credential{jwt(task.ID, "jti-dup", now.Add(time.Minute))}
			if err := l.Record(ctx, task, creds); err != nil {
				t.Fatalf("Record: %v", err)
			}
			if err := l.Record(ctx, task, creds); !errors.Is(err, revocation.ErrDuplicate) {
				t.Errorf("same task again: err = %v, want ErrDuplicate", err)
			}
			other := activeTask("dup-other", now, time.Hour)
			creds[0].TaskID = other.ID
			if err := l.Record(ctx, other, creds); !errors.Is(err, revocation.ErrDuplicate) {
				t.Errorf("same credential in another task: err = %v, want ErrDuplicate", err)
			}
		})
	}
}

// TestRedisEveryKeyExpires checks the key layout and that every key the
// ledger writes carries a TTL no longer than the contract allows and not
// shorter than it promises.
func TestRedisEveryKeyExpires(t *testing.T) {
	ctx := t.Context()
	c := newClient(t, redistest.Start(t).URL())
	const retention = 2 * time.Hour
	l := newRedisLedger(t, c, revocation.RedisOptions{Prefix: "ttl", Retention: retention})

	start := time.Now()
	// long and short share agent, template and issuer; long is recorded
	// first, so the index TTLs must not shrink to short's deadline.
	long := activeTask("long", start, 3*time.Hour)
	long.Agent = "ci:bot" // ':' is escaped in key names
	longCreds := []broker.Credential{
		jwt(long.ID, "jti-long-1", start.Add(2*time.Hour)),
		jwt(long.ID, "jti-long-2", start.Add(3*time.Hour)),
	}
	short := activeTask("short", start, 20*time.Minute)
	short.Agent = long.Agent
	shortCreds := []broker.Credential{jwt(short.ID, "jti-short", start.Add(10*time.Minute))}
	// stale ends after its only credential expired: its deny entry still
	// lasts a second.
	stale := activeTask("stale", start, time.Hour)
	stale.Template = "audit"
	staleCreds := []broker.Credential{jwt(stale.ID, "jti-stale", start.Add(-time.Minute))}

	for _, r := range []struct {
		t broker.Task
		c []broker.Credential
	}{{long, longCreds}, {short, shortCreds}, {stale, staleCreds}} {
		if err := l.Record(ctx, r.t, r.c); err != nil {
			t.Fatalf("Record %s: %v", r.t.ID, err)
		}
	}
	for _, id := range []string{long.ID, stale.ID} {
		if _, _, err := l.End(ctx, id, broker.StateRevoked, "test", time.Now()); err != nil {
			t.Fatalf("End %s: %v", id, err)
		}
	}

	after := func(d time.Duration) time.Time { return start.Add(d) }
	want := map[string]time.Time{ // key → when it should expire
		"ttl:task:task-long":             after(3*time.Hour + retention),
		"ttl:task:task-long:creds":       after(3*time.Hour + retention),
		"ttl:cred:jti-long-1":            after(3*time.Hour + retention),
		"ttl:cred:jti-long-2":            after(3*time.Hour + retention),
		"ttl:deny:jti-long-1":            after(2 * time.Hour),
		"ttl:deny:jti-long-2":            after(3 * time.Hour),
		"ttl:task:task-short":            after(20*time.Minute + retention),
		"ttl:task:task-short:creds":      after(20*time.Minute + retention),
		"ttl:cred:jti-short":             after(20*time.Minute + retention),
		"ttl:task:task-stale":            after(time.Hour + retention),
		"ttl:task:task-stale:creds":      after(time.Hour + retention),
		"ttl:cred:jti-stale":             after(time.Hour + retention),
		"ttl:deny:jti-stale":             time.Now().Add(time.Second),
		"ttl:deadlines":                  after(3*time.Hour + retention),
		"ttl:idx:agent:corp:ci%3Abot":    after(3*time.Hour + retention),
		"ttl:idx:agent:corp:agent-stale": after(time.Hour + retention),
		"ttl:idx:template:deploy":        after(3*time.Hour + retention),
		"ttl:idx:template:audit":         after(time.Hour + retention),
		"ttl:idx:issuer:corp":            after(3*time.Hour + retention),
		// The revocation feed lives as long as the longest credential
		// it could name, from its last entry.
		"ttl:revocations": time.Now().Add(broker.EpochTTL),
		// The generation marker and the epochs hash holding its global
		// epoch (generation.go) live as long as any credential could.
		"ttl:generation": time.Now().Add(broker.EpochTTL),
		"ttl:epochs":     time.Now().Add(broker.EpochTTL),
	}

	var keys []string
	iter := c.Scan(ctx, 0, "*", 100).Iterator()
	for iter.Next(ctx) {
		keys = append(keys, iter.Val())
	}
	if err := iter.Err(); err != nil {
		t.Fatalf("SCAN: %v", err)
	}
	slices.Sort(keys)
	if wantKeys := slices.Sorted(maps.Keys(want)); !slices.Equal(keys, wantKeys) {
		t.Fatalf("keys in redis:\n%s\nwant:\n%s", strings.Join(keys, "\n"), strings.Join(wantKeys, "\n"))
	}
	for _, k := range keys {
		ttl, err := c.PTTL(ctx, k).Result()
		if err != nil {
			t.Fatalf("PTTL %s: %v", k, err)
		}
		// Upper bound: computed from before anything was written. Lower
		// bound: from now, with a second's slack for the test's own work.
		hi, lo := want[k].Sub(start), time.Until(want[k])-time.Second
		if strings.Contains(k, ":idx:") || strings.HasSuffix(k, ":deadlines") {
			hi += time.Minute // index expiries are rounded up to the minute (recordLua)
		}
		if ttl <= 0 || ttl > hi || ttl < lo {
			t.Errorf("PTTL %s = %v, want in (0, %v] and ≥ %v", k, ttl, hi, lo)
		}
	}
}

func TestRedisOneRoundTripEach(t *testing.T) {
	ctx := t.Context()
	c := newClient(t, redistest.Start(t).URL())
	hook := &redistest.TripCounter{}
	c.AddHook(hook)
	l := newRedisLedger(t, c, revocation.RedisOptions{})

	now := time.Now()
	task := activeTask("trips", now, time.Hour)
	creds := []broker.Credential{
		jwt(task.ID, "jti-trips-1", now.Add(time.Minute)),
		jwt(task.ID, "jti-trips-2", now.Add(time.Minute)),
	}
	tests := []struct {
		name string
		op   func() error
	}{
		{"Record", func() error { return l.Record(ctx, task, creds) }},
		{"Task", func() error { _, _, err := l.Task(ctx, task.ID); return err }},
		{"Credential", func() error { _, _, err := l.Credential(ctx, creds[0].ID); return err }},
		{"Due", func() error { _, err := l.Due(ctx, now, 10); return err }},
		{"End", func() error { _, _, err := l.End(ctx, task.ID, broker.StateCompleted, "done", now); return err }},
	}
	// Open the connection first: its handshake (HELLO, CLIENT SETINFO)
	// passes through the hooks too, and is not the ledger's doing.
	if err := l.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	hook.Take()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.op(); err != nil {
				t.Fatalf("%s: %v", tt.name, err)
			}
			if calls := hook.Take(); len(calls) != 1 {
				t.Errorf("%s took %d round trips, want 1: %v", tt.name, len(calls), calls)
			}
		})
	}
}

// TestRedisUnavailable: with Redis dead or hung, every operation fails fast
// with ErrUnavailable and writes nothing; once Redis is back, all works. A
// hung Redis is bounded by the caller's deadline (the HTTP layer's timeout),
// which the client honours.
func TestRedisUnavailable(t *testing.T) {
	const bound = 2 * time.Second // a bound on a failure path, not a benchmark

	srv := redistest.Start(t, redistest.WithAOF())
	hung := hungServer(t)
	tests := []struct {
		name     string
		url      string
		deadline time.Duration // per operation; 0 for none
		down     func()
		up       func()
		check    bool // the server keeps data, so what was (not) written can be checked
	}{
		{name: "killed", url: srv.URL(), down: srv.Kill, up: srv.Restart, check: true},
		{name: "hung", url: "redis://" + hung + "/0", deadline: 300 * time.Millisecond, down: func() {}, up: func() {}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := newRedisLedger(t, newClient(t, tt.url), revocation.RedisOptions{})
			now := time.Now()
			before := activeTask(tt.name+"-before", now, time.Hour)
			beforeCreds := []broker.Credential{jwt(before.ID, "jti-"+before.ID, now.Add(time.Minute))}
			if tt.check {
				if err := l.Record(t.Context(), before, beforeCreds); err != nil {
					t.Fatalf("Record: %v", err)
				}
			}
			during := activeTask(tt.name+"-during", now, time.Hour)
			duringCreds := []broker.Credential{jwt(during.ID, "jti-"+during.ID, now.Add(time.Minute))}

			tt.down()
			ops := []struct {
				name string
				op   func(context.Context) error
			}{
				{"Record", func(ctx context.Context) error { return l.Record(ctx, during, duringCreds) }},
				{"End", func(ctx context.Context) error {
					_, _, err := l.End(ctx, before.ID, broker.StateRevoked, "x", now)
					return err
				}},
				{"Credential", func(ctx context.Context) error {
					_, _, err := l.Credential(ctx, beforeCreds[0].ID)
					return err
				}},
				{"Task", func(ctx context.Context) error { _, _, err := l.Task(ctx, before.ID); return err }},
				{"Due", func(ctx context.Context) error { _, err := l.Due(ctx, now, 10); return err }},
				{"Ping", func(ctx context.Context) error { return l.Ping(ctx) }},
			}
			for _, op := range ops {
				ctx, cancel := t.Context(), context.CancelFunc(func() {})
				if tt.deadline > 0 {
					ctx, cancel = context.WithTimeout(ctx, tt.deadline)
				}
				start := time.Now()
				err := op.op(ctx)
				took := time.Since(start)
				cancel()
				if !errors.Is(err, broker.ErrUnavailable) {
					t.Errorf("%s with redis %s: err = %v, want ErrUnavailable", op.name, tt.name, err)
				}
				if took > bound {
					t.Errorf("%s with redis %s took %v, want ≤ %v", op.name, tt.name, took, bound)
				}
			}
			if !tt.check {
				return
			}

			tt.up()
			ctx := t.Context()
			if _, _, err := l.Task(ctx, during.ID); !errors.Is(err, broker.ErrNotFound) {
				t.Errorf("Task recorded while redis was down: err = %v, want ErrNotFound", err)
			}
			got, _, err := l.Task(ctx, before.ID)
			if err != nil || got.State != broker.StateActive {
				t.Errorf("Task from before the outage = %s, %v; want active", got.State, err)
			}
			if err := l.Record(ctx, during, duringCreds); err != nil {
				t.Errorf("Record after restart: %v", err)
			}
			if _, _, err := l.End(ctx, before.ID, broker.StateRevoked, "x", now); err != nil {
				t.Errorf("End after restart: %v", err)
			}
			if _, denied, err := l.Credential(ctx, beforeCreds[0].ID); err != nil || !denied {
				t.Errorf("Credential after restart: denied = %v, err = %v; want denied", denied, err)
			}
		})
	}
}

// hungServer accepts connections and never answers, like a Redis stuck
// behind a dead network path.
func hungServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu    sync.Mutex
		conns []net.Conn
	)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return ln.Addr().String()
}

func TestNewClient(t *testing.T) {
	tests := []struct {
		name        string
		url         string
		wantErr     bool
		tls         bool
		readTimeout time.Duration
	}{
		{name: "redis", url: "redis://127.0.0.1:6379/0", readTimeout: 500 * time.Millisecond},
		{name: "rediss", url: "rediss://user:pw@redis.example:6380/2", tls: true, readTimeout: 500 * time.Millisecond},
		{name: "url overrides timeout", url: "redis://127.0.0.1:6379/0?read_timeout=2s", readTimeout: 2 * time.Second},
		{name: "other scheme", url: "http://127.0.0.1:6379", wantErr: true},
		{name: "unix socket", url: "unix:///run/redis.sock", wantErr: true},
		{name: "not a url", url: "redis://[::1", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := revocation.NewClient(tt.url)
			if tt.wantErr {
				if err == nil {
					c.Close()
					t.Fatal("NewClient succeeded")
				}
				return
			}
			if err != nil {
				t.Fatalf("NewClient: %v", err)
			}
			defer c.Close()
			o := c.Options()
			if o.DialTimeout != 500*time.Millisecond || o.WriteTimeout != 500*time.Millisecond ||
				o.PoolTimeout != time.Second || o.MaxRetries != 1 || o.DialerRetries != 1 || o.PipelinePoolSize != -1 ||
				!o.ContextTimeoutEnabled || o.ReadTimeout != tt.readTimeout {
				t.Errorf("options: dial %v read %v write %v pool %v retries %d dial retries %d ctx %v",
					o.DialTimeout, o.ReadTimeout, o.WriteTimeout, o.PoolTimeout, o.MaxRetries, o.DialerRetries, o.ContextTimeoutEnabled)
			}
			if (o.TLSConfig != nil) != tt.tls {
				t.Errorf("TLS = %v, want %v", o.TLSConfig != nil, tt.tls)
			}
		})
	}
}

func activeTask(name string, now time.Time, ttl time.Duration) broker.Task {
	return broker.Task{
		ID: "task-" + name, State: broker.StateActive, Agent: "agent-" + name, Issuer: "corp",
		Template: "deploy", Intent: name, Tools: []string{"repo.read"},
		CreatedAt: now, Deadline: now.Add(ttl),
	}
}

func jwt(taskID, id string, expires time.Time) broker.Credential {
	return broker.Credential{ID: id, Kind: broker.KindJWT, TaskID: taskID, IssuedAt: time.Now(), ExpiresAt: expires}
}

func TestRedisFeedConformance(t *testing.T) {
	newLedger := redisLedgers(t)
	conformance.Feed(t, func(t *testing.T, clock *conformance.Clock) (broker.Ledger, broker.Feed) {
		l := newLedger(t, clock)
		return l, l.Feed()
	})
}

func TestRedisDueEnderConformance(t *testing.T) {
	srv := redistest.Start(t)
	const lease = 200 * time.Millisecond
	var n atomic.Int64
	o := redisOptions
	o.ReapLease = lease
	conformance.DueEnder(t, func(t *testing.T, clock *conformance.Clock) (a, b broker.Ledger) {
		// Two replicas: one key space, a client each.
		opts := revocation.RedisOptions{Prefix: fmt.Sprint("due", n.Add(1)), Now: clock.Now, Logger: quiet, ReapLease: lease}
		return newRedisLedger(t, newClient(t, srv.URL()), opts), newRedisLedger(t, newClient(t, srv.URL()), opts)
	}, o)
}

func TestRedisLimiterConformance(t *testing.T) {
	newLedger := redisLedgers(t)
	conformance.Limiter(t, func(t *testing.T, clock *conformance.Clock) broker.Limiter {
		return newLedger(t, clock)
	}, conformance.Options{RealClockExpiry: "TestRedisRecordsExpire (the TTL of every one-time use and counter key)"})
}

// TestRedisRenewMovesEveryExpiry: after a renewal every key of the task (its
// record, credential list, every credential, its indexes and the deadline
// index) lives until the new deadline plus retention.
func TestRedisRenewMovesEveryExpiry(t *testing.T) {
	ctx := t.Context()
	c := newClient(t, redistest.Start(t).URL())
	const retention = 2 * time.Hour
	l := newRedisLedger(t, c, revocation.RedisOptions{Prefix: "rn", Retention: retention})
	start := time.Now()
	task := activeTask("renew", start, 20*time.Minute)
	if err := l.Record(ctx, task, []broker.Credential{jwt(task.ID, "jti-1", start.Add(20*time.Minute))}); err != nil {
		t.Fatal(err)
	}
	to := start.Add(3 * time.Hour)
	if _, err := l.Renew(ctx, task.ID, task.Deadline, to, []broker.Credential{jwt(task.ID, "jti-2", to)}); err != nil {
		t.Fatalf("Renew: %v", err)
	}
	want := to.Add(retention)
	for _, k := range []string{"rn:task:task-renew", "rn:task:task-renew:creds", "rn:cred:jti-1", "rn:cred:jti-2",
		"rn:deadlines", "rn:idx:agent:corp:agent-renew", "rn:idx:template:deploy", "rn:idx:issuer:corp"} {
		ttl, err := c.PTTL(ctx, k).Result()
		if err != nil {
			t.Fatalf("PTTL %s: %v", k, err)
		}
		if got := time.Now().Add(ttl); got.Before(want.Add(-time.Minute)) || got.After(want.Add(time.Minute)) {
			t.Errorf("%s expires at %s, want about %s", k, got, want)
		}
	}
	if score, err := c.ZScore(ctx, "rn:deadlines", task.ID).Result(); err != nil || int64(score) != to.UnixMilli() {
		t.Errorf("deadline index score = %v (%v), want %d", score, err, to.UnixMilli())
	}
}
