package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

// TestServeRedisModeConfigEveryProblemInOneRun: the redis section's mode,
// addresses, cluster prefix and durability are checked with the rest of
// the file, every problem in one run.
func TestServeRedisModeConfigEveryProblemInOneRun(t *testing.T) {
	tests := []struct {
		name  string
		redis string
		want  []string
	}{
		{name: "cluster prefix splits slots", redis: `{mode: cluster, addrs: ["127.0.0.1:7000", "nohost"], prefix: valet, master_name: m, durability: always, replica_timeout: 1m, redis_url: x}`,
			want: []string{`redis.prefix "valet" has no hash tag`, `redis.addrs[1]: "nohost" is not host:port`, "redis.master_name is for mode sentinel only",
				`redis.durability: "always" must be primary or replica`, "redis.replica_timeout: 1m0s must be more than 0 and at most 5s",
				`redis.redis_url: unknown key "redis_url"; valid keys here: addrs, durability, master_name, mode`}},
		{name: "sentinel lacks its parts", redis: `{mode: sentinel, username: u}`,
			want: []string{"redis.addrs: mode sentinel needs at least one host:port", "redis.master_name: mode sentinel needs", "redis.username: set redis.password_env too"}},
		{name: "unknown mode", redis: `{mode: ring, url: "redis://127.0.0.1:1/0"}`, want: []string{`redis.mode: "ring" is not one of single, sentinel, cluster`}},
		{name: "single with addrs", redis: `{url: "redis://127.0.0.1:1/0", addrs: ["a:1"]}`, want: []string{"redis.addrs and redis.master_name are for mode sentinel or cluster"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := writeFile(t, t.TempDir(), "bad.yaml", "public_url: nope\nredis: "+tt.redis+"\n")
			var out, errOut bytes.Buffer
			if code := run(context.Background(), []string{"valet", "serve", "--config", p}, func(string) string { return "" }, &out, &errOut); code != 1 {
				t.Fatalf("exit %d: %s", code, errOut.String())
			}
			msg := errOut.String()
			for _, w := range append(tt.want, "public_url") {
				if !strings.Contains(msg, w) {
					t.Errorf("one run does not report %s:\n%s", w, msg)
				}
			}
			if strings.Contains(tt.redis, "mode: cluster") && strings.Contains(msg, "redis.url") {
				t.Errorf("mode cluster asked for redis.url:\n%s", msg)
			}
		})
	}
}

func TestRedisConfigDefaults(t *testing.T) {
	r := RedisConfig{Mode: "cluster"}
	r.defaults()
	if r.Prefix != "{valet}" || r.Durability != "primary" || r.ReplicaTimeout == 0 {
		t.Errorf("cluster defaults = prefix %q, durability %q, replica_timeout %v; want {valet}, primary, 250ms", r.Prefix, r.Durability, r.ReplicaTimeout)
	}
	if errs := r.validate(); len(errs) != 1 || !strings.Contains(errs[0].Error(), "redis.addrs") {
		t.Errorf("validate = %v, want only the missing redis.addrs", errs)
	}
}
