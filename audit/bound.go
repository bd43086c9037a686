package audit

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"sort"
	"time"

	"github.com/valet-dev/valet/broker"
)

// MaxEventBytes bounds one event as written: an event whose bounded form is
// still larger keeps its fields but replaces its detail by a note of the
// detail's size and SHA-256, so no input can make an audit line larger
// than about MaxEventBytes plus the record's own 200 bytes.
const MaxEventBytes = 32 << 10

// bound is the one place where an event's attacker-influenced text is cut
// to size before it is written: every string field and detail string to
// broker.MaxAuditString bytes (cut strings end with "…[+N bytes]"), every
// list and detail map to broker.MaxAuditList items (a longer list ends
// with "…[+N items]"; a larger map keeps its first keys in sorted order and
// an "…" key counting the rest) and detail nesting to
// broker.MaxAuditDepth; encodeBounded then holds the whole event to
// MaxEventBytes. Numbers, booleans and times pass unchanged.
func bound(e broker.Event) (broker.Event, error) {
	s := func(p *string) { *p = broker.Bound(*p, broker.MaxAuditString) }
	s(&e.Type)
	s(&e.RequestID)
	s(&e.Actor)
	s(&e.Issuer)
	s(&e.TaskID)
	s(&e.Template)
	s(&e.Outcome)
	s(&e.Rule)
	s(&e.Reason)
	if len(e.Creds) > 0 {
		creds := make([]string, 0, min(len(e.Creds), broker.MaxAuditList+1))
		for i, c := range e.Creds {
			if i == broker.MaxAuditList {
				creds = append(creds, fmt.Sprintf("…[+%d items]", len(e.Creds)-i))
				break
			}
			creds = append(creds, broker.Bound(c, broker.MaxAuditString))
		}
		e.Creds = creds
	}
	if e.Detail == nil {
		return e, nil
	}
	if d, ok := boundTyped(e.Detail, 1); ok {
		e.Detail = d.(map[string]any)
		return e, nil
	}
	// Detail values of other types (structs): bound their JSON form.
	raw, err := json.Marshal(e.Detail)
	if err != nil {
		return e, fmt.Errorf("encoding audit detail: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var generic map[string]any
	if err := dec.Decode(&generic); err != nil {
		return e, fmt.Errorf("encoding audit detail: %w", err)
	}
	// A JSON-decoded value has only the types boundTyped knows.
	d, _ := boundTyped(generic, 1)
	e.Detail = d.(map[string]any)
	return e, nil
}

// encodeBounded is the event's JSON, its detail replaced by a note of its
// size and SHA-256 when the whole is over MaxEventBytes.
func encodeBounded(e broker.Event) ([]byte, error) {
	ev, err := json.Marshal(e)
	if err != nil || len(ev) <= MaxEventBytes {
		return ev, err
	}
	raw, err := json.Marshal(e.Detail)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(raw)
	e.Detail = map[string]any{"detail_dropped": "larger than the audit event bound",
		"detail_bytes": len(raw), "detail_sha256": hex.EncodeToString(sum[:])}
	return json.Marshal(e)
}

// boundTyped bounds detail values of the common types (and every type a
// JSON decoder produces) directly; ok is false when some value is of
// another type.
func boundTyped(v any, depth int) (any, bool) {
	switch v := v.(type) {
	case string:
		return broker.Bound(v, broker.MaxAuditString), true
	case []any:
		if depth > broker.MaxAuditDepth {
			return fmt.Sprintf("…[list of %d items]", len(v)), true
		}
		out := make([]any, 0, min(len(v), broker.MaxAuditList+1))
		for i, x := range v {
			if i == broker.MaxAuditList {
				out = append(out, fmt.Sprintf("…[+%d items]", len(v)-i))
				break
			}
			b, ok := boundTyped(x, depth+1)
			if !ok {
				return nil, false
			}
			out = append(out, b)
		}
		return out, true
	case []string:
		if depth > broker.MaxAuditDepth {
			return fmt.Sprintf("…[list of %d items]", len(v)), true
		}
		out := make([]string, 0, min(len(v), broker.MaxAuditList+1))
		for i, x := range v {
			if i == broker.MaxAuditList {
				out = append(out, fmt.Sprintf("…[+%d items]", len(v)-i))
				break
			}
			out = append(out, broker.Bound(x, broker.MaxAuditString))
		}
		return out, true
	case map[string]any:
		if depth > broker.MaxAuditDepth {
			return fmt.Sprintf("…[object of %d keys]", len(v)), true
		}
		keys := make([]string, 0, len(v))
		for k := range v {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		out := make(map[string]any, min(len(v), broker.MaxAuditList+1))
		for i, k := range keys {
			if i == broker.MaxAuditList {
				out["…"] = fmt.Sprintf("+%d keys", len(keys)-i)
				break
			}
			x, ok := boundTyped(v[k], depth+1)
			if !ok {
				return nil, false
			}
			out[broker.Bound(k, broker.MaxAuditString)] = x
		}
		return out, true
	case nil, bool, int, int64, uint64, float64, json.Number, time.Time, time.Duration:
		return v, true
	default:
		return nil, false
	}
}
