package pgwire

import (
	"bytes"
	"encoding/binary"
	"io"
	"strings"
	"testing"
)

// msg is one frontend message: type byte, length, body.
func msg(typ byte, body string) []byte {
	b := []byte{typ, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(b[1:], uint32(len(body)+4))
	return append(b, body...)
}

// TestAgentStream: the agent's bytes reach the server unchanged, Query and
// Parse messages are counted, their text is kept only with sqlText (cut
// and quoted), and an impossible length ends the session as an error.
func TestAgentStream(t *testing.T) {
	var in bytes.Buffer
	in.Write(msg('Q', "SELECT 1\x00"))
	in.Write(msg('P', "s1\x00SELECT $1\n-- \"x\"\x00\x00\x00"))
	in.Write(msg('B', strings.Repeat("b", 100)))
	in.Write(msg('Q', "SELECT '"+strings.Repeat("y", 200)+"'\x00"))
	in.Write(msg('X', ""))
	for _, sqlText := range []bool{false, true} {
		a := &agentStream{sqlText: sqlText}
		var out bytes.Buffer
		if why := a.copy(&out, bytes.NewReader(in.Bytes())); why != EndClient {
			t.Fatalf("copy ended %q, want %q", why, EndClient)
		}
		if !bytes.Equal(out.Bytes(), in.Bytes()) || a.n.Load() != int64(in.Len()) || a.queries.Load() != 3 {
			t.Fatalf("relayed %d of %d bytes (counted %d), %d queries", out.Len(), in.Len(), a.n.Load(), a.queries.Load())
		}
		got := a.statements()
		if !sqlText {
			if got != nil {
				t.Fatalf("statements without sqlText: %q", got)
			}
			continue
		}
		if len(got) != 3 || got[0] != `"SELECT 1"` || got[1] != `"SELECT $1\n-- \"x\""` ||
			got[2] != `"SELECT '`+strings.Repeat("y", MaxStatementBytes-8)+`"…[+113 bytes]` {
			t.Fatalf("statements %q", got)
		}
	}
	a := &agentStream{}
	if why := a.copy(&bytes.Buffer{}, bytes.NewReader([]byte{'Q', 0, 0, 0, 2})); why != EndError {
		t.Fatalf("a length under 4 ended %q, want %q", why, EndError)
	}
}

// FuzzAgentStream: whatever the agent sends, the relay neither panics
// nor alters or invents a byte, and keeps at most MaxStatements texts.
func FuzzAgentStream(f *testing.F) {
	f.Add(append(msg('Q', "SELECT 1\x00"), msg('X', "")...))
	f.Add(msg('P', "\x00\x00"))
	f.Add([]byte{'Q', 0, 0, 0, 2})
	f.Fuzz(func(t *testing.T, in []byte) {
		a := &agentStream{sqlText: true}
		var out bytes.Buffer
		a.copy(&out, bytes.NewReader(in))
		if !bytes.HasPrefix(in, out.Bytes()) || len(a.statements()) > MaxStatements {
			t.Fatalf("relayed %q of %q; %d statements", out.Bytes(), in, len(a.statements()))
		}
	})
}

// BenchmarkAgentStream compares the framed relay of the agent's side
// with a plain buffered copy of the same bytes (1,000 Query messages of
// 1 KiB), as the relay did before it counted statements.
func BenchmarkAgentStream(b *testing.B) {
	var in bytes.Buffer
	for range 1000 {
		in.Write(msg('Q', "SELECT '"+strings.Repeat("z", 1014)+"'\x00"))
	}
	for _, mode := range []string{"copy", "framed", "framed+sql_text"} {
		b.Run(mode, func(b *testing.B) {
			b.SetBytes(int64(in.Len()))
			for range b.N {
				r := bytes.NewReader(in.Bytes())
				switch mode {
				case "copy":
					_, _ = io.Copy(struct{ io.Writer }{io.Discard}, struct{ io.Reader }{r})
				default:
					(&agentStream{sqlText: mode != "framed"}).copy(io.Discard, r)
				}
			}
		})
	}
}
