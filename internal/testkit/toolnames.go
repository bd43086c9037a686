package testkit

import "strings"

// HostileToolNames are tool names a client may send that the template
// grammar refuses: each must be refused wherever a client names a tool
// (declarations, token exchanges, action requests, event reports), before
// any pattern match. Before issue 9 those paths only checked length and
// UTF-8, so "kb.*" (a literal granted by the template pattern kb.*),
// "kb..x", names with spaces, controls or zero-width characters passed.
var HostileToolNames = []struct{ Name, Tool string }{
	{"star", "kb.*"},
	{"bare star", "*"},
	{"dot dot", "kb..search"},
	{"path climb", "kb/../admin"},
	{"space", "kb search"},
	{"leading space", " kb.search"},
	{"tab", "kb.search\t"},
	{"newline", "kb.search\nforged line"},
	{"ANSI escape", "kb.\x1b[31msearch"},
	{"NUL", "kb.search\x00"},
	{"zero-width space", "kb.se\u200barch"},
	{"zero-width joiner", "kb.search\u200d"},
	{"BOM", "\ufeffkb.search"},
	{"Cyrillic look-alike", "kb.sеarch"},
	{"full-width", "ｋｂ.search"},
	{"leading dot", ".kb"},
	{"leading dash", "-kb"},
	{"too long", strings.Repeat("a", 129)},
}
