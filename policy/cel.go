package policy

import (
	"errors"
	"fmt"

	"cel.dev/cel-go/cel"
	"cel.dev/cel-go/ext"
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
// claims alone: trusted-issuer conditions and template principal rules.
func claimsEnv() (*cel.Env, error) {
	return cel.NewEnv(
		cel.Variable("claims", cel.MapType(cel.StringType, cel.DynType)),
		ext.Strings(),
	)
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
// itself), what they ask for (request) and when (now).
func requestEnv() (*cel.Env, error) {
	return cel.NewEnv(
		cel.Variable("principal", cel.MapType(cel.StringType, cel.DynType)),
		cel.Variable("user", cel.MapType(cel.StringType, cel.DynType)),
		cel.Variable("request", cel.MapType(cel.StringType, cel.DynType)),
		cel.Variable("now", cel.TimestampType),
		ext.Strings(),
	)
}

// compileCondition type-checks expr in env, requires a bool result, and
// returns the program ready to evaluate.
func compileCondition(env *cel.Env, name, expr string) (Condition, error) {
	if expr == "" {
		return Condition{}, errors.New("expression is empty")
	}
	ast, iss := env.Compile(expr)
	if iss.Err() != nil {
		return Condition{}, iss.Err()
	}
	if ast.OutputType() != cel.BoolType && ast.OutputType() != cel.DynType {
		return Condition{}, fmt.Errorf("expression must evaluate to bool, not %s", ast.OutputType())
	}
	prg, err := env.Program(ast, cel.CostLimit(celCostLimit), cel.InterruptCheckFrequency(100))
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
