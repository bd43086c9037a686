// Package printable makes text that came from outside (agents, tool
// servers) safe to show on a terminal, in a table or in a one-line preview.
package printable

import (
	"fmt"
	"strings"
	"unicode"
	"unicode/utf16"
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

// JSON returns the JSON text b with every character Escape would escape
// written as a JSON \u escape instead (surrogate pairs above U+FFFF), so
// the text stays valid JSON with the same value and is safe on a terminal.
// JSON whitespace between tokens is kept. Bytes that are not UTF-8 become
// \ufffd.
func JSON(b []byte) []byte {
	if clean(string(b)) {
		return b
	}
	out := make([]byte, 0, len(b)+16)
	for i := 0; i < len(b); {
		r, n := utf8.DecodeRune(b[i:])
		switch {
		case r == '\n' || r == '\r' || r == '\t' || keep(r):
			out = append(out, b[i:i+n]...)
		case r > 0xffff:
			r1, r2 := utf16.EncodeRune(r)
			out = fmt.Appendf(out, `\u%04x\u%04x`, r1, r2)
		default: // includes utf8.RuneError for a bad byte
			out = fmt.Appendf(out, `\u%04x`, r)
		}
		i += n
	}
	return out
}
