package main

import (
	"testing"

	"github.com/valet-dev/valet/internal/redistest"
)

// The parts of the ceiling as Go benchmarks, the same functions `go run
// ./bench` runs through testing.Benchmark:
//
//	go test -run '^$' -bench Ceiling ./bench
//
// In `go run ./bench` the ceiling is GOMAXPROCS / Σ CPU per op of the five
// BenchmarkCeiling parts (each at full parallelism, CPU counted by
// getrusage, plus redis-server's for the Redis part); the Info benchmarks are what the broker actually runs
// for the first and third part.

func newTestFixture(b *testing.B) *ceilingFixture {
	b.Helper()
	rs := redistest.Start(b)
	p, err := startIdP()
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(p.stop)
	f, err := newCeilingFixture(b.Context(), p, rs.URL(), 64)
	if err != nil {
		b.Fatal(err)
	}
	return f
}

func BenchmarkCeilingHTTP(b *testing.B)        { newTestFixture(b).benchHTTP(b) }
func BenchmarkCeilingVerifyRS256(b *testing.B) { newTestFixture(b).benchVerifyRS256(b) }
func BenchmarkCeilingCEL(b *testing.B)         { newTestFixture(b).benchCEL(b) }
func BenchmarkCeilingSignEdDSA(b *testing.B)   { newTestFixture(b).benchSignEdDSA(b) }
func BenchmarkCeilingRedisRecord(b *testing.B) { newTestFixture(b).benchRedisRecord(b) }
func BenchmarkInfoAuthenticate(b *testing.B)   { newTestFixture(b).benchAuthenticate(b) }
func BenchmarkInfoMint(b *testing.B)           { newTestFixture(b).benchMint(b) }

// TestFixture checks that every part runs without error once, so a broken
// fixture shows up in `go test ./...` and not only when benchmarking.
func TestFixture(t *testing.T) {
	rs := redistest.Start(t)
	p, err := startIdP()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.stop)
	f, err := newCeilingFixture(t.Context(), p, rs.URL(), 4)
	if err != nil {
		t.Fatal(err)
	}
	for _, pt := range f.parts() {
		r := f.measure(pt)
		if r.failed || r.cpuPerOp <= 0 {
			t.Errorf("%s: benchmark did not run or counted no CPU: %+v", pt.name, r)
		}
		if pt.redisCPU && r.redisNs <= 0 {
			t.Errorf("%s: no redis-server CPU counted", pt.name)
		}
	}
}
