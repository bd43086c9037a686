package printable

import (
	"encoding/json"
	"testing"
)

// TestEscape guards the responder CLI and the rollback preview against
// agent-supplied text that drives a terminal: every member of the classes
// (C0, C1, DEL, bidi and zero-width format characters, separators, bad
// UTF-8) comes out as a visible escape, and ordinary text is unchanged.
func TestEscape(t *testing.T) {
	for _, c := range []struct{ name, in, want string }{
		{"plain ASCII", "tickets.read ok 200", "tickets.read ok 200"},
		{"letters and symbols", "Grüße → 東京 ✓", "Grüße → 東京 ✓"},
		{"ANSI colour", "\x1b[31mred\x1b[0m", `\x1b[31mred\x1b[0m`},
		{"OSC title and BEL", "\x1b]0;pwned\x07", `\x1b]0;pwned\x07`},
		{"carriage return overwrite", "ok\rFAILED", `ok\rFAILED`},
		{"newline and tab", "a\nb\tc", `a\nb\tc`},
		{"NUL and DEL", "a\x00b\x7f", `a\x00b\x7f`},
		{"C1 CSI", "a\u009b31mb", `a\x9b31mb`},
		{"bidi override", "evil\u202Etxt.exe", `evil\u202etxt.exe`},
		{"bidi isolate", "a\u2066b\u2069", `a\u2066b\u2069`},
		{"zero width space and joiner", "to\u200Bken\u200D", `to\u200bken\u200d`},
		{"BOM", "\ufeffx", `\ufeffx`},
		{"line separator", "a\u2028b", `a\u2028b`},
		{"private use", "\ue000", `\ue000`},
		{"invalid UTF-8", "a\xffb\xc3", `a\xffb\xc3`},
		{"tag character", "a\U000E0041", `a\U000e0041`},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := Escape(c.in); got != c.want {
				t.Fatalf("Escape(%q) = %q, want %q", c.in, got, c.want)
			}
		})
	}
}

func TestTruncate(t *testing.T) {
	if got := Truncate("abcdef", 4); got != "abc…" {
		t.Fatalf("got %q", got)
	}
	if got := Truncate("ab\x1b", 10); got != `ab\x1b` {
		t.Fatalf("got %q", got)
	}
	if got := Truncate("abc", 3); got != "abc" {
		t.Fatalf("got %q", got)
	}
}

// TestJSON: the -o json output of the CLI keeps its value and loses every
// terminal control.
func TestJSON(t *testing.T) {
	in := map[string]string{"a": "\x1b[31mred\u009b\u202e\u200b\U000E0041 ok ✓", "b": "plain"}
	raw, _ := json.MarshalIndent(in, "", "  ")
	got := JSON(raw)
	var back map[string]string
	if err := json.Unmarshal(got, &back); err != nil || back["a"] != in["a"] || back["b"] != "plain" {
		t.Fatalf("JSON changed the value: %s %v", got, err)
	}
	for _, r := range string(got) {
		if r != '\n' && !keep(r) {
			t.Fatalf("JSON left %U in %s", r, got)
		}
	}
}

// TestEscapeEveryRune: for every code point, Escape's output holds only
// characters that are kept as they are (letters, marks, numbers,
// punctuation, symbols, spaces), so no member of any control class gets
// through; and a kept character is returned unchanged.
func TestEscapeEveryRune(t *testing.T) {
	for r := rune(0); r <= 0x10ffff; r++ {
		in := string(r)
		out := Escape(in)
		for _, o := range out {
			if !keep(o) {
				t.Fatalf("Escape(%U) = %q holds %U", r, out, o)
			}
		}
		if keep(r) && r != 0xfffd && out != in {
			t.Fatalf("Escape(%U) = %q, want it unchanged", r, out)
		}
	}
}
