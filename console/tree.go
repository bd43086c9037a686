package console

import (
	"slices"
	"strings"

	"github.com/valet-dev/valet/broker"
)

// tree is a delegation tree laid out for a server-rendered SVG: one box
// per task, an edge from each parent to its children.
type tree struct {
	Width, Height int
	Nodes         []treeNode
	Edges         []treeEdge
}

type treeNode struct {
	X, Y              int
	ID, Agent, State  string
	Template, Current string // Current: "current" for the task of the page
}

type treeEdge struct{ X1, Y1, X2, Y2 int }

// Box sizes and gaps of the layout, in SVG units.
const (
	nodeW, nodeH = 200, 54
	gapX, gapY   = 24, 40
	maxNodes     = 200
)

// layoutTree places tasks (one delegation tree, at most maxNodes) by depth
// from the top and by depth-first order from the left; each parent sits
// over the middle of its children.
func layoutTree(tasks []broker.Task, current string) *tree {
	if len(tasks) > maxNodes {
		tasks = tasks[:maxNodes]
	}
	byID := map[string]broker.Task{}
	children := map[string][]string{}
	for _, t := range tasks {
		byID[t.ID] = t
	}
	var roots []string
	for _, t := range tasks {
		if _, ok := byID[t.Parent]; t.Parent != "" && ok {
			children[t.Parent] = append(children[t.Parent], t.ID)
		} else {
			roots = append(roots, t.ID)
		}
	}
	order := func(ids []string) {
		slices.SortFunc(ids, func(a, b string) int {
			if c := byID[a].CreatedAt.Compare(byID[b].CreatedAt); c != 0 {
				return c
			}
			return strings.Compare(a, b)
		})
	}
	order(roots)
	for _, ids := range children {
		order(ids)
	}
	tr := &tree{}
	pos := map[string][2]int{}
	next := 0 // the next free column of leaves
	maxDepth := 0
	var place func(id string, depth int) int
	place = func(id string, depth int) int {
		maxDepth = max(maxDepth, depth)
		var x int
		if kids := children[id]; len(kids) == 0 {
			x = next * (nodeW + gapX)
			next++
		} else {
			first, last := 0, 0
			for i, k := range kids {
				kx := place(k, depth+1)
				if i == 0 {
					first = kx
				}
				last = kx
			}
			x = (first + last) / 2
		}
		pos[id] = [2]int{x, depth * (nodeH + gapY)}
		return x
	}
	for _, r := range roots {
		place(r, 0)
	}
	for _, t := range tasks {
		p := pos[t.ID]
		n := treeNode{X: p[0] + 4, Y: p[1] + 4, ID: t.ID, Agent: t.Agent, State: string(t.State), Template: t.Template}
		if t.ID == current {
			n.Current = "current"
		}
		tr.Nodes = append(tr.Nodes, n)
		for _, k := range children[t.ID] {
			kp := pos[k]
			tr.Edges = append(tr.Edges, treeEdge{X1: p[0] + 4 + nodeW/2, Y1: p[1] + 4 + nodeH, X2: kp[0] + 4 + nodeW/2, Y2: kp[1] + 4})
		}
	}
	tr.Width = max(1, next)*(nodeW+gapX) + 8
	tr.Height = (maxDepth+1)*(nodeH+gapY) + 8
	return tr
}
