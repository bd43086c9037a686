package stepup

import (
	"encoding/json"
	"errors"
	"fmt"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/policy"
)

// The runtime half of a template's sensitive_tools: what a sensitive
// tool's condition sees at request time (see policy.SensitiveTool for the
// template side).

// resourceOf returns the labels of st's resource, with its id, as CEL sees
// them; an unknown resource id refuses (fail closed).
func (s *Service) resourceOf(st *policy.SensitiveTool) (map[string]any, error) {
	out := map[string]any{}
	if st.Resource == "" {
		return out, nil
	}
	labels, ok := s.resources[st.Resource]
	if !ok {
		return nil, &broker.Error{Code: broker.CodeForbidden, Rule: "resource",
			Message: fmt.Sprintf("resource %q of tool %q is not configured", st.Resource, st.Tool),
			Err:     errors.New("resource missing from config `resources:`")}
	}
	for k, v := range labels {
		out[k] = v
	}
	out["id"] = st.Resource
	return out, nil
}

func (s *Service) actionVars(task broker.Task, c broker.TaskClaims, req ActionRequest, resource map[string]any) map[string]any {
	var args map[string]any
	_ = json.Unmarshal(req.Args, &args) // canonical: always an object
	if args == nil {
		args = map[string]any{}
	}
	ctxv := req.Context
	if ctxv == nil {
		ctxv = map[string]any{}
	}
	act := task.Act
	if act == nil {
		act = []string{}
	}
	return map[string]any{
		"action": map[string]any{"tool": req.Tool, "args": args, "context": ctxv},
		"task": map[string]any{"id": task.ID, "template": task.Template, "intent": task.Intent, "tools": task.Tools,
			"deadline": task.Deadline, "depth": int64(task.Depth), "parent": task.Parent, "jkt": task.JKT},
		"principal": map[string]any{"issuer": task.Issuer, "subject": task.Agent, "act": act},
		"resource":  resource,
		"now":       s.now(),
	}
}
