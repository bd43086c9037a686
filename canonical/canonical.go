// Package canonical owns the canonical JSON form of an action's arguments
// and its hash, which Valet puts in an action token (args_hash) and a tool
// server's verifier recomputes from the arguments it is about to use.
//
// The canonical form: objects with their keys sorted by their UTF-8 bytes,
// no insignificant whitespace, strings escaped as encoding/json does minus
// HTML escaping (<, > and & stay as they are), integers that fit in an
// int64 written as plain integers (so 1, 1.0 and 1e0 are one number), other
// numbers written as Go writes a float64 (shortest form that reads back),
// and null, true, false as they are. The hash is the unpadded base64url
// SHA-256 of those bytes. Arguments are a JSON object; a missing or null
// argument set is the empty object {}.
package canonical

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
)

// MaxDepth bounds the nesting of arguments, so a hostile document cannot
// exhaust the stack.
const MaxDepth = 32

// Args returns the canonical form of a JSON arguments object given as
// bytes. Empty input and null are {}; anything but an object is an error.
func Args(raw []byte) ([]byte, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return []byte("{}"), nil
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, fmt.Errorf("arguments: %w", err)
	}
	if dec.More() {
		return nil, errors.New("arguments: more than one JSON value")
	}
	if _, ok := v.(map[string]any); !ok {
		return nil, errors.New("arguments must be a JSON object")
	}
	var b bytes.Buffer
	if err := write(&b, v, 0); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// Value returns the canonical form of a Go value, which must encode to a
// JSON object (or be nil): what a tool server passes to the verifier.
func Value(v any) ([]byte, error) {
	if v == nil {
		return []byte("{}"), nil
	}
	raw, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("arguments: %w", err)
	}
	return Args(raw)
}

// Hash is the unpadded base64url SHA-256 of canonical bytes.
func Hash(canon []byte) string {
	sum := sha256.Sum256(canon)
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

func write(b *bytes.Buffer, v any, depth int) error {
	if depth > MaxDepth {
		return fmt.Errorf("arguments nest deeper than %d", MaxDepth)
	}
	switch x := v.(type) {
	case nil:
		b.WriteString("null")
	case bool:
		b.WriteString(strconv.FormatBool(x))
	case string:
		writeString(b, x)
	case json.Number:
		return writeNumber(b, x)
	case []any:
		b.WriteByte('[')
		for i, e := range x {
			if i > 0 {
				b.WriteByte(',')
			}
			if err := write(b, e, depth+1); err != nil {
				return err
			}
		}
		b.WriteByte(']')
	case map[string]any:
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		b.WriteByte('{')
		for i, k := range keys {
			if i > 0 {
				b.WriteByte(',')
			}
			writeString(b, k)
			b.WriteByte(':')
			if err := write(b, x[k], depth+1); err != nil {
				return err
			}
		}
		b.WriteByte('}')
	default:
		return fmt.Errorf("arguments: unexpected %T", v)
	}
	return nil
}

func writeString(b *bytes.Buffer, s string) {
	var tmp bytes.Buffer
	enc := json.NewEncoder(&tmp)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(s) // a string always encodes
	b.Write(bytes.TrimSuffix(tmp.Bytes(), []byte("\n")))
}

func writeNumber(b *bytes.Buffer, n json.Number) error {
	if i, err := strconv.ParseInt(string(n), 10, 64); err == nil {
		b.WriteString(strconv.FormatInt(i, 10))
		return nil
	}
	f, err := strconv.ParseFloat(string(n), 64)
	if err != nil || math.IsInf(f, 0) || math.IsNaN(f) {
		return fmt.Errorf("arguments: number %.32q out of range", string(n))
	}
	if f == math.Trunc(f) && math.Abs(f) < 1<<53 {
		b.WriteString(strconv.FormatInt(int64(f), 10))
		return nil
	}
	out, _ := json.Marshal(f) // finite floats always encode
	b.Write(out)
	return nil
}

// Names returns the sorted top-level keys of a canonical arguments object:
// what audit records show when the values may be secret.
func Names(canon []byte) []string {
	var m map[string]json.RawMessage
	if json.Unmarshal(canon, &m) != nil {
		return nil
	}
	names := make([]string, 0, len(m))
	for k := range m {
		names = append(names, k)
	}
	slices.Sort(names)
	return names
}
