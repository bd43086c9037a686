package inventory

import (
	"errors"
	"fmt"
	"regexp"
	"strings"

	"github.com/valet-dev/valet/policy"
)

// LabelRule is one owner label from config: its name, and a CEL expression
// over the identity token's claims giving its value
// (`{name: owner, value: 'claims.team'}`).
type LabelRule struct {
	Name  string `yaml:"name" json:"name"`
	Value string `yaml:"value" json:"value"`
}

// MaxLabelValue bounds a label's value; a longer one is left out.
const MaxLabelValue = 256

var labelName = regexp.MustCompile(`^[a-z][a-z0-9_.-]{0,62}$`)

// Labeler computes an agent's labels from its claims. Its rules are
// compiled once, at start; it is safe for concurrent use.
type Labeler struct {
	rules []policy.Value
}

// NewLabeler compiles rules; every problem is reported, each with its
// place under path (the config key, e.g. "inventory.labels").
func NewLabeler(path string, rules []LabelRule) (*Labeler, error) {
	l := &Labeler{}
	var errs []error
	seen := map[string]bool{}
	for i, r := range rules {
		at := fmt.Sprintf("%s[%d]", path, i)
		switch {
		case !labelName.MatchString(r.Name):
			errs = append(errs, fmt.Errorf("%s.name: %q must be a lower-case name (a-z, 0-9, _ . -; up to 63 characters)", at, r.Name))
			continue
		case seen[r.Name]:
			errs = append(errs, fmt.Errorf("%s.name: label %q is defined twice", at, r.Name))
			continue
		}
		seen[r.Name] = true
		v, err := policy.CompileClaimsValue(r.Name, r.Value)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s.value: %w", at, err))
			continue
		}
		l.rules = append(l.rules, v)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return l, nil
}

// Labels evaluates every rule over claims. A rule that fails (a claim the
// token does not have, a value that is not a string) or gives an empty,
// overlong or unprintable value sets no label. Nil when there are none.
func (l *Labeler) Labels(claims map[string]any) map[string]string {
	if l == nil || len(l.rules) == 0 {
		return nil
	}
	var out map[string]string
	for _, r := range l.rules {
		v, err := r.EvalClaims(claims)
		if err != nil || v == "" || len(v) > MaxLabelValue ||
			strings.ContainsFunc(v, func(c rune) bool { return c < 0x20 || c == 0x7f }) {
			continue
		}
		if out == nil {
			out = map[string]string{}
		}
		out[r.Name] = v
	}
	return out
}
