package verify

import (
	"testing"
	"time"
)

// TestDenySetGlobalEpoch guards issue 9 #9 at the verifier: when Redis
// loses its data Valet announces a global epoch (dimension "all", key
// "*"); a verifier that ignored it kept accepting tokens issued before the
// loss, whose revocations were lost with the data.
func TestDenySetGlobalEpoch(t *testing.T) {
	loss := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	d := newDenySet()
	d.addEpoch(epochEntry{Dimension: "all", Key: "*", Before: loss.UnixMilli()})
	pre := Claims{ID: "j1", TaskID: "t1", Subject: "a", Template: "x", AgentIssuer: "i", IssuedAt: loss.Add(-time.Second)}
	post := pre
	post.ID, post.IssuedAt = "j2", loss.Add(time.Second)
	if !d.denied(pre, loss) {
		t.Error("a token issued before the loss is accepted")
	}
	if d.denied(post, loss) {
		t.Error("a token issued after the loss is denied")
	}
}
