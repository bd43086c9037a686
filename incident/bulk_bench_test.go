package incident_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/valet-dev/valet/audit"
	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/incident"
	"github.com/valet-dev/valet/internal/redistest"
	"github.com/valet-dev/valet/issuers"
	"github.com/valet-dev/valet/policy"
	"github.com/valet-dev/valet/revocation"
)

// nobody authenticates no one: the benchmark calls the Admin directly.
type nobody struct{}

func (nobody) Authenticate(context.Context, string) (broker.Principal, error) {
	return broker.Principal{}, errors.New("no callers here")
}

const bulkTemplates = `
templates:
  - name: triage
    principals:
      - issuer: bench
    ttl: {default: 5m, max: 15m}
    tools: [tickets.read]
    audiences: [https://tools.example.com]
`

// BenchmarkBulkRevokeJob is a bulk revocation of one agent holding n
// credentials (one task each) as `valet serve` runs it: Redis ledger,
// audit to an fsynced file and to the Redis stream, Admin.Revoke with the
// job run to its end. Seeding is outside the timer. Run one size at a time:
//
//	go test -run '^$' -bench 'BulkRevokeJob/100000' -benchtime 1x ./incident
func BenchmarkBulkRevokeJob(b *testing.B) {
	for _, n := range []int{10_000, 100_000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			b.StopTimer()
			c := redistest.Start(b).Client(b)
			for i := range b.N {
				ctx := context.Background()
				prefix := fmt.Sprintf("bulk%d", i)
				quiet := slog.New(slog.DiscardHandler)
				trail, err := audit.NewRedisWriter(c, audit.RedisWriterOptions{Prefix: prefix})
				if err != nil {
					b.Fatal(err)
				}
				stream := audit.NewLog(trail)
				l, err := revocation.NewRedisLedger(c, revocation.RedisOptions{Prefix: prefix, Trail: stream, Logger: quiet})
				if err != nil {
					b.Fatal(err)
				}
				file, closer, err := audit.OpenFile(filepath.Join(b.TempDir(), "audit.jsonl"))
				if err != nil {
					b.Fatal(err)
				}
				auditor := audit.Multi{file, stream}
				key, err := issuers.GenerateSigningKey("EdDSA")
				if err != nil {
					b.Fatal(err)
				}
				tokens, err := issuers.NewJWT(issuers.JWTConfig{Issuer: "http://127.0.0.1:1", Keys: []issuers.SigningKey{{Private: key}}}, time.Now)
				if err != nil {
					b.Fatal(err)
				}
				templates, err := policy.Load([]policy.File{{Name: "t.yaml", Data: []byte(bulkTemplates)}}, []string{"bench"})
				if err != nil {
					b.Fatal(err)
				}
				controls, err := revocation.NewControls(c, prefix, time.Second)
				if err != nil {
					b.Fatal(err)
				}
				svc, err := broker.NewService(broker.Config{Identity: nobody{}, Tokens: tokens, Ledger: l, Auditor: auditor,
					Templates: templates, Epochs: l, Logger: quiet})
				if err != nil {
					b.Fatal(err)
				}
				admin, err := incident.NewAdmin(incident.Config{Identity: nobody{}, Core: svc, Ledger: l, Auditor: auditor,
					Controls: controls, Jobs: l, Epochs: l, Timeline: trail, AgentIssuers: []string{"bench"},
					InlineBudget: 10 * time.Minute, Logger: quiet})
				if err != nil {
					b.Fatal(err)
				}
				const agent = "agent-incident"
				now := time.Now()
				var (
					next atomic.Int64
					wg   sync.WaitGroup
					fail atomic.Value
				)
				for range 32 {
					wg.Go(func() {
						for j := int(next.Add(1)) - 1; j < n; j = int(next.Add(1)) - 1 {
							id := fmt.Sprintf("tsk_%s_%08d", prefix, j)
							t := broker.Task{ID: id, State: broker.StateActive, Agent: agent, Issuer: "bench", Template: "triage",
								Intent: "triage", Tools: []string{"tickets.read"}, CreatedAt: now, Deadline: now.Add(10 * time.Minute)}
							cred := []broker.Credential{{ID: "jti_" + id, Kind: broker.KindJWT, TaskID: id, IssuedAt: now, ExpiresAt: t.Deadline}}
							if err := l.Record(ctx, t, cred); err != nil {
								fail.CompareAndSwap(nil, err)
								return
							}
						}
					})
				}
				wg.Wait()
				if err, _ := fail.Load().(error); err != nil {
					b.Fatalf("seeding: %v", err)
				}
				who := incident.AdminPrincipal{Issuer: "corp", Subject: "bench", Role: incident.RoleResponder}
				b.StartTimer()
				t0 := time.Now()
				job, err := admin.Revoke(ctx, who, incident.Selector{Agent: agent, Issuer: "bench"}, "bench incident")
				elapsed := time.Since(t0)
				b.StopTimer()
				if err != nil {
					b.Fatal(err)
				}
				if job.State != incident.JobDone || job.Revoked != n {
					b.Fatalf("job = %+v, want done with %d revoked", job, n)
				}
				b.ReportMetric(float64(n)/elapsed.Seconds(), "creds/s")
				b.ReportMetric(elapsed.Seconds(), "s/job")
				closer.Close()
			}
		})
	}
}
