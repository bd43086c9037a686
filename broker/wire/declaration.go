// Package wire reads what clients send: the one strict JSON decoder of
// every request body and the decoding and validation of task declarations
// and tool names. Every error is a *broker.Error with broker.CodeInvalid that
// names the offending field.
package wire

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/policy"
)

// Limits on a declaration, beyond the HTTP body cap and broker's own
// (broker.MaxTools, broker.MaxTTL).
const (
	maxTemplateName = 128
	maxIntent       = 4096
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
// *broker.Error with broker.CodeInvalid that names the offending field.
func DecodeDeclaration(r io.Reader) (broker.Declaration, error) {
	var w declarationWire
	if err := DecodeJSON(r, &w); err != nil {
		return broker.Declaration{}, err
	}
	return w.validate()
}

func (w declarationWire) validate() (broker.Declaration, error) {
	d := broker.Declaration{Template: w.Template, Intent: w.Intent, Tools: w.Tools}
	switch {
	case w.Template == "":
		return d, broker.InvalidField("template", "template is required")
	case len(w.Template) > maxTemplateName || !utf8.ValidString(w.Template):
		return d, broker.InvalidField("template", "template must be a valid name of at most %d bytes", maxTemplateName)
	case strings.TrimSpace(w.Intent) == "":
		return d, broker.InvalidField("intent", "intent is required: say what the task is for")
	case len(w.Intent) > maxIntent || !utf8.ValidString(w.Intent):
		return d, broker.InvalidField("intent", "intent must be valid UTF-8 of at most %d bytes", maxIntent)
	case len(w.Tools) == 0:
		return d, broker.InvalidField("tools", "tools must list at least one tool")
	case len(w.Tools) > broker.MaxTools:
		return d, broker.InvalidField("tools", "tools may list at most %d tools", broker.MaxTools)
	}
	seen := make(map[string]bool, len(w.Tools))
	for i, tool := range w.Tools {
		field := fmt.Sprintf("tools[%d]", i)
		switch {
		case tool == "":
			return d, broker.InvalidField(field, "%s is empty", field)
		case !policy.ValidToolName(tool):
			return d, CheckToolName(field, tool)
		case seen[tool]:
			return d, broker.InvalidField(field, "%s: tool %q is listed twice", field, tool)
		}
		seen[tool] = true
	}
	if w.TTLSeconds != nil {
		ttl := *w.TTLSeconds
		if ttl <= 0 {
			return d, broker.InvalidField("ttl_seconds", "ttl_seconds must be positive, got %d", ttl)
		}
		if ttl > int64(broker.MaxTTL/time.Second) {
			return d, broker.InvalidField("ttl_seconds", "ttl_seconds must be at most %d", int64(broker.MaxTTL/time.Second))
		}
		d.TTL = time.Duration(ttl) * time.Second
	}
	if w.SubjectToken != nil {
		switch tok := *w.SubjectToken; {
		case tok == "":
			return d, broker.InvalidField("subject_token", "subject_token must not be empty: omit it when the agent acts for itself")
		case len(tok) > maxSubjectToken:
			return d, broker.InvalidField("subject_token", "subject_token must be at most %d bytes", maxSubjectToken)
		default:
			d.SubjectToken = tok
		}
	}
	if len(w.Context) > 0 && !bytes.Equal(w.Context, []byte("null")) {
		if err := json.Unmarshal(w.Context, &d.Context); err != nil {
			return d, broker.InvalidField("context", "context must be a JSON object")
		}
	}
	return d, nil
}
