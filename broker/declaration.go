package broker

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/valet-dev/valet/policy"
)

// Limits on a declaration, beyond the HTTP body cap. MaxTools, MaxToolName
// and MaxTTL bound a token exchange (package delegation) too.
const (
	maxTemplateName = 128
	maxIntent       = 4096
	MaxTools        = 256
	MaxToolName     = 128
	MaxTTL          = 24 * time.Hour
	// maxSubjectToken caps the end user's token in a declaration.
	maxSubjectToken = 16 << 10
)

// declarationWire is the JSON body of POST /v1/tasks.
type declarationWire struct {
	Template   string          `json:"template"`
	Intent     string          `json:"intent"`
	Tools      []string        `json:"tools"`
	TTLSeconds *int64          `json:"ttl_seconds"`
	Context    json.RawMessage `json:"context"`
	// SubjectToken is a pointer so that an explicit "" is refused rather
	// than read as "no user".
	SubjectToken *string `json:"subject_token"`
}

// DecodeDeclaration reads and validates a task declaration. Every error is an
// *Error with CodeInvalid that names the offending field.
func DecodeDeclaration(r io.Reader) (Declaration, error) {
	var w declarationWire
	if err := DecodeJSON(r, &w); err != nil {
		return Declaration{}, err
	}
	return w.validate()
}

func (w declarationWire) validate() (Declaration, error) {
	d := Declaration{Template: w.Template, Intent: w.Intent, Tools: w.Tools}
	switch {
	case w.Template == "":
		return d, InvalidField("template", "template is required")
	case len(w.Template) > maxTemplateName || !utf8.ValidString(w.Template):
		return d, InvalidField("template", "template must be a valid name of at most %d bytes", maxTemplateName)
	case strings.TrimSpace(w.Intent) == "":
		return d, InvalidField("intent", "intent is required: say what the task is for")
	case len(w.Intent) > maxIntent || !utf8.ValidString(w.Intent):
		return d, InvalidField("intent", "intent must be valid UTF-8 of at most %d bytes", maxIntent)
	case len(w.Tools) == 0:
		return d, InvalidField("tools", "tools must list at least one tool")
	case len(w.Tools) > MaxTools:
		return d, InvalidField("tools", "tools may list at most %d tools", MaxTools)
	}
	seen := make(map[string]bool, len(w.Tools))
	for i, tool := range w.Tools {
		field := fmt.Sprintf("tools[%d]", i)
		switch {
		case tool == "":
			return d, InvalidField(field, "%s is empty", field)
		case !policy.ValidToolName(tool):
			return d, CheckToolName(field, tool)
		case seen[tool]:
			return d, InvalidField(field, "%s: tool %q is listed twice", field, tool)
		}
		seen[tool] = true
	}
	if w.TTLSeconds != nil {
		ttl := *w.TTLSeconds
		if ttl <= 0 {
			return d, InvalidField("ttl_seconds", "ttl_seconds must be positive, got %d", ttl)
		}
		if ttl > int64(MaxTTL/time.Second) {
			return d, InvalidField("ttl_seconds", "ttl_seconds must be at most %d", int64(MaxTTL/time.Second))
		}
		d.TTL = time.Duration(ttl) * time.Second
	}
	if w.SubjectToken != nil {
		switch tok := *w.SubjectToken; {
		case tok == "":
			return d, InvalidField("subject_token", "subject_token must not be empty: omit it when the agent acts for itself")
		case len(tok) > maxSubjectToken:
			return d, InvalidField("subject_token", "subject_token must be at most %d bytes", maxSubjectToken)
		default:
			d.SubjectToken = tok
		}
	}
	if len(w.Context) > 0 && !bytes.Equal(w.Context, []byte("null")) {
		if err := json.Unmarshal(w.Context, &d.Context); err != nil {
			return d, InvalidField("context", "context must be a JSON object")
		}
	}
	return d, nil
}

func InvalidField(field, format string, args ...any) *Error {
	e := Errorf(CodeInvalid, format, args...)
	e.Field = field
	return e
}

// DecodeJSON reads exactly one JSON object from r into v, refusing unknown
// fields and trailing data: the one strict decoder of every request body.
// Every error is an *Error with CodeInvalid that says what and where.
func DecodeJSON(r io.Reader, v any) error {
	dec := json.NewDecoder(r)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return jsonError(err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return Errorf(CodeInvalid, "request body must hold exactly one JSON object")
	}
	return nil
}

// jsonError turns a decoder error into a message that says what and where.
// The cause stays in Err, so the HTTP layer can recognise a body that hit
// its size cap.
func jsonError(err error) *Error {
	var syntax *json.SyntaxError
	var typ *json.UnmarshalTypeError
	var e *Error
	switch {
	case errors.Is(err, io.EOF):
		e = Errorf(CodeInvalid, "request body is empty")
	case errors.As(err, &syntax):
		e = Errorf(CodeInvalid, "malformed JSON at byte %d: %v", syntax.Offset, syntax)
	case errors.As(err, &typ):
		e = InvalidField(typ.Field, "field %q must be %s, not JSON %s", typ.Field, typ.Type, typ.Value)
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		name := strings.Trim(strings.TrimPrefix(err.Error(), "json: unknown field "), `"`)
		e = InvalidField(name, "unknown field %q", name)
	case errors.Is(err, io.ErrUnexpectedEOF):
		e = Errorf(CodeInvalid, "malformed JSON: unexpected end of body")
	default:
		e = Errorf(CodeInvalid, "request body could not be read as JSON")
	}
	e.Err = err
	return e
}
