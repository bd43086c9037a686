package console

import (
	"testing"
	"time"

	"github.com/valet-dev/valet/broker"
)

func TestLayoutTree(t *testing.T) {
	at := time.Unix(1_700_000_000, 0)
	tasks := []broker.Task{
		{ID: "root", Agent: "a", CreatedAt: at},
		{ID: "c2", Agent: "c", Parent: "root", Root: "root", CreatedAt: at.Add(2 * time.Second)},
		{ID: "c1", Agent: "b", Parent: "root", Root: "root", CreatedAt: at.Add(time.Second)},
		{ID: "g1", Agent: "d", Parent: "c1", Root: "root", CreatedAt: at.Add(3 * time.Second)},
	}
	tr := layoutTree(tasks, "c1")
	pos := map[string]treeNode{}
	for _, n := range tr.Nodes {
		pos[n.ID] = n
	}
	if len(tr.Nodes) != 4 || len(tr.Edges) != 3 {
		t.Fatalf("%d nodes, %d edges; want 4 and 3", len(tr.Nodes), len(tr.Edges))
	}
	if !(pos["root"].Y < pos["c1"].Y && pos["c1"].Y == pos["c2"].Y && pos["c1"].Y < pos["g1"].Y) {
		t.Errorf("depths are not top to bottom: %+v", pos)
	}
	if !(pos["c1"].X < pos["c2"].X) || pos["g1"].X != pos["c1"].X {
		t.Errorf("children are not left to right by creation, or a single child is not under its parent: %+v", pos)
	}
	if pos["root"].X <= pos["c1"].X || pos["root"].X >= pos["c2"].X {
		t.Errorf("the root is not over the middle of its children: %+v", pos)
	}
	if pos["c1"].Current != "current" || pos["root"].Current != "" {
		t.Errorf("the page's task is not marked: %+v", pos)
	}
	for _, n := range tr.Nodes {
		if n.X+nodeW > tr.Width || n.Y+nodeH > tr.Height {
			t.Errorf("node %s at (%d,%d) is outside %dx%d", n.ID, n.X, n.Y, tr.Width, tr.Height)
		}
	}
}

func TestLayoutTreeOrphanIsARoot(t *testing.T) {
	// A child whose parent the listing did not return is drawn as a root,
	// not dropped.
	tr := layoutTree([]broker.Task{{ID: "child", Parent: "gone"}}, "child")
	if len(tr.Nodes) != 1 || len(tr.Edges) != 0 {
		t.Fatalf("%+v", tr)
	}
}
