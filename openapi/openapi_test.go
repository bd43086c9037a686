package openapi

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
)

// bodyProblems lists every request or response body of doc that is not a
// named component schema ($ref) with an example that validates against it.
// Bodies reached through components/responses and components/requestBodies
// are checked where they are used, so each problem names an operation.
func bodyProblems(doc *openapi3.T) []string {
	var problems []string
	check := func(where string, content openapi3.Content) {
		for _, mediaType := range sortedKeys(content) {
			mt := content[mediaType]
			at := where + " " + mediaType
			if mt.Schema == nil || !strings.HasPrefix(mt.Schema.Ref, "#/components/schemas/") {
				problems = append(problems, at+": schema is not a named $ref to #/components/schemas")
			}
			examples := map[string]any{}
			if mt.Example != nil {
				examples["example"] = mt.Example
			}
			for name, ex := range mt.Examples {
				if ex != nil && ex.Value != nil {
					examples["examples/"+name] = ex.Value.Value
				}
			}
			if len(examples) == 0 {
				problems = append(problems, at+": no example")
			}
			if mt.Schema == nil || mt.Schema.Value == nil {
				continue
			}
			for _, name := range sortedKeys(examples) {
				err := doc.ValidateSchemaJSON(mt.Schema.Value, examples[name], openapi3.MultiErrors())
				if err != nil {
					problems = append(problems, fmt.Sprintf("%s: %s does not validate: %v", at, name, err))
				}
			}
		}
	}
	for _, path := range doc.Paths.InMatchingOrder() {
		item := doc.Paths.Value(path)
		for method, op := range item.Operations() {
			where := method + " " + path
			if op.RequestBody != nil && op.RequestBody.Value != nil {
				check(where+" request", op.RequestBody.Value.Content)
			}
			if op.Responses == nil {
				continue
			}
			for status, resp := range op.Responses.Map() {
				if resp == nil || resp.Value == nil {
					continue
				}
				check(where+" "+status, resp.Value.Content)
			}
		}
	}
	slices.Sort(problems)
	return problems
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

func load(t *testing.T, spec []byte) *openapi3.T {
	t.Helper()
	doc, err := openapi3.NewLoader().LoadFromData(spec)
	if err != nil {
		t.Fatalf("loading the spec: %v", err)
	}
	return doc
}

// TestSpecValidates checks the document as a whole, examples included
// (kin-openapi validates every example against its schema by default).
func TestSpecValidates(t *testing.T) {
	doc := load(t, Spec)
	if err := doc.Validate(context.Background(), openapi3.EnableExamplesValidation()); err != nil {
		t.Fatalf("openapi.yaml does not validate: %v", err)
	}
}

// TestEveryBodyIsNamedWithAValidExample keeps generated clients stable: an
// inline body schema becomes a generated type named after its operation and
// status, which renames itself whenever the spec moves.
func TestEveryBodyIsNamedWithAValidExample(t *testing.T) {
	for _, p := range bodyProblems(load(t, Spec)) {
		t.Error(p)
	}
}

// TestBodyProblemsFindsFaults shows the check above can fail: an inline
// schema, a missing example and an example of the wrong shape are each named.
func TestBodyProblemsFindsFaults(t *testing.T) {
	const bad = `
openapi: 3.1.0
info: {title: t, version: '1'}
paths:
  /a:
    post:
      requestBody:
        content:
          application/json:
            schema: {type: object}
            example: {}
      responses:
        '200':
          description: ok
          content:
            application/json:
              schema: {$ref: '#/components/schemas/Thing'}
        '201':
          description: ok
          content:
            application/json:
              schema: {$ref: '#/components/schemas/Thing'}
              example: {when: yesterday}
components:
  schemas:
    Thing:
      type: object
      required: [when]
      properties:
        when: {type: string, format: date-time}
`
	got := bodyProblems(load(t, []byte(bad)))
	want := []string{
		"POST /a 200 application/json: no example",
		"POST /a 201 application/json: example does not validate",
		"POST /a request application/json: schema is not a named $ref to #/components/schemas",
	}
	if len(got) != len(want) {
		t.Fatalf("got %d problems, want %d:\n%s", len(got), len(want), strings.Join(got, "\n"))
	}
	for i := range want {
		if !strings.HasPrefix(got[i], want[i]) {
			t.Errorf("problem %d = %q, want prefix %q", i, got[i], want[i])
		}
	}
}
