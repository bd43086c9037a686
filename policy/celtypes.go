package policy

import (
	"fmt"
	"strings"

	"cel.dev/cel-go/cel"
	"cel.dev/cel-go/common/ast"
	"cel.dev/cel-go/common/types"
	"cel.dev/cel-go/common/types/ref"
	"cel.dev/cel-go/ext"
)

// objectType is a shape conditions see, declared so that the type checker
// refuses a field that does not exist (request.intnet) or a value used as
// the wrong type (size(request.ttl)) when a template loads, rather than
// the condition denying every request at run time.
//
// Only the checker sees these types. At run time the values are still the
// Go maps broker builds: the fields carry no accessor, so CEL reads them as
// map keys, as it did when every variable was a map(string, dyn), and
// evaluation costs the same.
type objectType struct {
	name   string
	fields []objectField
}

type objectField struct {
	name string
	typ  *cel.Type
}

func (o *objectType) celType() *cel.Type { return cel.ObjectType(o.name) }

func (o *objectType) fieldNames() string {
	names := make([]string, len(o.fields))
	for i, f := range o.fields {
		names[i] = f.name
	}
	return strings.Join(names, ", ")
}

var (
	claimsType = cel.MapType(cel.StringType, cel.DynType)
	// identityType is principal and user in template conditions.
	identityType = &objectType{"valet.Identity", []objectField{
		{"issuer", cel.StringType}, {"issuer_url", cel.StringType}, {"subject", cel.StringType}, {"claims", claimsType}}}
	// requestType is request in template conditions.
	requestType = &objectType{"valet.Request", []objectField{
		{"template", cel.StringType}, {"intent", cel.StringType}, {"tools", cel.ListType(cel.StringType)},
		{"ttl", cel.DurationType}, {"context", cel.MapType(cel.StringType, cel.DynType)}}}
	// actionType is action in sensitive-tool conditions.
	actionType = &objectType{"valet.Action", []objectField{
		{"tool", cel.StringType}, {"args", cel.MapType(cel.StringType, cel.DynType)}, {"context", cel.MapType(cel.StringType, cel.DynType)}}}
	// taskType is task in sensitive-tool conditions: what Valet recorded.
	taskType = &objectType{"valet.Task", []objectField{
		{"id", cel.StringType}, {"template", cel.StringType}, {"intent", cel.StringType}, {"tools", cel.ListType(cel.StringType)},
		{"deadline", cel.TimestampType}, {"depth", cel.IntType}, {"parent", cel.StringType}, {"jkt", cel.StringType}}}
	// agentType is principal in sensitive-tool conditions: the agent acting
	// and the chain it acts for.
	agentType = &objectType{"valet.Agent", []objectField{
		{"issuer", cel.StringType}, {"subject", cel.StringType}, {"act", cel.ListType(cel.StringType)}}}
)

// objectTypes declares objs to the type checker, deferring every other
// name to the environment's provider.
func objectTypes(objs ...*objectType) cel.EnvOption {
	return func(env *cel.Env) (*cel.Env, error) {
		p := &objectProvider{Provider: env.CELTypeProvider(), objs: map[string]*objectType{}}
		for _, o := range objs {
			p.objs[o.name] = o
		}
		return cel.CustomTypeProvider(p)(env)
	}
}

// objectProvider is a types.Provider that knows the objectTypes.
type objectProvider struct {
	types.Provider
	objs map[string]*objectType
}

func (p *objectProvider) FindStructType(name string) (*types.Type, bool) {
	if _, ok := p.objs[name]; ok {
		return types.NewTypeTypeWithParam(types.NewObjectType(name)), true
	}
	return p.Provider.FindStructType(name)
}

func (p *objectProvider) FindStructFieldNames(name string) ([]string, bool) {
	o, ok := p.objs[name]
	if !ok {
		return p.Provider.FindStructFieldNames(name)
	}
	names := make([]string, len(o.fields))
	for i, f := range o.fields {
		names[i] = f.name
	}
	return names, true
}

