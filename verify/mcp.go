package verify

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/valet-dev/valet/canonical"
)

// MCP headers of the Streamable HTTP transport (MCP 2026-07-28, SEP-2243):
// they mirror the JSON-RPC method and the name of what it acts on.
const (
	MCPMethodHeader = "Mcp-Method"
	MCPNameHeader   = "Mcp-Name"
)

// DefaultMCPMaxBody bounds a JSON-RPC message the MCP middleware reads.
const DefaultMCPMaxBody = 1 << 20

// Bounds on the parts of a JSON-RPC message the middleware reads.
const (
	maxMCPMethod = 128
	maxMCPName   = 512
)

// MCPOptions configure MCP.
type MCPOptions struct {
	// MaxBody bounds a POSTed JSON-RPC message (default
	// DefaultMCPMaxBody); a longer one is refused with 413.
	MaxBody int64
}

// MCP returns middleware for a Streamable HTTP MCP server. Every request
// needs a valid task token that is not revoked (401 with an RFC 9728
// challenge otherwise). A POSTed JSON-RPC message is read (at most
// MaxBody bytes) and, for tools/call, the tool in params.name must be one
// the task token grants (403 insufficient_scope with the scope that would
// grant it), or one of its sensitive tools, which also needs the one-shot
// action token in the Valet-Action header for exactly params.arguments (see
// CheckAction). Other methods (initialize, tools/list, notifications,
// responses) need only the task token. When the client sends the
// Mcp-Method or Mcp-Name header, it must agree with the body (400
// otherwise). Batches, duplicate keys (in any letter case) and invalid
// UTF-8 are refused with 400, so the server cannot read another tool than
// the one checked. Refusals keep their HTTP status and WWW-Authenticate
// challenge and carry a JSON-RPC error (code -32001, the request's id when
// known) as their body. The handler finds the claims with FromContext;
// each tool call is reported as Middleware does (see Describe).
func (v *Verifier) MCP(opts MCPOptions) func(http.Handler) http.Handler {
	limit := opts.MaxBody
	if limit <= 0 {
		limit = DefaultMCPMaxBody
	}
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			ctx := r.Context()
			c, err := v.checkToken(ctx, r)
			if err != nil {
				v.writeMCPRefusal(w, r, err, nil)
				return
			}
			var msg MCPMessage
			if r.Method == http.MethodPost {
				body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
				if err != nil {
					var mb *http.MaxBytesError
					if errors.As(err, &mb) {
						writeRPCError(w, http.StatusRequestEntityTooLarge, -32600, fmt.Sprintf("the JSON-RPC message is longer than %d bytes", limit))
						return
					}
					writeRPCError(w, http.StatusBadRequest, -32700, "the request body cannot be read")
					return
				}
				if msg, err = ParseMCP(body); err != nil {
					v.cfg.Logger.WarnContext(ctx, "MCP request refused", "task_id", c.TaskID, "reason", err.Error())
					writeRPCError(w, http.StatusBadRequest, -32600, err.Error())
					return
				}
				if err := headersAgree(r.Header, msg); err != nil {
					v.cfg.Logger.WarnContext(ctx, "MCP request refused", "task_id", c.TaskID, "reason", err.Error())
					writeRPCError(w, http.StatusBadRequest, -32001, err.Error())
					return
				}
				r.Body = io.NopCloser(bytes.NewReader(body))
				r.ContentLength = int64(len(body))
			}
			tool := ""
			if msg.Method == "tools/call" {
				tool = msg.Name
				err = v.checkMCPTool(ctx, r, c, tool, msg.Arguments)
			} else {
				err = v.checkRevoked(ctx, bearerOf(r), c)
			}
			if err != nil {
				v.writeMCPRefusal(w, r, err, msg.ID)
				return
			}
			ctx = context.WithValue(ctx, claimsKey{}, c)
			if tool == "" {
				next.ServeHTTP(w, r.WithContext(ctx))
				return
			}
			h := &effectHolder{}
			sw := &statusWriter{ResponseWriter: w}
			next.ServeHTTP(sw, r.WithContext(context.WithValue(ctx, effectKey{}, h)))
			if sw.status == 0 {
				sw.status = http.StatusOK
			}
			h.mu.Lock()
			e := h.e
			h.mu.Unlock()
			v.Report(r, c, tool, sw.status, e)
		})
	}
}

// checkMCPTool checks a tools/call of tool with arguments args: an
// ordinary granted tool as Check does, a sensitive one as CheckAction does.
func (v *Verifier) checkMCPTool(ctx context.Context, r *http.Request, c Claims, tool string, args json.RawMessage) error {
	if !slices.Contains(c.Tools, tool) && slices.Contains(c.ActionTools, tool) {
		canon, err := canonical.Args(args)
		if err != nil {
			return refuse(400, "the tool's arguments are not a JSON object", err)
		}
		err = v.checkAction(ctx, r, c, tool, canon)
		var e *Error
		if errors.As(err, &e) && e.Status == http.StatusForbidden {
			// The tool is granted; what is missing is a valid action
			// token, which no other scope would give: no
			// insufficient_scope challenge.
			e.noChallenge = true
		}
		return err
	}
	if err := checkTool(c, tool); err != nil {
		return err
	}
	return v.checkRevoked(ctx, bearerOf(r), c)
}

