package broker

import (
	"fmt"
	"strings"
)

// toolNameRules says in words what ValidToolName accepts, for errors.
const toolNameRules = "use 1 to 128 of A-Z, a-z, 0-9, '_', '.', ':', '/', '-', not starting with '.', ':', '/' or '-', and no \"..\""

// ValidToolName is the one grammar of a tool name, wherever it comes from:
// a template, a declaration, a delegation, an action request or an event
// report. ASCII only, so no space, control, zero-width or look-alike
// character and no '*' ever reaches a pattern match, the audit or a log.
func ValidToolName(s string) bool {
	return toolNameRE.MatchString(s) && !strings.Contains(s, "..")
}

// CheckToolName refuses a client-sent tool name that is not valid, naming
// the field (tools[3], tool) and quoting at most 64 bytes of it; it
// returns nil for a valid name.
func CheckToolName(field, s string) *Error {
	if ValidToolName(s) {
		return nil
	}
	return InvalidField(field, "%s: %q is not a valid tool name: %s", field, truncate(s, 64), toolNameRules)
}

// CheckToolNames checks every name of a client-sent tool list (a
// declaration's, a token exchange's).
func CheckToolNames(field string, names []string) *Error {
	for i, n := range names {
		if err := CheckToolName(fmt.Sprintf("%s[%d]", field, i), n); err != nil {
			return err
		}
	}
	return nil
}
