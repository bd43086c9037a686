// Package printable makes text that came from outside (agents, tool
// servers) safe to show on a terminal, in a table or in a one-line preview.
package printable

import (
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Escape returns s with every character that could move the cursor, recolour
// or reorder a terminal line, or hide text written as a visible escape: C0
// and C1 controls (ESC, CR, LF, TAB, BEL, ...), DEL, format characters
// (bidi overrides and isolates such as U+202E, zero-width characters, BOM),
// line and paragraph separators, unassigned and private-use code points,
// and bytes that are not UTF-8. Letters, marks, digits, punctuation,
// symbols and spaces are kept. Escapes read \n \r \t, \xHH (bytes and
// runes below U+0100) or \uHHHH / \UHHHHHHHH.
func Escape(s string) string {
	if clean(s) {
		return s
	}
	var b strings.Builder
	b.Grow(len(s) + 16)
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && n <= 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case keep(r):
			b.WriteRune(r)
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\r':
			b.WriteString(`\r`)
		case r == '\t':
			b.WriteString(`\t`)
		case r < 0x100:
			fmt.Fprintf(&b, `\x%02x`, r)
		case r < 0x10000:
			fmt.Fprintf(&b, `\u%04x`, r)
		default:
			fmt.Fprintf(&b, `\U%08x`, r)
		}
		i += n
	}
	return b.String()
}

// Truncate escapes s and keeps at most n runes of the result, ending
// with "…" when it cut.
func Truncate(s string, n int) string {
	s = Escape(s)
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	r := []rune(s)
	return string(r[:max(n-1, 0)]) + "…"
}

func keep(r rune) bool {
	return r == ' ' || (unicode.IsGraphic(r) && !unicode.Is(unicode.Co, r))
}

func clean(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f {
			return false
		}
	}
	return true
}
