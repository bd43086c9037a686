package delegation

import (
	"fmt"
	"slices"
	"time"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/policy"
)

// ParentGrant is what a parent task token holds, as far as attenuation is
// concerned.
type ParentGrant struct {
	Tools       []string
	ActionTools []string
	Audiences   []string
	Scopes      []string
	Deadline    time.Time // the earlier of the task's deadline and the token's exp
	Depth       int
}

// Attenuate decides a child grant: every tool, audience and scope the child
// gets is held by the parent and still allowed by the template, and the
// child ends at or before the parent. Asking for more is an error naming
// what was asked; nothing is ever widened or silently dropped. It returns
// the grant and the child's depth.
func Attenuate(tmpl *policy.Template, parent ParentGrant, req Request, now time.Time) (broker.Grant, int, error) {
	deny := func(rule, field, format string, args ...any) (broker.Grant, int, error) {
		return broker.Grant{}, 0, &broker.Error{Code: broker.CodeForbidden, Message: fmt.Sprintf(format, args...), Rule: rule, Field: field}
	}
	if tmpl.Delegation == nil {
		return deny("delegation", "", "template %q does not allow delegation", tmpl.Name)
	}
	depth := parent.Depth + 1
	if depth > tmpl.Delegation.MaxDepth {
		return deny("delegation.max_depth", "", "delegation depth %d exceeds the maximum of template %q (%d)", depth, tmpl.Name, tmpl.Delegation.MaxDepth)
	}
	if len(req.Tools) == 0 {
		return broker.Grant{}, 0, broker.InvalidField("tools", "tools is required")
	}
	var tools, actionTools []string
	for _, tool := range req.Tools {
		if _, sensitive := tmpl.SensitiveTool(tool); sensitive {
			// A sensitive tool attenuates like any tool: only one the
			// parent holds, still sensitive in the template.
			if !slices.Contains(parent.ActionTools, tool) {
				return deny("tools", "tools", "tool %q is not held by the parent task", tool)
			}
			actionTools = append(actionTools, tool)
			continue
		}
		if !slices.Contains(parent.Tools, tool) || !tmpl.AllowsTool(tool) {
			return deny("tools", "tools", "tool %q is not held by the parent task", tool)
		}
		tools = append(tools, tool)
	}
	auds := req.Audiences
	if len(auds) == 0 {
		auds = parent.Audiences
	}
	var grantedAuds []string
	for _, a := range auds {
		if !slices.Contains(parent.Audiences, a) || !slices.Contains(tmpl.Audiences, a) {
			return deny("audience", "audience", "audience %q is not held by the parent task", a)
		}
		grantedAuds = append(grantedAuds, a)
	}
	if len(grantedAuds) == 0 {
		return deny("audience", "audience", "the parent task holds no audience to delegate")
	}
	scopes := req.Scopes
	if scopes == nil {
		scopes = parent.Scopes
	}
	var grantedScopes []string
	for _, sc := range scopes {
		if !slices.Contains(parent.Scopes, sc) || !slices.Contains(tmpl.Scopes, sc) {
			if req.Scopes == nil {
				continue // the parent's scope the template no longer allows
			}
			return deny("scope", "scope", "scope %q is not held by the parent task", sc)
		}
		grantedScopes = append(grantedScopes, sc)
	}
	remaining := parent.Deadline.Sub(now).Truncate(time.Second)
	if remaining < time.Second {
		return deny("ttl", "", "the parent task has less than a second left")
	}
	ttl := req.TTL
	switch {
	case ttl == 0:
		ttl = min(remaining, tmpl.MaxTTL)
	case ttl > remaining:
		return deny("ttl", "ttl_seconds", "ttl_seconds %d exceeds the parent task's remaining %d seconds", int64(ttl/time.Second), int64(remaining/time.Second))
	case ttl > tmpl.MaxTTL:
		return broker.Grant{}, 0, broker.InvalidField("ttl_seconds", "ttl_seconds %d exceeds the maximum of template %q (%d)", int64(ttl/time.Second), tmpl.Name, int64(tmpl.MaxTTL/time.Second))
	}
	return broker.Grant{
		Template:    tmpl,
		Tools:       tools,
		ActionTools: actionTools,
		TTL:         ttl,
		Audiences:   grantedAuds,
		Scopes:      grantedScopes,
	}, depth, nil
}
