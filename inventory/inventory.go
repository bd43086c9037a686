// Package inventory is the agent inventory: every agent (issuer + subject)
// Valet has granted a task, with when it was first and last seen, the
// templates it used and its owner labels, recorded off the request path and
// kept in a Store (package revocation has the Redis and memory ones).
package inventory

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Limits on what one agent record holds and one listing returns.
const (
	// MaxTemplates is how many distinct templates an agent record keeps;
	// later ones are not added (templates come from config, so this is
	// never reached in practice).
	MaxTemplates = 64
	// MaxPage is the largest page a listing returns; DefaultPage the page
	// when none is asked for.
	MaxPage     = 500
	DefaultPage = 50
	// maxFilter bounds each filter value of a Query.
	maxFilter = 256
)

// ErrBadCursor: a listing's cursor was not one this package made (or was
// made for another sort).
var ErrBadCursor = errors.New("the cursor is not valid for this listing")

// ID is an agent's id in the inventory: a hash of its issuer and subject,
// safe in a URL path and a Redis key whatever the subject holds.
func ID(issuer, subject string) string {
	h := sha256.Sum256([]byte(issuer + "\x00" + subject))
	return "agt_" + hex.EncodeToString(h[:16])
}

// ValidID reports whether s has the shape of an ID.
func ValidID(s string) bool {
	if len(s) != 36 || !strings.HasPrefix(s, "agt_") {
		return false
	}
	_, err := hex.DecodeString(s[4:])
	return err == nil && strings.ToLower(s) == s
}

// Agent is one agent as the inventory knows it.
type Agent struct {
	ID        string            `json:"id"`
	Issuer    string            `json:"issuer"`
	Subject   string            `json:"subject"`
	FirstSeen time.Time         `json:"first_seen"`
	LastSeen  time.Time         `json:"last_seen"`
	Templates []string          `json:"templates"`
	Labels    map[string]string `json:"labels"`
}

// Seen is one sighting as a Store records it: labels already evaluated.
type Seen struct {
	Issuer, Subject, Template string
	At                        time.Time
	// Labels are the owner labels computed from the sighting's claims;
	// the latest sighting's labels replace earlier ones.
	Labels map[string]string
}

// Sort is the order of a listing.
type Sort string

const (
	// SortLastSeen: most recently seen first (the default).
	SortLastSeen Sort = "last_seen"
	// SortFirstSeen: most recently first seen first.
	SortFirstSeen Sort = "first_seen"
	// SortSubject: by subject, A to Z.
	SortSubject Sort = "subject"
)

// Query filters, orders and pages a listing. Every filter set must match.
type Query struct {
	Issuer        string
	SubjectPrefix string
	Template      string
	// LabelKey and LabelValue: agents whose label LabelKey is LabelValue.
	LabelKey, LabelValue string
	// SeenSince: agents last seen at or after it.
	SeenSince time.Time
	Sort      Sort
	// Cursor is the NextCursor of the previous page; "" starts.
	Cursor string
	// Limit is the page size (0 is DefaultPage; at most MaxPage).
	Limit int
}

// Page is one page of a listing; NextCursor is "" on the last.
type Page struct {
	Agents     []Agent `json:"agents"`
	NextCursor string  `json:"next_cursor,omitempty"`
}

// Validate checks a query as an admin sent it and fills its defaults.
func (q *Query) Validate() error {
	for _, f := range []struct{ name, v string }{{"issuer", q.Issuer}, {"subject_prefix", q.SubjectPrefix},
		{"template", q.Template}, {"label", q.LabelKey + "=" + q.LabelValue}} {
		if len(f.v) > maxFilter {
			return &FieldError{Field: f.name, Message: fmt.Sprintf("%s is longer than %d characters", f.name, maxFilter)}
		}
		if strings.ContainsFunc(f.v, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
			return &FieldError{Field: f.name, Message: f.name + " holds a control character"}
		}
	}
	if q.LabelValue != "" && q.LabelKey == "" {
		return &FieldError{Field: "label", Message: "label must be key=value"}
	}
	switch q.Sort {
	case "":
		q.Sort = SortLastSeen
	case SortLastSeen, SortFirstSeen, SortSubject:
	default:
		return &FieldError{Field: "sort", Message: fmt.Sprintf("sort %q must be last_seen, first_seen or subject", q.Sort)}
	}
	switch {
	case q.Limit == 0:
		q.Limit = DefaultPage
	case q.Limit < 0 || q.Limit > MaxPage:
		return &FieldError{Field: "limit", Message: fmt.Sprintf("limit must be 1 to %d", MaxPage)}
	}
	if q.Cursor != "" {
		if _, err := DecodeCursor(q.Cursor, q.Sort); err != nil {
			return &FieldError{Field: "cursor", Message: err.Error()}
		}
	}
	return nil
}

