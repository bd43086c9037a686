package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/internal/redistest"
	"github.com/valet-dev/valet/revocation"
)

// handedOut is one credential a client received.
type handedOut struct{ task, jti string }

// declareOnce declares a support-triage task for agent and returns the
// status and, on 201, the task id and the jti of its token.
func (v *servedValet) declareOnce(client *http.Client, agent string) (int, handedOut, error) {
	resp, err := client.Post(v.idpURL+"/token?agent="+agent, "", nil)
	if err != nil {
		return 0, handedOut{}, err
	}
	var tok struct {
		Token string `json:"identity_token"`
	}
	err = json.NewDecoder(resp.Body).Decode(&tok)
	resp.Body.Close()
	if err != nil {
		return 0, handedOut{}, err
	}
	req, _ := http.NewRequest(http.MethodPost, v.base+"/v1/tasks",
		strings.NewReader(`{"template":"support-triage","intent":"triage ticket 4521","tools":["tickets.read"]}`))
	req.Header.Set("Authorization", "Bearer "+tok.Token)
	req.Header.Set("Content-Type", "application/json")
	resp, err = client.Do(req)
	if err != nil {
		return 0, handedOut{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		return resp.StatusCode, handedOut{}, nil
	}
	var out struct {
		Task        struct{ ID string } `json:"task"`
		Credentials []struct {
			ID          string `json:"id"`
			AccessToken string `json:"access_token"`
		} `json:"credentials"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return 0, handedOut{}, err
	}
	if len(out.Credentials) == 0 {
		return 0, handedOut{}, fmt.Errorf("201 without credentials")
	}
	// The jti is read from the token the client holds, not from the id the
	// response names beside it.
	parts := strings.Split(out.Credentials[0].AccessToken, ".")
	if len(parts) != 3 {
		return 0, handedOut{}, fmt.Errorf("access token is not a JWT")
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return 0, handedOut{}, err
	}
	var claims struct {
		JTI string `json:"jti"`
	}
	if err := json.Unmarshal(payload, &claims); err != nil || claims.JTI == "" {
		return 0, handedOut{}, fmt.Errorf("access token without jti: %v", err)
	}
	return resp.StatusCode, handedOut{task: out.Task.ID, jti: claims.JTI}, nil
}

// failoverRow is one line of the failover table.
type failoverRow struct {
	mode                             string
	handedOut, known, revoked, audit int
	refused503, otherFailures        int
	promotion                        time.Duration
	// regranted is how long after the old primary came back (as a
	// replica of the new one) declarations were granted again.
	regranted time.Duration
}

// TestDurableFailoverLosesNoCredential: `valet serve` with
// redis.durability replica, under concurrent declarations over HTTP; the
// primary is killed (SIGKILL) and Sentinel or the Cluster promotes its
// replica. Every credential a client received must then be known to the
// new primary, revocable there, and in the audit stream there.
func TestDurableFailoverLosesNoCredential(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a Sentinel set and a 6-node Redis Cluster and kills a primary in each (about 30 s)")
	}
	var rows []failoverRow
	t.Run("sentinel", func(t *testing.T) {
		st := redistest.StartSentinel(t)
		section := fmt.Sprintf("mode: sentinel\n  addrs: [%s]\n  master_name: %s\n  prefix: valet\n  durability: replica\n  replica_timeout: 250ms",
			strings.Join(st.SentinelAddrs(), ", "), st.MasterName)
		opts := revocation.ModeOptions{Mode: revocation.ModeSentinel, Addrs: st.SentinelAddrs(), MasterName: st.MasterName}
		rows = append(rows, runFailover(t, "sentinel", section, "valet", opts, st.Primary, st.Replica, st.Sentinels...))
	})
	t.Run("cluster", func(t *testing.T) {
		c := redistest.StartCluster(t, 3, 1)
		section := fmt.Sprintf("mode: cluster\n  addrs: [%s]\n  prefix: \"{valet}\"\n  durability: replica\n  replica_timeout: 250ms", strings.Join(c.Addrs(), ", "))
		opts := revocation.ModeOptions{Mode: revocation.ModeCluster, Addrs: c.Addrs()}
		cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs()})
		defer cc.Close()
		m, err := cc.MasterForKey(context.Background(), "{valet}")
		if err != nil {
			t.Fatal(err)
		}
		primary := c.Node(m.Options().Addr)
		port := primary.Addr()[strings.LastIndex(primary.Addr(), ":")+1:]
		var replica *redistest.Server
		for _, n := range c.Nodes {
			info, err := n.Client(t).Info(context.Background(), "replication").Result()
			if err == nil && strings.Contains(info, "role:slave") && strings.Contains(info, "master_port:"+port+"\r") {
				replica = n
			}
		}
		if replica == nil {
			t.Fatalf("no replica of %s, the primary of {valet}", primary.Addr())
		}
		rows = append(rows, runFailover(t, "cluster", section, "{valet}", opts, primary, replica))
	})
	t.Logf("\n%-9s %10s %6s %8s %8s %12s %6s %10s %17s", "mode", "handed out", "known", "revoked", "audited", "refused 503", "other", "promotion", "granted again in")
	for _, r := range rows {
		t.Logf("%-9s %10d %6d %8d %8d %12d %6d %10v %17v", r.mode, r.handedOut, r.known, r.revoked, r.audit, r.refused503, r.otherFailures,
			r.promotion.Round(10*time.Millisecond), r.regranted.Round(10*time.Millisecond))
	}
}

// runFailover serves with section, declares from 8 clients, kills primary
// once a few credentials are out, waits for replica to be promoted (logs
// of watchers quoted if not), declares on for a moment, then checks every
// credential handed out on the new primary.
func runFailover(t *testing.T, mode, section, prefix string, opts revocation.ModeOptions, primary, replica *redistest.Server, watchers ...*redistest.Server) failoverRow {
	v := startServeRedis(t, "failover-test-secret-"+strings.Repeat("x", 8), section, http.StatusOK)
	row := failoverRow{mode: mode}
	var (
		mu       sync.Mutex
		got      []handedOut
		refused  atomic.Int64
		other    atomic.Int64
		stop     = make(chan struct{})
		wg       sync.WaitGroup
		lastErr  atomic.Value
		statuses sync.Map
	)
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			client := &http.Client{Timeout: 15 * time.Second} // past limits.request_timeout (10 s): a hang shows as one
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				status, h, err := v.declareOnce(client, fmt.Sprintf("agent-%d-%d", i, n))
				switch {
				case err != nil:
					other.Add(1)
					lastErr.Store(err.Error())
				case status == http.StatusCreated:
					mu.Lock()
					got = append(got, h)
					mu.Unlock()
				case status == http.StatusServiceUnavailable:
					refused.Add(1)
				default:
					other.Add(1)
					statuses.Store(status, true)
				}
			}
		}()
	}
	count := func() int { mu.Lock(); defer mu.Unlock(); return len(got) }
	waitUntil(t, 20*time.Second, "50 credentials handed out before the kill", func() bool { return count() >= 50 })
	primary.Kill()
	row.promotion = replica.WaitRole(t, "master", 30*time.Second, watchers...)
	time.Sleep(time.Second) // declarations go on against the promoted primary
	close(stop)
	wg.Wait()
	row.refused503, row.otherFailures = int(refused.Load()), int(other.Load())
	if row.otherFailures > 0 {
		var codes []string
		statuses.Range(func(k, _ any) bool { codes = append(codes, strconv.Itoa(k.(int))); return true })
		t.Logf("%s: %d declarations neither granted nor 503 (statuses %v, last error %v)", mode, row.otherFailures, codes, lastErr.Load())
	}

	// Check on the new primary, through a client of its own.
	c, err := revocation.NewModeClient(opts)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ledger, err := revocation.NewRedisLedger(c, revocation.RedisOptions{Prefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	row.handedOut = len(got)
	for _, h := range got {
		var cred broker.Credential
		var found bool
		waitUntil(t, 10*time.Second, "the new primary to answer", func() bool {
			cred, _, err = ledger.Credential(ctx, h.jti)
			found = err == nil
			return err == nil || !strings.Contains(err.Error(), "unavailable")
		})
		if !found || cred.TaskID != h.task {
			t.Errorf("%s: credential %s of task %s handed out but not known to the new primary (%v)", mode, h.jti, h.task, err)
			continue
		}
		row.known++
		if _, _, err := ledger.End(ctx, h.task, broker.StateRevoked, "failover test", time.Now()); err != nil {
			t.Errorf("%s: revoking task %s on the new primary: %v", mode, h.task, err)
		} else if _, denied, err := ledger.Credential(ctx, h.jti); err != nil || !denied {
			t.Errorf("%s: credential %s not denied after revoking its task (%v)", mode, h.jti, err)
		} else {
			row.revoked++
		}
		if n, err := c.LLen(ctx, prefix+":audit:task:"+h.task).Result(); err != nil || n == 0 {
			t.Errorf("%s: task %s handed out but not in the audit stream of the new primary (%d entries, %v)", mode, h.task, n, err)
		} else {
			row.audit++
		}
	}
	if row.handedOut < 50 {
		t.Errorf("%s: only %d credentials handed out", mode, row.handedOut)
	}

	// The promoted primary has no replica, so durable declarations are
	// refused until the old primary is back as its replica; then they are
	// granted again.
	primary.Restart()
	back := time.Now()
	client := &http.Client{Timeout: 15 * time.Second}
	waitUntil(t, 30*time.Second, "declaration granted once the old primary is back as a replica", func() bool {
		status, _, err := v.declareOnce(client, "agent-back")
		return err == nil && status == http.StatusCreated
	})
	row.regranted = time.Since(back)
	return row
}

// waitUntil polls ok every 20 ms until it holds, failing the test after d.
func waitUntil(t *testing.T, d time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("no %s within %v", what, d)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestServeDurableWithoutReplicaFailsClosed: `valet serve` with
// redis.durability replica and a Redis that has no replica answers a
// declaration 503, hands nothing out, and leaves no active task behind.
func TestServeDurableWithoutReplicaFailsClosed(t *testing.T) {
	srv := redistest.Start(t)
	v := startServeRedis(t, "durable-test-secret-"+strings.Repeat("x", 8),
		"url: "+srv.URL()+"\n  prefix: valet\n  durability: replica\n  replica_timeout: 50ms", http.StatusOK)
	status, h, err := v.declareOnce(http.DefaultClient, "agent-7")
	if err != nil || status != http.StatusServiceUnavailable || h.jti != "" {
		t.Fatalf("declaration without a replica = %d %+v (%v), want 503 and no credential", status, h, err)
	}
	ctx := context.Background()
	c := srv.Client(t)
	if n, err := c.ZCard(ctx, "valet:deadlines").Result(); err != nil || n != 0 {
		t.Errorf("%d tasks still due after the refused declaration (%v), want 0", n, err)
	}
	keys, err := c.Keys(ctx, "valet:task:*").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if strings.HasSuffix(k, ":creds") {
			continue
		}
		if state, _ := c.HGet(ctx, k, "state").Result(); state == "active" {
			t.Errorf("%s is active after the refused declaration", k)
		}
	}
	if !strings.Contains(v.stderr.String(), "did not reach a replica") {
		t.Errorf("the log does not say why the declaration was refused:\n%s", v.stderr.String())
	}
}

// TestServeOnCluster: `valet serve` with redis.mode cluster (default
// prefix "{valet}") is ready, grants a declaration, and its records are in
// the cluster, all in the slot of the prefix's hash tag.
func TestServeOnCluster(t *testing.T) {
	c := redistest.StartCluster(t, 3, 1)
	v := startServeRedis(t, "cluster-test-secret-"+strings.Repeat("x", 8),
		fmt.Sprintf("mode: cluster\n  addrs: [%s]", strings.Join(c.Addrs(), ", ")), http.StatusOK)
	status, h, err := v.declareOnce(http.DefaultClient, "agent-7")
	if err != nil || status != http.StatusCreated {
		t.Fatalf("declaration on a cluster = %d (%v), want 201", status, err)
	}
	cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs()})
	defer cc.Close()
	ctx := context.Background()
	if state, err := cc.HGet(ctx, "{valet}:task:"+h.task, "state").Result(); err != nil || state != "active" {
		t.Errorf("task %s in the cluster: %q, %v; want active", h.task, state, err)
	}
	if n, err := cc.LLen(ctx, "{valet}:audit:task:"+h.task).Result(); err != nil || n == 0 {
		t.Errorf("task %s not in the cluster's audit stream (%d, %v)", h.task, n, err)
	}
}
