package redistest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/valet-dev/valet/internal/testkit"
)

// topologyTimeout bounds how long StartCluster and StartSentinel wait for
// the servers to agree on their roles.
const topologyTimeout = 20 * time.Second

// ClusterNodeTimeout is the cluster-node-timeout of a StartCluster cluster:
// a primary unreachable this long is failed, and one of its replicas
// promoted, a second or two later.
const ClusterNodeTimeout = time.Second

// Cluster is a Redis Cluster owned by one test: Nodes[:Primaries] started as
// primaries, the rest as their replicas.
type Cluster struct {
	t         testing.TB
	Nodes     []*Server
	Primaries int
}

// StartCluster starts primaries × (1 + replicas) redis-server processes in
// cluster mode on free loopback ports (each with its own cluster bus port),
// joins them with `redis-cli --cluster create`, and waits until every node
// reports the cluster ok. Replicas may fail over without a recent link to
// their primary (cluster-replica-validity-factor 0), so a killed primary is
// always replaced.
func StartCluster(t testing.TB, primaries, replicas int) *Cluster {
	t.Helper()
	if primaries < 3 {
		t.Fatalf("StartCluster: Redis Cluster needs at least 3 primaries, got %d", primaries)
	}
	cli, err := exec.LookPath("redis-cli")
	if err != nil {
		t.Fatal("redis-cli not found on PATH: install the Debian package redis-tools")
	}
	c := &Cluster{t: t, Primaries: primaries}
	n := primaries * (1 + replicas)
	addrs := make([]string, 0, n)
	for range n {
		bus, err := testkit.FreePort()
		if err != nil {
			t.Fatalf("StartCluster: %v", err)
		}
		s := Start(t, withArgs("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
			"--cluster-node-timeout", strconv.Itoa(int(ClusterNodeTimeout/time.Millisecond)),
			"--cluster-port", strconv.Itoa(bus), "--cluster-replica-validity-factor", "0",
			"--cluster-allow-replica-migration", "no"))
		c.Nodes = append(c.Nodes, s)
		addrs = append(addrs, s.Addr())
	}
	args := append([]string{"--cluster", "create"}, addrs...)
	args = append(args, "--cluster-replicas", strconv.Itoa(replicas), "--cluster-yes")
	ctx, cancel := context.WithTimeout(context.Background(), topologyTimeout)
	defer cancel()
	if out, err := exec.CommandContext(ctx, cli, args...).CombinedOutput(); err != nil {
		t.Fatalf("redis-cli --cluster create: %v\n%s", err, out)
	}
	for _, s := range c.Nodes {
		waitFor(t, s, "cluster state ok with "+strconv.Itoa(n)+" nodes", func(cl *redis.Client) (bool, error) {
			info, err := cl.ClusterInfo(ctx).Result()
			if err != nil {
				return false, err
			}
			return strings.Contains(info, "cluster_state:ok") &&
				strings.Contains(info, "cluster_known_nodes:"+strconv.Itoa(n)+"\r"), nil
		})
	}
	// A replica counts (for WAIT, for a failover) once its first sync is
	// done, which may come after the cluster says ok.
	for _, s := range c.Nodes {
		waitFor(t, s, "primary, or replica in sync", func(cl *redis.Client) (bool, error) {
			info, err := cl.Info(ctx, "replication").Result()
			return strings.Contains(info, "role:master") || strings.Contains(info, "master_link_status:up"), err
		})
	}
	return c
}

// Addrs are the host:port of every node, primaries first.
func (c *Cluster) Addrs() []string {
	out := make([]string, len(c.Nodes))
	for i, s := range c.Nodes {
		out[i] = s.Addr()
	}
	return out
}

// Node is the node at addr; the test fails if there is none.
func (c *Cluster) Node(addr string) *Server {
	c.t.Helper()
	for _, s := range c.Nodes {
		if s.Addr() == addr {
			return s
		}
	}
	c.t.Fatalf("no cluster node at %s", addr)
	return nil
}

// Sentinel is a Sentinel-watched primary with one replica and three
// sentinels (quorum 2), owned by one test.
type Sentinel struct {
	MasterName string
	Primary    *Server
	Replica    *Server
	Sentinels  []*Server
}

// SentinelDownAfter is the down-after-milliseconds of a StartSentinel set:
// a primary unreachable this long is failed over a moment later.
const SentinelDownAfter = time.Second

