package canonical

import (
	"strings"
	"testing"
)

func TestArgs(t *testing.T) {
	cases := []struct {
		name, in, want string
		bad            bool
	}{
		{name: "empty", in: "", want: "{}"},
		{name: "null", in: "null", want: "{}"},
		{name: "sorted keys, no whitespace", in: `{ "b": 1, "a": [true, null, "x"] }`, want: `{"a":[true,null,"x"],"b":1}`},
		{name: "nested objects sorted", in: `{"z":{"y":1,"x":2}}`, want: `{"z":{"x":2,"y":1}}`},
		{name: "integers in any spelling", in: `{"a":1.0,"b":1e0,"c":-0,"d":10}`, want: `{"a":1,"b":1,"c":0,"d":10}`},
		{name: "fractions", in: `{"a":1.50,"b":1e-7}`, want: `{"a":1.5,"b":1e-7}`},
		{name: "no HTML escaping", in: `{"q":"<a&b>"}`, want: `{"q":"<a&b>"}`},
		{name: "unicode escapes decoded", in: `{"q":"\u00e9"}`, want: `{"q":"é"}`},
		{name: "not an object", in: `[1]`, bad: true},
		{name: "two values", in: `{} {}`, bad: true},
		{name: "huge number", in: `{"a":1e999}`, bad: true},
		{name: "too deep", in: `{"a":` + strings.Repeat("[", 40) + strings.Repeat("]", 40) + `}`, bad: true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := Args([]byte(c.in))
			if c.bad {
				if err == nil {
					t.Fatalf("accepted %s as %s", c.in, got)
				}
				return
			}
			if err != nil || string(got) != c.want {
				t.Fatalf("Args(%s) = %s, %v; want %s", c.in, got, err, c.want)
			}
		})
	}
}

func TestValueMatchesArgs(t *testing.T) {
	fromWire, err := Args([]byte(`{"ticket":"42","amount":12.5,"notify":true,"tags":["a","b"]}`))
	if err != nil {
		t.Fatal(err)
	}
	fromGo, err := Value(map[string]any{"tags": []string{"a", "b"}, "notify": true, "amount": 12.5, "ticket": "42"})
	if err != nil {
		t.Fatal(err)
	}
	if Hash(fromWire) != Hash(fromGo) {
		t.Fatalf("%s and %s hash differently", fromWire, fromGo)
	}
	changed, _ := Value(map[string]any{"tags": []string{"a", "b"}, "notify": true, "amount": 125, "ticket": "42"})
	if Hash(changed) == Hash(fromGo) {
		t.Fatal("changed arguments hash the same")
	}
	if got := Names(fromGo); strings.Join(got, ",") != "amount,notify,tags,ticket" {
		t.Fatalf("Names = %v", got)
	}
}
