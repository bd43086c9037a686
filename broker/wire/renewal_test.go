package wire

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/valet-dev/valet/broker"
)

// TestDecodeRenewal: the body is optional fields only, strictly decoded.
func TestDecodeRenewal(t *testing.T) {
	for _, c := range []struct {
		body, field string
		ttl         time.Duration
	}{
		{`{}`, "", 0},
		{`{"ttl_seconds":60,"context":{"k":"v"}}`, "", time.Minute},
		{`{"ttl_seconds":0}`, "ttl_seconds", 0},
		{`{"ttl_seconds":86401}`, "ttl_seconds", 0},
		{`{"intent":"x"}`, "intent", 0},
	} {
		r, err := DecodeRenewal(strings.NewReader(c.body), "tsk_a")
		var e *broker.Error
		switch {
		case c.field == "" && (err != nil || r.TTL != c.ttl || r.TaskID != "tsk_a"):
			t.Errorf("DecodeRenewal(%s) = %+v, %v; want ttl %s", c.body, r, err, c.ttl)
		case c.field != "" && (!errors.As(err, &e) || e.Field != c.field):
			t.Errorf("DecodeRenewal(%s) = %v; want an error on field %s", c.body, err, c.field)
		}
	}
}

// FuzzDecodeRenewal: any body either decodes to a renewal within bounds or
// is refused with a 400 naming what is wrong; never a panic.
func FuzzDecodeRenewal(f *testing.F) {
	for _, s := range []string{`{}`, `{"ttl_seconds":60}`, `{"context":{"a":[1,2]}}`, `{"ttl_seconds":-1}`, `[]`, `{"ttl_seconds":1e99}`, ``} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, body string) {
		r, err := DecodeRenewal(strings.NewReader(body), "tsk_a")
		if err != nil {
			if broker.ErrorCode(err) != broker.CodeInvalid {
				t.Fatalf("DecodeRenewal(%q) = %v; want a 400", body, err)
			}
			return
		}
		if r.TTL < 0 || r.TTL > broker.MaxTTL || r.TaskID != "tsk_a" {
			t.Fatalf("DecodeRenewal(%q) = %+v: out of bounds", body, r)
		}
	})
}
