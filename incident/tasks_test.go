package incident

import (
	"testing"
	"time"

	"github.com/valet-dev/valet/broker"
)

// TestTaskCursor: a page's cursor reads back as the sort key of its last
// task, and a cursor Valet did not give is a 400 naming cursor.
func TestTaskCursor(t *testing.T) {
	last := broker.Task{ID: "tsk_b", CreatedAt: time.Unix(1_800_000_000, 123)}
	after, err := parseTaskCursor(taskCursor(last))
	if err != nil || after.ID != last.ID || !after.CreatedAt.Equal(last.CreatedAt) {
		t.Fatalf("cursor read back as %+v, %v", after, err)
	}
	older := broker.Task{ID: "tsk_z", CreatedAt: last.CreatedAt.Add(-time.Second)}
	sameTimeLowerID := broker.Task{ID: "tsk_a", CreatedAt: last.CreatedAt}
	if !taskBefore(*after, older) || !taskBefore(*after, sameTimeLowerID) || taskBefore(*after, last) {
		t.Fatal("the listing after the cursor must hold older tasks, then lower ids at the same time, and not the cursor's task")
	}
	for _, bad := range []string{"!!", "bm90LWEtbnVtYmVy", "MTIz"} { // not base64; "not-a-number"; "123" (no id)
		if _, err := parseTaskCursor(bad); broker.ErrorCode(err) != broker.CodeInvalid {
			t.Errorf("cursor %q: %v", bad, err)
		}
	}
	if c, err := parseTaskCursor(""); c != nil || err != nil {
		t.Fatalf("empty cursor: %v, %v", c, err)
	}
}

func TestValidName(t *testing.T) {
	for s, want := range map[string]bool{"agent-a": true, "": true, "ticket 7: rotated": true, "a\nb": false, "a\x1b[2J": false, "a\x7f": false} {
		if validName(s) != want {
			t.Errorf("validName(%q) = %v", s, !want)
		}
	}
}
