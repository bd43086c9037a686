// Package mcpserver is an example MCP server, built on the official Go MCP
// SDK (github.com/modelcontextprotocol/go-sdk) and protected by Valet: a
// tiny ticket system whose MCP tools are tickets.read, tickets.comment and
// the sensitive tickets.delete, which needs a one-shot action token (header
// Valet-Action) for exactly its arguments. The whole Streamable HTTP
// endpoint sits behind verify.MCP, which checks every tools/call against
// the task token's tools; the server publishes its RFC 9728 metadata so an
// MCP client can find Valet from the server's URL alone.
package mcpserver

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"sync"

	"github.com/modelcontextprotocol/go-sdk/auth"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/valet-dev/valet/verify"
)

// Path is where the MCP endpoint is served; the verifier's Audience must be
// the server's URL with this path (the resource its tokens name).
const Path = "/mcp"

// Server holds the tickets.
type Server struct {
	mu       sync.Mutex
	comments map[string][]string
	deleted  map[string]bool
	h        http.Handler
}

// ServeHTTP serves the MCP endpoint and the protected-resource metadata.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.h.ServeHTTP(w, r) }

// ReadArgs are tickets.read's and tickets.delete's arguments.
type ReadArgs struct {
	Ticket string `json:"ticket" jsonschema:"the ticket's id"`
}

// CommentArgs are tickets.comment's arguments.
type CommentArgs struct {
	Ticket string `json:"ticket" jsonschema:"the ticket's id"`
	Text   string `json:"text" jsonschema:"the comment"`
}

// Ticket is what tickets.read returns.
type Ticket struct {
	ID       string   `json:"id"`
	Title    string   `json:"title"`
	Comments []string `json:"comments"`
	ReadBy   string   `json:"read_by"`
	TaskID   string   `json:"task_id"`
}

// Done is what tickets.comment and tickets.delete return.
type Done struct {
	Ticket string `json:"ticket"`
	By     string `json:"by"`
	TaskID string `json:"task_id"`
}

// New returns the example MCP server, its endpoint behind v. v's Audience
// must be an http(s) URL whose path is Path.
func New(v *verify.Verifier) (*Server, error) {
	md := v.ResourceMetadataURL()
	if md == "" {
		return nil, errors.New("mcpserver: the verifier's audience must be the server's http(s) URL")
	}
	u, err := url.Parse(md)
	if err != nil {
		return nil, fmt.Errorf("mcpserver: %w", err)
	}
	s := &Server{comments: map[string][]string{}, deleted: map[string]bool{}}
	srv := mcp.NewServer(&mcp.Implementation{Name: "valet-example-tickets", Version: "1.0.0"}, nil)
	mcp.AddTool(srv, &mcp.Tool{Name: "tickets.read", Description: "Read a ticket and its comments."}, s.read)
	mcp.AddTool(srv, &mcp.Tool{Name: "tickets.comment", Description: "Add a comment to a ticket."}, s.comment)
	mcp.AddTool(srv, &mcp.Tool{Name: "tickets.delete", Description: "Delete a ticket (sensitive: needs a Valet action token)."}, s.delete)
	// Stateless: MCP 2026-07-28 has no protocol sessions (and the SDK
	// serves it only so); older clients are served without sessions too.
	handler := mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return srv }, &mcp.StreamableHTTPOptions{Stateless: true})

	mux := http.NewServeMux()
	mux.Handle("GET "+u.EscapedPath(), v.ProtectedResourceMetadata())
	// verify.MCP decides; the SDK's bearer middleware only carries the
	// checked claims to the tools (and, were sessions on, would bind each
	// session to its task through UserID).
	mux.Handle(Path, v.MCP(verify.MCPOptions{})(auth.RequireBearerToken(tokenInfo, nil)(handler)))
	s.h = mux
	return s, nil
}

// tokenInfo hands the claims verify.MCP checked to the SDK.
func tokenInfo(_ context.Context, _ string, r *http.Request) (*auth.TokenInfo, error) {
	c, ok := verify.FromContext(r.Context())
	if !ok {
		return nil, fmt.Errorf("%w: not checked by verify.MCP", auth.ErrInvalidToken)
	}
	return &auth.TokenInfo{Scopes: c.Tools, Expiration: c.ExpiresAt, UserID: c.TaskID,
		Extra: map[string]any{"claims": c}}, nil
}

// claimsOf are the task token's claims of a tool call.
func claimsOf(req *mcp.CallToolRequest) verify.Claims {
	if ti := req.Extra.TokenInfo; ti != nil {
		if c, ok := ti.Extra["claims"].(verify.Claims); ok {
			return c
		}
	}
	return verify.Claims{}
}

func (s *Server) read(_ context.Context, req *mcp.CallToolRequest, in ReadArgs) (*mcp.CallToolResult, Ticket, error) {
	c := claimsOf(req)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.deleted[in.Ticket] {
		return nil, Ticket{}, fmt.Errorf("ticket %q was deleted", in.Ticket)
	}
	return nil, Ticket{ID: in.Ticket, Title: "Printer on fire", Comments: append([]string{}, s.comments[in.Ticket]...),
		ReadBy: c.Actor(), TaskID: c.TaskID}, nil
}

func (s *Server) comment(_ context.Context, req *mcp.CallToolRequest, in CommentArgs) (*mcp.CallToolResult, Done, error) {
	c := claimsOf(req)
	if len(in.Text) > 4096 {
		return nil, Done{}, errors.New("text is longer than 4096 bytes")
	}
	s.mu.Lock()
	s.comments[in.Ticket] = append(s.comments[in.Ticket], in.Text)
	s.mu.Unlock()
	return nil, Done{Ticket: in.Ticket, By: c.Actor(), TaskID: c.TaskID}, nil
}

// delete is the sensitive tool: verify.MCP has checked and consumed the
// action token for exactly these arguments before the call got here.
func (s *Server) delete(_ context.Context, req *mcp.CallToolRequest, in ReadArgs) (*mcp.CallToolResult, Done, error) {
	c := claimsOf(req)
	s.mu.Lock()
	s.deleted[in.Ticket] = true
	s.mu.Unlock()
	return nil, Done{Ticket: in.Ticket, By: c.Actor(), TaskID: c.TaskID}, nil
}
