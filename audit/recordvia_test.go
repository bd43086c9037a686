package audit

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/valet-dev/valet/broker"
)

// viaScript runs the stream append as another script would (revocation's
// Record script): StreamAppendLua's check, then its append.
var viaScript = redis.NewScript(StreamAppendLua + `
local r = audit_check(KEYS, ARGV)
if r then
  return r
end
return audit_append(KEYS, ARGV)
`)

// TestRecordVia: a line handed to another script joins the chain only when
// that script stored it; a refusal leaves no gap, and a write whose outcome
// is unknown is found out from the chain's head, so the stream verifies
// whatever happened. An event whose Chained is the Log is not written
// twice; RecordVia needs a Log over a RedisWriter.
func TestRecordVia(t *testing.T) {
	ctx := context.Background()
	c := redisClient(t)
	w, err := NewRedisWriter(c, RedisWriterOptions{})
	if err != nil {
		t.Fatal(err)
	}
	l := NewLog(w)
	ev := func(id string) broker.Event {
		return broker.Event{Time: time.Now().UTC(), Type: "task.declared", TaskID: id, Outcome: "granted"}
	}
	store := func(keys []string, args []any) error { return viaScript.Run(ctx, c, keys, args...).Err() }
	refuse := func([]string, []any) error { return errors.New("VALET_DUPLICATE task") }
	landedButLost := func(keys []string, args []any) error {
		if err := store(keys, args); err != nil {
			return err
		}
		return errors.New("i/o timeout") // it landed; the reply did not
	}
	steps := []struct {
		name    string
		id      string
		write   func([]string, []any) error
		wantErr bool
	}{
		{"stored", "tsk_1", store, false},
		{"refused", "tsk_2", refuse, true},
		{"stored after a refusal", "tsk_3", store, false},
		{"landed, reply lost", "tsk_4", landedButLost, true},
		{"stored after a lost reply", "tsk_5", store, false},
	}
	for _, s := range steps {
		if err := l.RecordVia(ctx, ev(s.id), s.write); (err != nil) != s.wantErr {
			t.Fatalf("%s: RecordVia = %v, want error %v", s.name, err, s.wantErr)
		}
	}
	e := ev("tsk_5")
	e.Chained = l
	if err := l.Record(ctx, e); err != nil {
		t.Fatal(err)
	}
	if err := l.Record(ctx, broker.Event{Time: time.Now().UTC(), Type: "task.completed", TaskID: "tsk_1"}); err != nil {
		t.Fatal(err)
	}
	rep, err := VerifyStream(ctx, c, "valet")
	if err != nil || rep.Events != 5 || rep.Chains[w.Chain()] != 5 {
		t.Fatalf("VerifyStream = %+v, %v; want 5 events (4 stored grants and a completion), no gap", rep, err)
	}
	if err := NewLog(&bytes.Buffer{}).RecordVia(ctx, ev("tsk_6"), store); err == nil {
		t.Fatal("RecordVia on a Log over a buffer: no error")
	}
}
