package main

import (
	"errors"
	"fmt"
	"reflect"
	"regexp"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"
)

// unknownKeys walks the YAML document n against the fields of t (the
// `yaml` tags) and reports every key that names no field, with its line,
// its path and the keys valid there: all of them in one run, where the
// decoder's KnownFields stops at the first.
func unknownKeys(n *yaml.Node, t reflect.Type) []error {
	var errs []error
	var walk func(n *yaml.Node, t reflect.Type, path string)
	walk = func(n *yaml.Node, t reflect.Type, path string) {
		for t.Kind() == reflect.Pointer {
			t = t.Elem()
		}
		switch {
		case n.Kind == yaml.DocumentNode:
			for _, c := range n.Content {
				walk(c, t, path)
			}
		case n.Kind == yaml.AliasNode && n.Alias != nil:
			walk(n.Alias, t, path)
		case n.Kind == yaml.MappingNode && t.Kind() == reflect.Struct:
			fields := map[string]reflect.Type{}
			for i := range t.NumField() {
				f := t.Field(i)
				name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
				if f.IsExported() && name != "" && name != "-" {
					fields[name] = f.Type
				}
			}
			for i := 0; i+1 < len(n.Content); i += 2 {
				k := n.Content[i]
				ft, ok := fields[k.Value]
				if !ok {
					valid := make([]string, 0, len(fields))
					for name := range fields {
						valid = append(valid, name)
					}
					slices.Sort(valid)
					errs = append(errs, fmt.Errorf("line %d: %s: unknown key %q; valid keys here: %s", k.Line, join(path, k.Value), k.Value, strings.Join(valid, ", ")))
					continue
				}
				walk(n.Content[i+1], ft, join(path, k.Value))
			}
		case n.Kind == yaml.MappingNode && t.Kind() == reflect.Map:
			for i := 0; i+1 < len(n.Content); i += 2 {
				walk(n.Content[i+1], t.Elem(), join(path, n.Content[i].Value))
			}
		case n.Kind == yaml.SequenceNode && t.Kind() == reflect.Slice:
			for i, c := range n.Content {
				walk(c, t.Elem(), fmt.Sprintf("%s[%d]", path, i))
			}
		}
	}
	walk(n, t, "")
	return errs
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// goTypes are Go type names in yaml.v3's messages ("into main.RedisConfig",
// "into int64", "into []string"), which mean nothing to whoever wrote the
// file.
var goTypes = regexp.MustCompile(`into (\[\])?(map\[[^\]]*\])?(\*?[A-Za-z0-9_]+\.)?([A-Za-z0-9_]+)`)

// yamlTags are yaml.v3's "cannot unmarshal !!str `abc`".
var yamlTags = regexp.MustCompile("cannot unmarshal !!([a-z]+)( `([^`]*)`)?")

func strconvQuote(s string) string { return fmt.Sprintf("%q", s) }

// plainYAMLError rewrites a yaml.v3 decoding error for people: one error
// per problem, Go type names replaced by what the value should be.
func plainYAMLError(err error) []error {
	var te *yaml.TypeError
	msgs := []string{err.Error()}
	if errors.As(err, &te) {
		msgs = te.Errors
	}
	out := make([]error, 0, len(msgs))
	for _, m := range msgs {
		m = strings.TrimPrefix(m, "yaml: ")
		m = yamlTags.ReplaceAllStringFunc(m, func(s string) string {
			sub := yamlTags.FindStringSubmatch(s)
			switch {
			case sub[1] == "map":
				return "found a mapping"
			case sub[1] == "seq":
				return "found a list"
			default:
				return "found " + strconvQuote(sub[3])
			}
		})
		m = goTypes.ReplaceAllStringFunc(m, func(s string) string {
			sub := goTypes.FindStringSubmatch(s)
			kind := sub[4]
			switch {
			case sub[1] != "":
				return "where a list is expected"
			case sub[2] != "":
				return "where a mapping is expected"
			case strings.HasPrefix(kind, "int") || strings.HasPrefix(kind, "uint"):
				return "where a whole number is expected"
			case strings.HasPrefix(kind, "float"):
				return "where a number is expected"
			case kind == "bool":
				return "where true or false is expected"
			case kind == "string":
				return "where a single value is expected"
			default:
				return "where a mapping of keys is expected"
			}
		})
		out = append(out, errors.New(m))
	}
	return out
}
