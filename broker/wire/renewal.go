package wire

import (
	"io"
	"time"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/renewal"
)

// renewalWire is the JSON body of POST /v1/tasks/{id}/renew.
type renewalWire struct {
	TTLSeconds *int64         `json:"ttl_seconds"`
	Context    map[string]any `json:"context"`
}

// DecodeRenewal reads and validates a renewal body. Every error is an
// *Error with CodeInvalid that names the offending field.
func DecodeRenewal(r io.Reader, taskID string) (renewal.Request, error) {
	var w renewalWire
	if err := DecodeJSON(r, &w); err != nil {
		return renewal.Request{}, err
	}
	out := renewal.Request{TaskID: taskID, Context: w.Context}
	if w.TTLSeconds != nil {
		ttl := *w.TTLSeconds
		if ttl <= 0 || ttl > int64(broker.MaxTTL/time.Second) {
			return renewal.Request{}, broker.InvalidField("ttl_seconds", "ttl_seconds must be between 1 and %d, got %d", int64(broker.MaxTTL/time.Second), ttl)
		}
		out.TTL = time.Duration(ttl) * time.Second
	}
	return out, nil
}
