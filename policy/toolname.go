package policy

import "strings"

// ToolNameRules says in words what ValidToolName accepts, for errors.
const ToolNameRules = "use 1 to 128 of A-Z, a-z, 0-9, '_', '.', ':', '/', '-', not starting with '.', ':', '/' or '-', and no \"..\""

// ValidToolName is the one grammar of a tool name, wherever it comes from:
// a template, a declaration, a delegation, an action request or an event
// report. ASCII only, so no space, control, zero-width or look-alike
// character and no '*' ever reaches a pattern match, the audit or a log.
func ValidToolName(s string) bool {
	return toolNameRE.MatchString(s) && !strings.Contains(s, "..")
}
