package policy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode"

	"go.yaml.in/yaml/v3"
)

// MaxFileSize caps one template file. Ops teams write a few
// kilobytes; anything near the cap is a mistake or an attack on the parser.
const MaxFileSize = 1 << 20

// MaxTTL is the longest lifetime any template may allow a task.
const MaxTTL = 24 * time.Hour

var (
	templateNameRE  = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)
	toolNameRE      = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.:/-]{0,127}$`)
	conditionNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._:-]{0,62}$`)
	yamlKeyRE       = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)
	yamlLineRE      = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)
)

// File is the content of one template file. Name is the path shown
// in problems.
type File struct {
	Name string
	Data []byte
}

// Problem is one thing wrong in a template file. Line, Template and
// Field are zero when unknown.
type Problem struct {
	File     string
	Line     int
	Template string // the template's name as written
	Field    string // e.g. templates[2].tools[1]
	Message  string
}

// String formats the problem as `file:line: template "name": field: message`,
// leaving out the parts that are unknown.
func (p Problem) String() string {
	var parts []string
	loc := p.File
	if p.Line > 0 {
		loc += ":" + strconv.Itoa(p.Line)
	}
	if loc != "" {
		parts = append(parts, loc)
	}
	if p.Template != "" {
		parts = append(parts, "template "+strconv.Quote(p.Template))
	}
	if p.Field != "" {
		parts = append(parts, p.Field)
	}
	parts = append(parts, p.Message)
	return strings.Join(parts, ": ")
}

// Errors lists every problem found while loading templates.
type Errors struct {
	Problems []Problem
}

// Error prints one problem per line.
func (e *Errors) Error() string {
	lines := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		lines[i] = p.String()
	}
	return strings.Join(lines, "\n")
}

// ReadFiles reads template files for Load. Each path is a
// file or a directory; a directory contributes its *.yaml and *.yml files in
// name order, not recursing and skipping names that start with a dot (editor
// lock files). A file is read only up to one byte past MaxFileSize,
// so Load reports an oversized file without it being held in
// memory. An unreadable path is an error naming it.
func ReadFiles(paths []string) ([]File, error) {
	var files []File
	for _, p := range paths {
		info, err := os.Stat(p)
		if err != nil {
			return nil, fmt.Errorf("reading templates from %s: %w", p, err)
		}
		if !info.IsDir() {
			f, err := readFile(p)
			if err != nil {
				return nil, err
			}
			files = append(files, f)
			continue
		}
		entries, err := os.ReadDir(p) // sorted by name
		if err != nil {
			return nil, fmt.Errorf("reading templates from %s: %w", p, err)
		}
		for _, e := range entries {
			name := e.Name()
			if ext := filepath.Ext(name); (ext != ".yaml" && ext != ".yml") || strings.HasPrefix(name, ".") {
				continue
			}
			full := filepath.Join(p, name)
			info, err := os.Stat(full) // follows symlinks (Kubernetes ConfigMap mounts)
			if err != nil {
				return nil, fmt.Errorf("reading templates from %s: %w", full, err)
			}
			if info.IsDir() {
				continue
			}
			f, err := readFile(full)
			if err != nil {
				return nil, err
			}
			files = append(files, f)
		}
	}
	return files, nil
}

func readFile(name string) (File, error) {
	fh, err := os.Open(name)
	if err != nil {
		return File{}, fmt.Errorf("reading templates from %s: %w", name, err)
	}
	defer fh.Close()
	data, err := io.ReadAll(io.LimitReader(fh, MaxFileSize+1))
	if err != nil {
		return File{}, fmt.Errorf("reading templates from %s: %w", name, err)
	}
	return File{Name: name, Data: data}, nil
}

// Load parses, validates and compiles template files into a set.
// Template names are unique across all files. knownIssuers are the
// configured names of the trusted issuers; every principal rule must name
// one of them (nil skips that check).
//
// When anything is wrong it returns a *Errors listing every problem
// in every file, each with its file, line, template and field where known,
// and no set: a half-valid set is never loaded.
func Load(files []File, knownIssuers []string) (*Set, error) {
	envs, err := templateCELEnvs()
	if err != nil {
		return nil, err
	}
	l := &templateLoader{
		claimsEnv:  envs.claims,
		requestEnv: envs.request,
		names:      map[string]site{},
		byName:     map[string]*Template{},

		monitorNames: map[string]site{},
	}
	if knownIssuers != nil {
		l.issuers = map[string]bool{}
		for _, iss := range knownIssuers {
			l.issuers[iss] = true
		}
	}
	for _, f := range files {
		l.loadFile(f)
	}
	if len(l.problems) > 0 {
		return nil, &Errors{Problems: l.problems}
	}
	return &Set{byName: l.byName, monitors: l.monitors}, nil
}