// FieldError is a query's problem and the parameter it is in.
type FieldError struct{ Field, Message string }

func (e *FieldError) Error() string { return e.Field + ": " + e.Message }

// Matches reports whether a satisfies the query's filters (not its cursor).
func (q Query) Matches(a Agent) bool {
	switch {
	case q.Issuer != "" && a.Issuer != q.Issuer,
		q.SubjectPrefix != "" && !strings.HasPrefix(a.Subject, q.SubjectPrefix),
		q.Template != "" && !slices.Contains(a.Templates, q.Template),
		!q.SeenSince.IsZero() && a.LastSeen.Before(q.SeenSince):
		return false
	}
	if q.LabelKey != "" {
		v, ok := a.Labels[q.LabelKey]
		if !ok || v != q.LabelValue {
			return false
		}
	}
	return true
}

// Cursor is a place in a listing: the sort key of the last agent returned.
// It is opaque to clients (base64url of JSON).
type Cursor struct {
	Sort Sort   `json:"s"`
	Key  string `json:"k"`
	ID   string `json:"i"`
}

// SortKey is a's key under sort: unix milliseconds, or the subject.
func SortKey(a Agent, sort Sort) string {
	switch sort {
	case SortFirstSeen:
		return strconv.FormatInt(a.FirstSeen.UnixMilli(), 10)
	case SortSubject:
		return a.Subject
	}
	return strconv.FormatInt(a.LastSeen.UnixMilli(), 10)
}

// CursorAfter is the cursor of the page that follows agent a.
func CursorAfter(a Agent, sort Sort) string {
	b, _ := json.Marshal(Cursor{Sort: sort, Key: SortKey(a, sort), ID: a.ID})
	return base64.RawURLEncoding.EncodeToString(b)
}

// DecodeCursor reads a cursor made by CursorAfter for sort.
func DecodeCursor(s string, sort Sort) (Cursor, error) {
	if len(s) > 1024 {
		return Cursor{}, ErrBadCursor
	}
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		return Cursor{}, ErrBadCursor
	}
	var c Cursor
	if json.Unmarshal(b, &c) != nil || c.Sort != sort || !ValidID(c.ID) {
		return Cursor{}, ErrBadCursor
	}
	if sort != SortSubject {
		if _, err := strconv.ParseInt(c.Key, 10, 64); err != nil {
			return Cursor{}, ErrBadCursor
		}
	}
	return c, nil
}

// Compare orders two agents as a listing under sort does: times newest
// first, subjects A to Z, ties by id A to Z.
func Compare(a, b Agent, sort Sort) int {
	switch sort {
	case SortSubject:
		if c := strings.Compare(a.Subject, b.Subject); c != 0 {
			return c
		}
	case SortFirstSeen:
		if c := b.FirstSeen.UnixMilli() - a.FirstSeen.UnixMilli(); c != 0 {
			return sign(c)
		}
	default:
		if c := b.LastSeen.UnixMilli() - a.LastSeen.UnixMilli(); c != 0 {
			return sign(c)
		}
	}
	return strings.Compare(a.ID, b.ID)
}

// After reports whether a comes after the cursor c in its listing.
func (c Cursor) After(a Agent) bool {
	at := Agent{ID: c.ID, Subject: c.Key}
	if c.Sort != SortSubject {
		ms, _ := strconv.ParseInt(c.Key, 10, 64)
		at.LastSeen, at.FirstSeen = time.UnixMilli(ms), time.UnixMilli(ms)
	}
	return Compare(at, a, c.Sort) < 0
}

func sign(x int64) int {
	if x < 0 {
		return -1
	}
	return 1
}

// Store keeps the inventory. Implementations must be safe for concurrent
// use by several brokers; errors meaning the store could not be reached
// wrap broker.ErrUnavailable. Agents not seen for the store's retention are
// gone (from Agent and List) as of that instant by the store's clock.
type Store interface {
	// Record merges sightings: first_seen the earliest, last_seen the
	// latest, templates the union (up to MaxTemplates), labels those of the
	// latest sighting.
	Record(ctx context.Context, seen []Seen) error
	// List returns one page of the agents matching q (validated), in q.Sort
	// order, after q.Cursor.
	List(ctx context.Context, q Query) (Page, error)
	// Agent returns one agent by ID; broker.ErrNotFound when there is none.
	Agent(ctx context.Context, id string) (Agent, error)
}
