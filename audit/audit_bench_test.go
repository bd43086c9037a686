package audit

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/valet-dev/valet/broker"
)

// BenchmarkRecordFile records to a real file (fsync before Record returns)
// from 32 goroutines, as a broker under load does.
func BenchmarkRecordFile(b *testing.B) {
	l, c, err := OpenFile(filepath.Join(b.TempDir(), "audit.jsonl"))
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	e := broker.Event{Time: time.Now(), Type: "task.granted", TaskID: "tsk_abcdefghijklmnopqrstuvwxyz", Actor: "agent-1",
		Creds: []string{"jti-abcdefghijklmnop"}, Detail: map[string]any{"intent": "triage ticket 4521", "ttl_seconds": 600}}
	b.SetParallelism(16)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := l.Record(context.Background(), e); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