// FindStructFieldType gives a field its type and no accessor, so the
// interpreter reads it as a map key.
func (p *objectProvider) FindStructFieldType(name, field string) (*types.FieldType, bool) {
	o, ok := p.objs[name]
	if !ok {
		return p.Provider.FindStructFieldType(name, field)
	}
	for _, f := range o.fields {
		if f.name == field {
			return &types.FieldType{Type: f.typ}, true
		}
	}
	return nil, false
}

// NewValue refuses to build the declared shapes: they are Valet's to fill.
func (p *objectProvider) NewValue(name string, fields map[string]ref.Val) ref.Val {
	if _, ok := p.objs[name]; ok {
		return types.NewErr("%s cannot be constructed in a condition", name)
	}
	return p.Provider.NewValue(name, fields)
}

// sizeOfIdentity keeps size(user) == 0 meaning "no user", the docs' way
// to write a condition that holds when the agent acts for itself. It only
// declares the overload: the standard size binding counts the map's keys.
func sizeOfIdentity() cel.EnvOption {
	return cel.Function("size", cel.Overload("size_valet_identity", []*cel.Type{identityType.celType()}, cel.IntType))
}

// celEnv is a CEL environment and the variables declared in it, for
// errors that say what exists.
type celEnv struct {
	env  *cel.Env
	vars []celVar
}

type celVar struct {
	name string
	typ  *cel.Type
	obj  *objectType // nil: not an object
}

// newCELEnv builds an environment of vars with the string extensions.
func newCELEnv(vars []celVar, opts ...cel.EnvOption) (celEnv, error) {
	var objs []*objectType
	for _, v := range vars {
		if v.obj != nil {
			objs = append(objs, v.obj)
			v.typ = v.obj.celType()
		}
		opts = append(opts, cel.Variable(v.name, v.typ))
	}
	if len(objs) > 0 {
		opts = append([]cel.EnvOption{objectTypes(objs...)}, opts...)
	}
	env, err := cel.NewEnv(append(opts, ext.Strings())...)
	return celEnv{env: env, vars: vars}, err
}

// explain adds to the checker's errors what exists: the fields of the
// object an undefined field was selected from, and the variables of the
// environment for an undeclared reference.
func (e celEnv) explain(parsed *cel.Ast, iss *cel.Issues) {
	var nav ast.NavigableExpr
	for _, ce := range iss.Errors() {
		switch {
		case strings.HasPrefix(ce.Message, "undefined field"):
			if nav == nil {
				nav = ast.NavigateAST(parsed.NativeRep())
			}
			if v, ok := e.operand(nav, ce.ExprID); ok {
				ce.Message += fmt.Sprintf(" (%s has %s)", v.name, v.obj.fieldNames())
			}
		case strings.HasPrefix(ce.Message, "undeclared reference"):
			names := make([]string, len(e.vars))
			for i, v := range e.vars {
				names[i] = v.name
			}
			ce.Message += fmt.Sprintf(" (variables here: %s)", strings.Join(names, ", "))
		}
	}
}

// refuseConstruction reports an expression that builds one of the declared
// shapes (valet.Request{...}): only Valet fills them, and at run time such
// a value could only fail.
func (e celEnv) refuseConstruction(checked *cel.Ast) error {
	nav := ast.NavigateAST(checked.NativeRep())
	for _, x := range ast.MatchDescendants(nav, ast.KindMatcher(ast.StructKind)) {
		name := x.AsStruct().TypeName()
		for _, v := range e.vars {
			if v.obj != nil && strings.TrimPrefix(name, ".") == v.obj.name {
				return fmt.Errorf("%s cannot be constructed in a condition: Valet fills it, as the variable %s", v.obj.name, v.name)
			}
		}
	}
	return nil
}

// operand returns the object variable that the select expression id reads
// a field of; false when it reads from anything else.
func (e celEnv) operand(nav ast.NavigableExpr, id int64) (celVar, bool) {
	for _, sel := range ast.MatchDescendants(nav, func(x ast.NavigableExpr) bool { return x.ID() == id && x.Kind() == ast.SelectKind }) {
		op := sel.AsSelect().Operand()
		if op.Kind() != ast.IdentKind {
			continue
		}
		for _, v := range e.vars {
			if v.name == op.AsIdent() && v.obj != nil {
				return v, true
			}
		}
	}
	return celVar{}, false
}