// MCPMessage is what the MCP middleware reads of one JSON-RPC message.
type MCPMessage struct {
	// Method is the request's or notification's method; "" for a response.
	Method string
	// Name is what the method acts on: params.name of tools/call and
	// prompts/get, params.uri of resources/read; "" otherwise.
	Name string
	// Arguments are params.arguments of tools/call, as sent.
	Arguments json.RawMessage
	// ID is the request's id when it is a string or number of at most 128
	// bytes (echoed in refusals); nil otherwise.
	ID json.RawMessage
}

// ParseMCP reads one JSON-RPC 2.0 message of the Streamable HTTP
// transport. It refuses what two JSON decoders could read differently, so
// the server never acts on another method, tool or arguments than the ones
// checked: invalid UTF-8, a key given twice in one object in any letter
// case, trailing data, nesting deeper than 64. It refuses batches (MCP 2025-06-18 dropped
// them), a jsonrpc other than "2.0", a tools/call without a name, and
// methods or names beyond their bounds.
func ParseMCP(body []byte) (MCPMessage, error) {
	if !utf8.Valid(body) {
		return MCPMessage{}, errors.New("the JSON-RPC message is not valid UTF-8")
	}
	trimmed := bytes.TrimLeft(body, " \t\r\n")
	if len(trimmed) > 0 && trimmed[0] == '[' {
		return MCPMessage{}, errors.New("JSON-RPC batches are not accepted")
	}
	if err := checkKeys(body); err != nil {
		return MCPMessage{}, fmt.Errorf("the JSON-RPC message: %w", err)
	}
	top, err := objectFields(body)
	if err != nil {
		return MCPMessage{}, fmt.Errorf("the JSON-RPC message: %w", err)
	}
	var version string
	if err := stringField(top, "jsonrpc", &version); err != nil || version != "2.0" {
		return MCPMessage{}, errors.New(`the JSON-RPC message needs "jsonrpc": "2.0"`)
	}
	var m MCPMessage
	if err := stringField(top, "method", &m.Method); err != nil {
		return MCPMessage{}, err
	}
	if len(m.Method) > maxMCPMethod {
		return MCPMessage{}, fmt.Errorf("method is longer than %d bytes", maxMCPMethod)
	}
	_, hasMethod := top["method"]
	if hasMethod && m.Method == "" {
		return MCPMessage{}, errors.New("method is empty")
	}
	if id, ok := top["id"]; ok && len(id) <= 128 && len(id) > 0 && (id[0] == '"' || id[0] == '-' || (id[0] >= '0' && id[0] <= '9')) {
		m.ID = id
	}
	raw, ok := top["params"]
	var params map[string]json.RawMessage
	if ok && !isNull(raw) {
		if params, err = objectFields(raw); err != nil {
			return MCPMessage{}, fmt.Errorf("params: %w", err)
		}
	}
	nameKey := ""
	switch m.Method {
	case "tools/call", "prompts/get":
		nameKey = "name"
	case "resources/read":
		nameKey = "uri"
	}
	if nameKey != "" {
		if err := stringField(params, nameKey, &m.Name); err != nil {
			return MCPMessage{}, fmt.Errorf("params: %w", err)
		}
		if m.Name == "" {
			return MCPMessage{}, fmt.Errorf("%s needs params.%s", m.Method, nameKey)
		}
		if len(m.Name) > maxMCPName {
			return MCPMessage{}, fmt.Errorf("params.%s is longer than %d bytes", nameKey, maxMCPName)
		}
	}
	if m.Method == "tools/call" {
		if a, ok := params["arguments"]; ok && !isNull(a) {
			m.Arguments = a
		}
	}
	return m, nil
}

// mcpKeys are the members of a message and its params the parser reads.
var mcpKeys = []string{"jsonrpc", "id", "method", "params", "result", "error", "name", "uri", "arguments"}

// objectFields splits one JSON object into its members, refusing anything
// else and trailing data.
func objectFields(raw []byte) (map[string]json.RawMessage, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	tok, err := dec.Token()
	if err != nil {
		return nil, fmt.Errorf("not JSON: %w", err)
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return nil, errors.New("not a JSON object")
	}
	fields := map[string]json.RawMessage{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, fmt.Errorf("not JSON: %w", err)
		}
		key, _ := tok.(string)
		if _, dup := fields[key]; dup {
			return nil, fmt.Errorf("key %.64q appears twice", key)
		}
		// A decoder that matches keys in any letter case (encoding/json)
		// would read "Method" as the method: refuse such near-misses.
		if l := strings.ToLower(key); l != key && slices.Contains(mcpKeys, l) {
			return nil, fmt.Errorf("key %.64q must be written %q", key, l)
		}
		var val json.RawMessage
		if err := dec.Decode(&val); err != nil {
			return nil, fmt.Errorf("not JSON: %w", err)
		}
		fields[key] = val
	}
	if _, err := dec.Token(); err != nil {
		return nil, fmt.Errorf("not JSON: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("data after the JSON object")
	}
	return fields, nil
}

