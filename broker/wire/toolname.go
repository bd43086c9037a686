package wire

import (
	"fmt"
	"strings"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/policy"
)

// CheckToolName refuses a client-sent tool name that is not valid (the
// grammar is policy.ValidToolName), naming the field (tools[3], tool) and
// quoting at most 64 bytes of it; it returns nil for a valid name.
func CheckToolName(field, s string) *broker.Error {
	if policy.ValidToolName(s) {
		return nil
	}
	return broker.InvalidField(field, "%s: %q is not a valid tool name: %s", field, truncate(s, 64), policy.ToolNameRules)
}

// CheckToolNames checks every name of a client-sent tool list (a
// declaration's, a token exchange's).
func CheckToolNames(field string, names []string) *broker.Error {
	for i, n := range names {
		if err := CheckToolName(fmt.Sprintf("%s[%d]", field, i), n); err != nil {
			return err
		}
	}
	return nil
}

// truncate cuts s to at most n bytes of valid UTF-8, marking a cut with
// "...".
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return strings.ToValidUTF8(s[:n], "") + "..."
}