// templateCELEnvs builds the CEL environments of templates once: they are
// immutable and safe for concurrent use, and building them costs more than
// compiling a template's conditions.
var templateCELEnvs = sync.OnceValues(func() (struct{ claims, request celEnv }, error) {
	var envs struct{ claims, request celEnv }
	var err error
	if envs.claims, err = claimsEnv(); err != nil {
		return envs, fmt.Errorf("building claims CEL environment: %w", err)
	}
	if envs.request, err = requestEnv(); err != nil {
		return envs, fmt.Errorf("building request CEL environment: %w", err)
	}
	return envs, nil
})

// site is where something was defined.
type site struct {
	file string
	line int
}

// templateLoader collects templates and problems across files.
type templateLoader struct {
	claimsEnv  celEnv
	requestEnv celEnv
	issuers    map[string]bool // nil: any issuer name is accepted

	file string // the file being decoded
	tmpl string // the template being decoded, as written

	names    map[string]site // every valid template name seen, for duplicates
	byName   map[string]*Template
	problems []Problem

	monitorNames map[string]site // every valid monitor name seen
	monitors     []*Monitor
}

// report records a problem at n (nil: no line) in the current file and
// template.
func (l *templateLoader) report(n *yaml.Node, field, format string, args ...any) {
	p := Problem{
		File:     l.file,
		Template: displayName(l.tmpl),
		Field:    field,
		Message:  oneLine(fmt.Sprintf(format, args...)),
	}
	if n != nil {
		p.Line = n.Line
	}
	l.problems = append(l.problems, p)
}

