package main

import (
	"strings"
	"testing"
)

// TestInventoryConfigEveryProblemWithTheRest: label rules that do not
// compile are reported at their paths, in the same run as the rest of the
// config's problems.
func TestInventoryConfigEveryProblemWithTheRest(t *testing.T) {
	p := writeFile(t, t.TempDir(), "bad.yaml", `
public_url: not-a-url
inventory:
  retention: 1s
  labels:
    - {name: owner, value: 'claims.team'}
    - {name: Team, value: 'claims.team'}
    - {name: cost, value: 'claims.cost +'}
    - {name: n, value: '1 + 2'}
`)
	_, err := loadConfig(p, func(string) string { return "" })
	if err == nil {
		t.Fatal("bad config loaded")
	}
	for _, want := range []string{"public_url", "inventory.retention", "inventory.labels[1].name", "inventory.labels[2].value", "inventory.labels[3].value: expression must evaluate to string"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not name %s:\n%v", want, err)
		}
	}
}

func TestInventoryConfigRetention(t *testing.T) {
	for _, c := range []struct {
		name string
		cfg  InventoryConfig
		ok   bool
	}{
		{"default", InventoryConfig{}, true},
		{"30 days", InventoryConfig{Retention: Duration(720 * 60 * 60 * 1e9)}, true},
		{"a second", InventoryConfig{Retention: Duration(1e9)}, false},
		{"negative", InventoryConfig{Retention: -1}, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := c.cfg.validate()
			if (err == nil) != c.ok {
				t.Errorf("validate = %v, want ok %v", err, c.ok)
			}
			if err != nil && !strings.Contains(err.Error(), "inventory.retention") {
				t.Errorf("error does not name inventory.retention: %v", err)
			}
		})
	}
}
