package main

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/valet-dev/valet/internal/redistest"
)

// TestDeclareCellsMeterTheCache runs the two identity-token cells briefly
// against a broker wired as the bench wires it: the distinct-token cell
// gets no cache hit while its pool does not wrap, the reused-token cell
// gets almost only hits, and both count CPU.
func TestDeclareCellsMeterTheCache(t *testing.T) {
	rs := redistest.Start(t)
	p, err := startIdP()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.stop)
	ctx := context.Background()
	v, err := startValetWith(ctx, p, rs.URL(), t.TempDir(), valetConfig{prefix: "celltest", syncInterval: auditInterval})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(v.stop)
	admin := redis.NewClient(&redis.Options{Addr: rs.Addr()})
	t.Cleanup(func() { admin.Close() })
	const pool = 300
	tokens, err := p.tokens(pool, 2)
	if err != nil {
		t.Fatal(err)
	}
	cells := benchCells(ctx, []workload{{name: wValetDeclare}}, v, nil, nil, admin, tokens, t.TempDir())
	if len(cells) != 2 || cells[0].name != wValetDeclare || cells[1].name != wValetReused {
		t.Fatalf("cells: %d", len(cells))
	}

	distinct := run(ctx, cells[0], 4, 0, 200*time.Millisecond)
	if distinct.errs > 0 || distinct.ops == 0 || !distinct.use.ok {
		t.Fatalf("distinct cell: %d ok, %d errors (%s), meter ok %v", distinct.ops, distinct.errs, distinct.firstErr, distinct.use.ok)
	}
	// Requests past the pool's size may hit; none before may.
	if maxHits := uint64(max(0, distinct.requests-pool)); distinct.use.hits > maxHits {
		t.Fatalf("distinct cell: %d cache hits in %d requests over %d tokens", distinct.use.hits, distinct.requests, pool)
	}
	if distinct.use.self <= 0 {
		t.Fatalf("distinct cell counted no CPU: %+v", distinct.use)
	}

	reused := run(ctx, cells[1], 2, 100*time.Millisecond, 200*time.Millisecond)
	if reused.errs > 0 || reused.ops == 0 || !reused.use.ok {
		t.Fatalf("reused cell: %d ok, %d errors (%s)", reused.ops, reused.errs, reused.firstErr)
	}
	if lookups := reused.use.hits + reused.use.misses; lookups == 0 || reused.use.misses > 2 {
		t.Fatalf("reused cell with 2 agents: %d hits, %d misses; want at most 2 misses", reused.use.hits, reused.use.misses)
	}
}

func TestProcCPUReadsThisProcess(t *testing.T) {
	d, ok := procCPU(os.Getpid())
	if !ok || d <= 0 {
		t.Fatalf("procCPU = %s, %v", d, ok)
	}
}