func (l *templateLoader) loadFile(f File) {
	l.file, l.tmpl = f.Name, ""
	start := len(l.problems)
	defer func() { // a file's problems in line order
		slices.SortStableFunc(l.problems[start:], func(a, b Problem) int { return a.Line - b.Line })
	}()
	if len(f.Data) > MaxFileSize {
		l.report(nil, "", "file is larger than %d bytes", MaxFileSize)
		return
	}
	dec := yaml.NewDecoder(bytes.NewReader(f.Data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if !errors.Is(err, io.EOF) { // EOF: an empty file holds no templates
			l.yamlError(err)
		}
		return
	}
	var next yaml.Node
	switch err := dec.Decode(&next); {
	case err == nil:
		l.report(&next, "", "a template file holds one YAML document; found a second one")
	case !errors.Is(err, io.EOF):
		l.yamlError(err)
	}
	if l.rejectAliases(&doc) {
		return
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) == 0 {
		return
	}
	if root := doc.Content[0]; isNull(root) && root.Value == "" {
		return // nothing but "---" and comments
	}
	decodeMapping(l, doc.Content[0], "", fileFields, &struct{}{})
}

// yamlError reports a syntax error with the line the YAML library names.
func (l *templateLoader) yamlError(err error) {
	msg := err.Error()
	if m := yamlLineRE.FindStringSubmatch(msg); m != nil {
		line, _ := strconv.Atoi(m[1])
		l.report(&yaml.Node{Line: line}, "", "invalid YAML: %s", m[2])
		return
	}
	l.report(nil, "", "invalid YAML: %s", strings.TrimPrefix(msg, "yaml: "))
}

// rejectAliases refuses anchors and aliases, reporting the first one and
// how many there are. Templates have no use for them, and refusing them
// rules out alias-expansion bombs in any later decoding. It walks with an
// explicit stack: the YAML parser already bounds nesting, but the walk must
// not depend on that.
func (l *templateLoader) rejectAliases(root *yaml.Node) bool {
	var first *yaml.Node
	count := 0
	stack := []*yaml.Node{root}
	for len(stack) > 0 {
		n := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if n.Kind == yaml.AliasNode || n.Anchor != "" {
			if first == nil {
				first = n
			}
			count++
		}
		if n.Kind != yaml.AliasNode {
			for i := len(n.Content) - 1; i >= 0; i-- { // in document order
				stack = append(stack, n.Content[i])
			}
		}
	}
	if first == nil {
		return false
	}
	l.report(first, "", "YAML anchors and aliases are not allowed in template files (found %d)", count)
	return true
}

// field is one key of a YAML mapping: whether it must be present and how to
// decode its value into the block being built (of type T). A block's schema
// is a []field[T]; adding an optional block to templates means adding one
// entry to templateFields and a decoder for it.
type field[T any] struct {
	key      string
	required bool
	decode   func(l *templateLoader, n *yaml.Node, path string, into T)
}

// decodeMapping decodes mapping n at path with the schema fields into into,
// reporting keys that are unknown or repeated and required keys that are
// missing. It reports false if n is not a mapping.
func decodeMapping[T any](l *templateLoader, n *yaml.Node, path string, fields []field[T], into T) bool {
	if n.Kind != yaml.MappingNode {
		what := "must"
		if path == "" {
			what = "the top level must"
		}
		l.report(n, path, "%s be a mapping with the keys %s", what, keyList(fields))
		return false
	}
	seen := map[string]*yaml.Node{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Kind != yaml.ScalarNode {
			l.report(k, path, "mapping keys must be plain strings")
			continue
		}
		kpath := joinPath(path, k.Value)
		if first, dup := seen[k.Value]; dup {
			l.report(k, kpath, "key repeated (first at line %d)", first.Line)
			continue
		}
		seen[k.Value] = k
		fi := slices.IndexFunc(fields, func(f field[T]) bool { return f.key == k.Value })
		if fi < 0 {
			l.report(k, kpath, "unknown field; expected one of %s", keyList(fields))
			continue
		}
		fields[fi].decode(l, v, kpath, into)
	}
	for _, f := range fields {
		if _, ok := seen[f.key]; f.required && !ok {
			l.report(n, joinPath(path, f.key), "is required")
		}
	}
	return true
}

func keyList[T any](fields []field[T]) string {
	keys := make([]string, len(fields))
	for i, f := range fields {
		keys[i] = f.key
	}
	return strings.Join(keys, ", ")
}

// joinPath appends key to a field path, quoting keys that are not plain
// identifiers so a path always stays on one line.
func joinPath(path, key string) string {
	if !yamlKeyRE.MatchString(key) {
		return path + "[" + strconv.Quote(truncate(key, 64)) + "]"
	}
	if path == "" {
		return key
	}
	return path + "." + key
}

func indexPath(path string, i int) string { return path + "[" + strconv.Itoa(i) + "]" }

func isNull(n *yaml.Node) bool { return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null" }

// isEmptyList reports whether n is null or a list with nothing in it.
func isEmptyList(n *yaml.Node) bool {
	return isNull(n) || n.Kind == yaml.SequenceNode && len(n.Content) == 0
}

// str decodes a scalar as a string; null is "".
func (l *templateLoader) str(n *yaml.Node, path string) (string, bool) {
	if n.Kind != yaml.ScalarNode {
		l.report(n, path, "must be a string")
		return "", false
	}
	if isNull(n) {
		return "", true
	}
	return n.Value, true
}

// seq decodes a sequence; null is an empty one.
func (l *templateLoader) seq(n *yaml.Node, path, what string) ([]*yaml.Node, bool) {
	if isNull(n) {
		return nil, true
	}
	if n.Kind != yaml.SequenceNode {
		l.report(n, path, "must be a list of %s", what)
		return nil, false
	}
	return n.Content, true
}

// stringList decodes a list of strings, checking each with check (which
// returns a problem message or "") and reporting duplicates.
func (l *templateLoader) stringList(n *yaml.Node, path, what string, check func(string) string) []string {
	items, ok := l.seq(n, path, what)
	if !ok {
		return nil
	}
	out := make([]string, 0, len(items))
	first := map[string]int{}
	for i, item := range items {
		ipath := indexPath(path, i)
		s, ok := l.str(item, ipath)
		if !ok {
			continue
		}
		if msg := check(s); msg != "" {
			l.report(item, ipath, "%s", msg)
			continue
		}
		if j, dup := first[s]; dup {
			l.report(item, ipath, "%q is listed twice (also at %s)", truncate(s, 64), indexPath(path, j))
			continue
		}
		first[s] = i
		out = append(out, s)
	}
	return out
}

// compile compiles a CEL condition, reporting a failure at n.
func (l *templateLoader) compile(env celEnv, n *yaml.Node, path, name string) *Condition {
	expr, ok := l.str(n, path)
	if !ok {
		return nil
	}
	c, err := compileCondition(env, name, expr)
	if err != nil {
		l.report(n, path, "invalid CEL: %s", celMessage(err))
		return nil
	}
	return &c
}

// celMessage squeezes a CEL compile error (several lines with a caret
// diagram) into "line:col: message" parts on one line.
func celMessage(err error) string {
	var msgs []string
	for ln := range strings.SplitSeq(err.Error(), "\n") {
		if rest, ok := strings.CutPrefix(ln, "ERROR: <input>:"); ok {
			msgs = append(msgs, rest)
		}
	}
	if len(msgs) == 0 {
		return err.Error()
	}
	return strings.Join(msgs, "; ")
}

// fileFields is the schema of a template file's top level.
var fileFields = []field[*struct{}]{
	{key: "templates", required: true, decode: func(l *templateLoader, n *yaml.Node, path string, _ *struct{}) {
		items, ok := l.seq(n, path, "templates")
		if !ok {
			return
		}
		for i, item := range items {
			l.decodeTemplate(item, indexPath(path, i))
		}
	}},
	{key: "monitors", decode: decodeMonitors},
}

// decodeTemplate decodes, validates and compiles one template and adds it
// to the set if it has no problems.
func (l *templateLoader) decodeTemplate(n *yaml.Node, path string) {
	l.tmpl = ""
	defer func() { l.tmpl = "" }()
	if n.Kind == yaml.MappingNode { // name first, so every problem can carry it
		for i := 0; i+1 < len(n.Content); i += 2 {
			if k, v := n.Content[i], n.Content[i+1]; k.Value == "name" && v.Kind == yaml.ScalarNode {
				l.tmpl = v.Value
				break
			}
		}
	}
	before := len(l.problems)
	t := &Template{Source: l.file}
	if !decodeMapping(l, n, path, templateFields, t) {
		return
	}
	l.checkUpstreamTools(path, t)
	if len(l.problems) == before {
		l.byName[t.Name] = t
	}
}

// templateFields is the schema of one template.
var templateFields = []field[*Template]{
	{key: "name", required: true, decode: decodeTemplateName},
	{key: "description", decode: func(l *templateLoader, n *yaml.Node, path string, t *Template) {
		t.Description, _ = l.str(n, path)
	}},
	{key: "principals", required: true, decode: decodePrincipals},
	{key: "users", decode: decodeUsers},
	{key: "ttl", required: true, decode: decodeTTL},
	{key: "tools", required: true, decode: func(l *templateLoader, n *yaml.Node, path string, t *Template) {
		t.Tools = l.stringList(n, path, "tool names", checkToolPattern)
		if isEmptyList(n) {
			l.report(n, path, "must list at least one tool")
		}
	}},
	{key: "audiences", required: true, decode: func(l *templateLoader, n *yaml.Node, path string, t *Template) {
		t.Audiences = l.stringList(n, path, "audiences", checkAudience)
		if isEmptyList(n) {
			l.report(n, path, "must list at least one audience")
		}
	}},
	{key: "scopes", decode: func(l *templateLoader, n *yaml.Node, path string, t *Template) {
		t.Scopes = l.stringList(n, path, "scopes", checkScope)
	}},
	{key: "conditions", decode: decodeConditions},
	{key: "delegation", decode: decodeDelegation},
	{key: "budgets", decode: decodeBudgets},
	{key: "sensitive_tools", decode: decodeSensitiveTools},
	{key: "vault", decode: decodeVault},
	{key: "upstreams", decode: decodeUpstreams},
}

func decodeTemplateName(l *templateLoader, n *yaml.Node, path string, t *Template) {
	name, ok := l.str(n, path)
	if !ok {
		return
	}
	if !templateNameRE.MatchString(name) {
		l.report(n, path, "%q is not a valid template name: use 1 to 63 of a-z, 0-9, '.', '_', '-', starting with a letter or digit", truncate(name, 64))
		return
	}
	if first, dup := l.names[name]; dup {
		l.report(n, path, "duplicate template name; first defined at %s:%d", first.file, first.line)
		return
	}
	l.names[name] = site{file: l.file, line: n.Line}
	t.Name = name
}

func decodePrincipals(l *templateLoader, n *yaml.Node, path string, t *Template) {
	t.Principals = decodeRules(l, n, path, "principal rules", "must list at least one principal rule", principalFields)
}

// decodeRules decodes a non-empty list of principal-shaped rules.
func decodeRules(l *templateLoader, n *yaml.Node, path, what, empty string, fields []field[*PrincipalRule]) []PrincipalRule {
	items, ok := l.seq(n, path, what)
	if !ok {
		return nil
	}
	if isEmptyList(n) {
		l.report(n, path, "%s", empty)
		return nil
	}
	var rules []PrincipalRule
	for i, item := range items {
		r := &PrincipalRule{}
		if decodeMapping(l, item, indexPath(path, i), fields, r) {
			rules = append(rules, *r)
		}
	}
	return rules
}

// principalFields is the schema of one principal rule.
var principalFields = []field[*PrincipalRule]{
	{key: "issuer", required: true, decode: func(l *templateLoader, n *yaml.Node, path string, r *PrincipalRule) {
		iss, ok := l.str(n, path)
		switch {
		case !ok:
		case iss == "":
			l.report(n, path, "must name a trusted issuer")
		case l.issuers != nil && !l.issuers[iss]:
			known := slices.Sorted(maps.Keys(l.issuers))
			if len(known) == 0 {
				l.report(n, path, "unknown issuer %q: no trusted issuers are configured", truncate(iss, 64))
			} else {
				l.report(n, path, "unknown issuer %q; known issuers: %s", truncate(iss, 64), strings.Join(known, ", "))
			}
		default:
			r.Issuer = iss
		}
	}},
	{key: "condition", decode: func(l *templateLoader, n *yaml.Node, path string, r *PrincipalRule) {
		name := path // named like "principals[0].condition" in evaluation errors
		if i := strings.LastIndex(path, "principals["); i >= 0 {
			name = path[i:]
		}
		r.Condition = l.compile(l.claimsEnv, n, path, name)
	}},
}

// decodeUsers decodes a template's users block: rules shaped like
// principal rules, over the end user's token.
func decodeUsers(l *templateLoader, n *yaml.Node, path string, t *Template) {
	t.Users = decodeRules(l, n, path, "user rules", "must list at least one user rule, or be left out", userFields)
}

// userFields is the schema of one users rule: the issuer check of a
// principal rule, and a condition named like "users[0].condition".
var userFields = []field[*PrincipalRule]{
	principalFields[0],
	{key: "condition", decode: func(l *templateLoader, n *yaml.Node, path string, r *PrincipalRule) {
		name := path
		if i := strings.LastIndex(path, "users["); i >= 0 {
			name = path[i:]
		}
		r.Condition = l.compile(l.claimsEnv, n, path, name)
	}},
}

// ttlBlock is the ttl block as it is decoded.
type ttlBlock struct {
	def, max, lifetime         time.Duration
	defNode, maxNode, lifeNode *yaml.Node
}

func decodeTTL(l *templateLoader, n *yaml.Node, path string, t *Template) {
	b := &ttlBlock{}
	if !decodeMapping(l, n, path, ttlFields, b) {
		return
	}
	if b.defNode != nil && b.maxNode != nil && b.def > b.max {
		l.report(b.defNode, joinPath(path, "default"), "default %s is longer than max %s", b.def, b.max)
	}
	if b.lifeNode != nil && b.maxNode != nil && b.lifetime < b.max {
		l.report(b.lifeNode, joinPath(path, "max_lifetime"), "max_lifetime %s is shorter than max %s", b.lifetime, b.max)
	}
	t.DefaultTTL, t.MaxTTL, t.MaxLifetime = b.def, b.max, b.lifetime
	if b.lifeNode == nil {
		t.MaxLifetime = b.max
	}
}

// ttlFields is the schema of a template's ttl block.
var ttlFields = []field[*ttlBlock]{
	{key: "default", required: true, decode: func(l *templateLoader, n *yaml.Node, path string, b *ttlBlock) {
		if d, ok := l.duration(n, path); ok {
			b.def, b.defNode = d, n
		}
	}},
	{key: "max", required: true, decode: func(l *templateLoader, n *yaml.Node, path string, b *ttlBlock) {
		if d, ok := l.duration(n, path); ok {
			b.max, b.maxNode = d, n
		}
	}},
	// max_lifetime bounds renewals (POST /v1/tasks/{id}/renew): a task
	// never lives past created_at + max_lifetime.
	{key: "max_lifetime", decode: func(l *templateLoader, n *yaml.Node, path string, b *ttlBlock) {
		if d, ok := l.duration(n, path); ok {
			b.lifetime, b.lifeNode = d, n
		}
	}},
}

// duration decodes a positive Go duration of at most MaxTTL.
func (l *templateLoader) duration(n *yaml.Node, path string) (time.Duration, bool) {
	s, ok := l.str(n, path)
	if !ok {
		return 0, false
	}
	d, err := time.ParseDuration(s)
	switch {
	case err != nil:
		l.report(n, path, "%q is not a duration: write it like 5m or 1h30m", truncate(s, 64))
	case d <= 0:
		l.report(n, path, "must be longer than zero")
	case d > MaxTTL:
		l.report(n, path, "%s is longer than the limit of %s", d, MaxTTL)
	default:
		return d, true
	}
	return 0, false
}

func decodeConditions(l *templateLoader, n *yaml.Node, path string, t *Template) {
	items, ok := l.seq(n, path, "conditions")
	if !ok {
		return
	}
	first := map[string]int{}
	for i, item := range items {
		ipath := indexPath(path, i)
		b := &conditionBlock{}
		if !decodeMapping(l, item, ipath, conditionFields, b) || b.nameNode == nil || b.exprNode == nil {
			continue
		}
		if j, dup := first[b.name]; dup {
			l.report(b.nameNode, joinPath(ipath, "name"), "condition name %q is used twice (also at %s)", b.name, indexPath(path, j))
			continue
		}
		first[b.name] = i
		if c := l.compile(l.requestEnv, b.exprNode, joinPath(ipath, "expression"), b.name); c != nil {
			t.Conditions = append(t.Conditions, *c)
		}
	}
}

// conditionBlock is one entry of a template's conditions as it is decoded.
// The expression is compiled once the name is known.
type conditionBlock struct {
	name               string
	nameNode, exprNode *yaml.Node
}

// conditionFields is the schema of one template condition.
var conditionFields = []field[*conditionBlock]{
	{key: "name", required: true, decode: func(l *templateLoader, n *yaml.Node, path string, b *conditionBlock) {
		name, ok := l.str(n, path)
		if !ok {
			return
		}
		if !conditionNameRE.MatchString(name) {
			l.report(n, path, "%q is not a valid condition name: use 1 to 63 of A-Z, a-z, 0-9, '.', '_', ':', '-', starting with a letter or digit", truncate(name, 64))
			return
		}
		b.name, b.nameNode = name, n
	}},
	{key: "expression", required: true, decode: func(_ *templateLoader, n *yaml.Node, _ string, b *conditionBlock) {
		b.exprNode = n
	}},
}

// checkToolPattern accepts an exact tool name or a "prefix.*" pattern whose
// prefix is itself a valid tool name.
func checkToolPattern(s string) string {
	if prefix, ok := strings.CutSuffix(s, ".*"); ok {
		if !ValidToolName(prefix) {
			return fmt.Sprintf("%q is not a valid tool pattern: the part before \".*\" must be a tool name", truncate(s, 64))
		}
		return ""
	}
	if strings.Contains(s, "*") {
		return fmt.Sprintf("%q is not a valid tool pattern: the only wildcard is a trailing \".*\" after a tool name", truncate(s, 64))
	}
	if !ValidToolName(s) {
		return fmt.Sprintf("%q is not a valid tool name: %s", truncate(s, 64), ToolNameRules)
	}
	return ""
}

func checkAudience(s string) string {
	if strings.TrimSpace(s) == "" {
		return "audience must not be empty"
	}
	return ""
}

// checkScope accepts an OAuth scope token (RFC 6749 section 3.3): printable
// ASCII except space, '"' and '\'.
func checkScope(s string) string {
	if s == "" {
		return "scope must not be empty"
	}
	for _, r := range s {
		if r < 0x21 || r > 0x7e || r == '"' || r == '\\' {
			return fmt.Sprintf("%q is not a valid scope: use printable ASCII without spaces, '\"' or '\\'", truncate(s, 64))
		}
	}
	return ""
}

// displayName is a template name as problems show it.
func displayName(s string) string { return truncate(oneLine(s), 64) }

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return strings.ToValidUTF8(s[:n], "") + "..."
}

// oneLine keeps a message on one line, so Error prints one problem per line.
func oneLine(s string) string {
	return strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return ' '
		}
		return r
	}, s)
}
