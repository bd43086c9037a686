package policy

import (
	"errors"
	"fmt"

	"cel.dev/cel-go/cel"
)

// celCostLimit bounds the work one condition may do at request time, so a
// template cannot turn policy evaluation into a denial of service.
const celCostLimit = 100_000

// Condition is a named, compiled CEL expression that must evaluate to true.
// Programs are compiled once (at start or reload) and are safe for
// concurrent use.
type Condition struct {
	Name       string
	Expression string
	program    cel.Program
}

// claimsEnv is the environment of conditions over an identity token's
// claims alone: trusted-issuer conditions, template principal and users
// rules, delegation conditions and admin roles. claims stays a map: its
// keys are the identity provider's.
func claimsEnv() (celEnv, error) {
	return newCELEnv([]celVar{{name: "claims", typ: claimsType}})
}

// CompileClaimsCondition compiles expr as a condition over an identity
// token's claims alone (the variable `claims`), as trusted-issuer conditions
// and admin roles are; name labels its errors. Evaluate it with EvalClaims.
func CompileClaimsCondition(name, expr string) (Condition, error) {
	envs, err := templateCELEnvs()
	if err != nil {
		return Condition{}, fmt.Errorf("building the CEL environment: %w", err)
	}
	return compileCondition(envs.claims, name, expr)
}

// requestEnv is the environment of template conditions: who asks
// (principal), on whose behalf (user, empty when the agent acts for
// itself, so size(user) == 0), what they ask for (request) and when (now).
func requestEnv() (celEnv, error) {
	return newCELEnv([]celVar{
		{name: "principal", obj: identityType},
		{name: "user", obj: identityType},
		{name: "request", obj: requestType},
		{name: "now", typ: cel.TimestampType},
	}, sizeOfIdentity())
}

// actionEnvironment is the environment of sensitive-tool conditions.
// action is {tool, args, context} (context is what the agent asserts), task
// is what Valet recorded, principal the agent acting, resource the
// ops-defined labels of the entry's resource plus its id.
func actionEnvironment() (celEnv, error) {
	return newCELEnv([]celVar{
		{name: "action", obj: actionType},
		{name: "task", obj: taskType},
		{name: "principal", obj: agentType},
		{name: "resource", typ: cel.MapType(cel.StringType, cel.StringType)},
		{name: "now", typ: cel.TimestampType},
	})
}

// compileCondition type-checks expr in env, requires a bool result, and
// returns the program ready to evaluate. A checker error says what exists
// (the fields of an object, the variables of env).
func compileCondition(env celEnv, name, expr string) (Condition, error) {
	if expr == "" {
		return Condition{}, errors.New("expression is empty")
	}
	parsed, iss := env.env.Parse(expr)
	if iss.Err() != nil {
		return Condition{}, iss.Err()
	}
	checked, iss := env.env.Check(parsed)
	if iss.Err() != nil {
		env.explain(parsed, iss)
		return Condition{}, iss.Err()
	}
	if err := env.refuseConstruction(checked); err != nil {
		return Condition{}, err
	}
	if checked.OutputType() != cel.BoolType && checked.OutputType() != cel.DynType {
		return Condition{}, fmt.Errorf("expression must evaluate to bool, not %s", checked.OutputType())
	}
	prg, err := env.env.Program(checked, cel.CostLimit(celCostLimit), cel.InterruptCheckFrequency(100))
	if err != nil {
		return Condition{}, err
	}
	return Condition{Name: name, Expression: expr, program: prg}, nil
}

// Eval runs the condition. Anything but a clean true (false, an error, a
// non-bool) is a denial: policy fails closed.
func (c Condition) Eval(vars map[string]any) (bool, error) {
	if c.program == nil {
		return false, fmt.Errorf("condition %q was never compiled", c.Name)
	}
	out, _, err := c.program.Eval(vars)
	if err != nil {
		return false, fmt.Errorf("evaluating condition %q: %w", c.Name, err)
	}
	b, ok := out.Value().(bool)
	if !ok {
		return false, fmt.Errorf("condition %q returned %s, not bool", c.Name, out.Type())
	}
	return b, nil
}

// EvalClaims runs a condition over an identity token's claims alone (nil
// is an empty map), as Eval does.
func (c Condition) EvalClaims(claims map[string]any) (bool, error) {
	return c.Eval(map[string]any{"claims": claimsVar(claims)})
}