// StartSentinel starts a primary, one replica of it and three sentinels
// monitoring it as "valet" on free loopback ports, and waits until the
// replica is in sync and every sentinel knows the replica and the two
// other sentinels.
func StartSentinel(t testing.TB) *Sentinel {
	t.Helper()
	st := &Sentinel{MasterName: "valet"}
	st.Primary = Start(t)
	st.Replica = StartReplica(t, st.Primary)
	ctx, cancel := context.WithTimeout(context.Background(), topologyTimeout)
	defer cancel()
	conf := fmt.Sprintf("sentinel monitor %s 127.0.0.1 %d 2\n"+
		"sentinel down-after-milliseconds %[1]s %[3]d\n"+
		"sentinel failover-timeout %[1]s 10000\n"+
		"sentinel parallel-syncs %[1]s 1\n", st.MasterName, st.Primary.port, SentinelDownAfter.Milliseconds())
	for range 3 {
		st.Sentinels = append(st.Sentinels, Start(t, func(c *config) { c.sentinel = conf }))
	}
	for _, s := range st.Sentinels {
		waitFor(t, s, "sentinel sees the replica and 2 other sentinels", func(cl *redis.Client) (bool, error) {
			m, err := cl.Do(ctx, "SENTINEL", "MASTER", st.MasterName).Result()
			if err != nil {
				return false, err
			}
			f := fields(m)
			return f["num-slaves"] == "1" && f["num-other-sentinels"] == "2", nil
		})
	}
	return st
}

// StartReplica starts a replica of primary on a free loopback port and
// waits until its link to the primary is up.
func StartReplica(t testing.TB, primary *Server) *Server {
	t.Helper()
	r := Start(t, withArgs("--replicaof", "127.0.0.1", strconv.Itoa(primary.port)))
	waitFor(t, r, "replica link up", func(cl *redis.Client) (bool, error) {
		info, err := cl.Info(context.Background(), "replication").Result()
		return strings.Contains(info, "master_link_status:up"), err
	})
	return r
}

// SentinelAddrs are the host:port of the three sentinels.
func (st *Sentinel) SentinelAddrs() []string {
	out := make([]string, len(st.Sentinels))
	for i, s := range st.Sentinels {
		out[i] = s.Addr()
	}
	return out
}

// fields reads a flat or map reply of name/value pairs.
func fields(v any) map[string]string {
	out := map[string]string{}
	switch m := v.(type) {
	case map[any]any:
		for k, v := range m {
			out[fmt.Sprint(k)] = fmt.Sprint(v)
		}
	case []any:
		for i := 0; i+1 < len(m); i += 2 {
			out[fmt.Sprint(m[i])] = fmt.Sprint(m[i+1])
		}
	}
	return out
}

// waitFor polls ok on a client of s until it says true, failing the test
// after topologyTimeout.
func waitFor(t testing.TB, s *Server, what string, ok func(*redis.Client) (bool, error)) {
	t.Helper()
	cl := redis.NewClient(&redis.Options{Addr: s.Addr(), MaxRetries: -1, Protocol: 2})
	defer cl.Close()
	deadline := time.Now().Add(topologyTimeout)
	for {
		done, err := ok(cl)
		if done {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("redis on %s: no %s within %v (last error %v); log:\n%s", s.Addr(), what, topologyTimeout, err, s.logTail())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// launchSentinel starts the process as a Sentinel. Sentinel rewrites its
// configuration file, so the file is written on the first launch only.
func (s *Server) launchSentinel() error {
	path := filepath.Join(s.dir, "sentinel.conf")
	if !s.launched {
		conf := fmt.Sprintf("port %d\nbind 127.0.0.1\ndir %s\nlogfile redis.log\n%s", s.port, s.dir, s.cfg.sentinel)
		if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
			return err
		}
	}
	return s.run(exec.Command(s.bin, path, "--sentinel"))
}

// Client is a plain client of this one server (no retries), closed when
// the test ends.
func (s *Server) Client(t testing.TB) *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: s.Addr(), MaxRetries: -1})
	t.Cleanup(func() { c.Close() })
	return c
}

// WaitRole waits until s reports role (master or slave) in INFO
// replication and returns how long that took; after d it fails the test
// quoting the logs of s and of others (the sentinels, say).
func (s *Server) WaitRole(t testing.TB, role string, d time.Duration, others ...*Server) time.Duration {
	t.Helper()
	start := time.Now()
	c := redis.NewClient(&redis.Options{Addr: s.Addr(), MaxRetries: -1})
	defer c.Close()
	for {
		info, err := c.Info(context.Background(), "replication").Result()
		if err == nil && strings.Contains(info, "role:"+role+"\r") {
			return time.Since(start)
		}
		if time.Since(start) > d {
			var logs strings.Builder
			for _, o := range append([]*Server{s}, others...) {
				fmt.Fprintf(&logs, "--- %s:\n%s\n", o.Addr(), o.logTail())
			}
			t.Fatalf("redis on %s: not %s within %v (%v); logs:\n%s", s.Addr(), role, d, err, logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}