// maxMCPDepth bounds the nesting of a message the middleware reads.
const maxMCPDepth = 64

// checkKeys walks a whole JSON document and refuses a key that repeats in
// its object in any letter case (decoders differ on which one wins, and
// on letter case), and nesting deeper than maxMCPDepth.
func checkKeys(raw []byte) error {
	dec := json.NewDecoder(bytes.NewReader(raw))
	// Each open container: its keys seen (nil for an array) and whether
	// the next string token is a key.
	type frame struct {
		keys  map[string]bool
		isKey bool
	}
	var stack []frame
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("not JSON: %w", err)
		}
		top := len(stack) - 1
		if d, ok := tok.(json.Delim); ok {
			switch d {
			case '{', '[':
				if top >= 0 && stack[top].keys != nil {
					stack[top].isKey = true
				}
				if len(stack) >= maxMCPDepth {
					return fmt.Errorf("nested deeper than %d", maxMCPDepth)
				}
				f := frame{}
				if d == '{' {
					f = frame{keys: map[string]bool{}, isKey: true}
				}
				stack = append(stack, f)
			default:
				stack = stack[:top]
				if top > 0 && stack[top-1].keys != nil {
					stack[top-1].isKey = true
				}
			}
			continue
		}
		if top < 0 || stack[top].keys == nil {
			continue
		}
		if stack[top].isKey {
			key, _ := tok.(string)
			k := strings.ToLower(key)
			if stack[top].keys[k] {
				return fmt.Errorf("key %.64q appears twice", key)
			}
			stack[top].keys[k] = true
			stack[top].isKey = false
			continue
		}
		stack[top].isKey = true
	}
}

// stringField reads fields[key] into s when present; it must be a string.
func stringField(fields map[string]json.RawMessage, key string, s *string) error {
	raw, ok := fields[key]
	if !ok {
		return nil
	}
	if err := json.Unmarshal(raw, s); err != nil {
		return fmt.Errorf("%s must be a string", key)
	}
	return nil
}

func isNull(raw json.RawMessage) bool { return string(bytes.TrimSpace(raw)) == "null" }

// headersAgree checks the Mcp-Method and Mcp-Name headers, when sent,
// against the message (values may be base64 in =?base64?...?=, SEP-2243).
func headersAgree(h http.Header, m MCPMessage) error {
	if vals := h.Values(MCPMethodHeader); len(vals) > 0 {
		got, ok := headerValue(vals)
		if !ok || got != m.Method {
			return fmt.Errorf("header %s does not match the message's method", MCPMethodHeader)
		}
	}
	if vals := h.Values(MCPNameHeader); len(vals) > 0 {
		got, ok := headerValue(vals)
		if !ok || m.Name == "" || got != m.Name {
			return fmt.Errorf("header %s does not match the message's params", MCPNameHeader)
		}
	}
	return nil
}

// headerValue is the one value of a header, base64-decoded when wrapped.
func headerValue(vals []string) (string, bool) {
	if len(vals) != 1 {
		return "", false
	}
	v := strings.TrimSpace(vals[0])
	if enc, ok := strings.CutPrefix(v, "=?base64?"); ok {
		if enc, ok = strings.CutSuffix(enc, "?="); ok {
			b, err := base64.StdEncoding.DecodeString(enc)
			if err != nil || !utf8.Valid(b) {
				return "", false
			}
			return string(b), true
		}
	}
	return v, true
}

// writeMCPRefusal answers a refused message as writeRefusal does (status,
// challenge), but with a JSON-RPC error for the message's id as the body,
// so an MCP client reports the refusal for its call and keeps its session.
func (v *Verifier) writeMCPRefusal(w http.ResponseWriter, r *http.Request, err error, id json.RawMessage) {
	var e *Error
	if !errors.As(err, &e) {
		e = refuse(http.StatusInternalServerError, "internal error", err)
	}
	v.cfg.Logger.WarnContext(r.Context(), "MCP request refused", "status", e.Status, "reason", e.Error())
	if ch := v.challenge(r, e); ch != "" && !e.noChallenge {
		w.Header().Set("WWW-Authenticate", ch)
	}
	if id == nil {
		id = json.RawMessage("null")
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(e.Status)
	_ = json.NewEncoder(w).Encode(map[string]any{"jsonrpc": "2.0", "id": id,
		"error": map[string]any{"code": -32001, "message": e.Message, "data": map[string]any{"status": e.Status}}})
}

// writeRPCError answers a message the middleware cannot pass on: the
// status and a JSON-RPC error without an id (the id is not trusted).
func writeRPCError(w http.ResponseWriter, status, code int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{"jsonrpc": "2.0", "id": nil,
		"error": map[string]any{"code": code, "message": msg}})
}
