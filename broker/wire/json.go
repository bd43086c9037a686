package wire

import (
	"encoding/json"
	"errors"
	"io"
	"strings"

	"github.com/valet-dev/valet/broker"
)

// DecodeJSON reads exactly one JSON object from r into v, refusing unknown
// fields and trailing data: the one strict decoder of every request body.
// Every error is a *broker.Error with broker.CodeInvalid that says what and where.
func DecodeJSON(r io.Reader, v any) error {
	dec := json.NewDecoder(r)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return jsonError(err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return broker.Errorf(broker.CodeInvalid, "request body must hold exactly one JSON object")
	}
	return nil
}

// jsonError turns a decoder error into a message that says what and where.
// The cause stays in Err, so the HTTP layer can recognise a body that hit
// its size cap.
func jsonError(err error) *broker.Error {
	var syntax *json.SyntaxError
	var typ *json.UnmarshalTypeError
	var e *broker.Error
	switch {
	case errors.Is(err, io.EOF):
		e = broker.Errorf(broker.CodeInvalid, "request body is empty")
	case errors.As(err, &syntax):
		e = broker.Errorf(broker.CodeInvalid, "malformed JSON at byte %d: %v", syntax.Offset, syntax)
	case errors.As(err, &typ):
		e = broker.InvalidField(typ.Field, "field %q must be %s, not JSON %s", typ.Field, typ.Type, typ.Value)
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		name := strings.Trim(strings.TrimPrefix(err.Error(), "json: unknown field "), `"`)
		e = broker.InvalidField(name, "unknown field %q", name)
	case errors.Is(err, io.ErrUnexpectedEOF):
		e = broker.Errorf(broker.CodeInvalid, "malformed JSON: unexpected end of body")
	default:
		e = broker.Errorf(broker.CodeInvalid, "request body could not be read as JSON")
	}
	e.Err = err
	return e
}
