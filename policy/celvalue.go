package policy

import (
	"errors"
	"fmt"

	"cel.dev/cel-go/cel"
)

// Value is a named, compiled CEL expression over an identity token's claims
// (the variable `claims`) that yields a string: an inventory label such as
// an agent's owner. Compiled once at start; safe for concurrent use.
type Value struct {
	Name       string
	Expression string
	program    cel.Program
}

// CompileClaimsValue compiles expr as a string-valued expression over
// `claims`; name labels its errors. A dyn result (a claim read from the map)
// is accepted and checked to be a string when evaluated.
func CompileClaimsValue(name, expr string) (Value, error) {
	if expr == "" {
		return Value{}, errors.New("expression is empty")
	}
	envs, err := templateCELEnvs()
	if err != nil {
		return Value{}, fmt.Errorf("building the CEL environment: %w", err)
	}
	env := envs.claims
	parsed, iss := env.env.Parse(expr)
	if iss.Err() != nil {
		return Value{}, iss.Err()
	}
	checked, iss := env.env.Check(parsed)
	if iss.Err() != nil {
		env.explain(parsed, iss)
		return Value{}, iss.Err()
	}
	if checked.OutputType() != cel.StringType && checked.OutputType() != cel.DynType {
		return Value{}, fmt.Errorf("expression must evaluate to string, not %s", checked.OutputType())
	}
	prg, err := env.env.Program(checked, cel.CostLimit(celCostLimit), cel.InterruptCheckFrequency(100))
	if err != nil {
		return Value{}, err
	}
	return Value{Name: name, Expression: expr, program: prg}, nil
}

// EvalClaims runs the expression over claims (nil is an empty map). An
// error (a missing claim, a non-string result) returns "" and the error.
func (v Value) EvalClaims(claims map[string]any) (string, error) {
	if v.program == nil {
		return "", fmt.Errorf("value %q was never compiled", v.Name)
	}
	out, _, err := v.program.Eval(map[string]any{"claims": claimsVar(claims)})
	if err != nil {
		return "", fmt.Errorf("evaluating value %q: %w", v.Name, err)
	}
	s, ok := out.Value().(string)
	if !ok {
		return "", fmt.Errorf("value %q returned %s, not string", v.Name, out.Type())
	}
	return s, nil
}
