package issuers_test

import (
	"strings"
	"testing"

	"github.com/valet-dev/valet/issuers"
)

// TestTaskLoginPrefix: the prefix is what Vault makes of the task token's
// display name under deploy/vault/db-username-template (Vault turns every
// character but letters, digits and '-' into '-'), and one task's prefix
// never begins another's.
func TestTaskLoginPrefix(t *testing.T) {
	cases := []struct{ id, want string }{
		{"tsk_3l2zwg5rvkaoiu36xaqwde2ply", "v-token-valet-tsk-3l2zwg5rvkaoiu36xaqwde2ply-"},
		{"tsk_a.b/c", "v-token-valet-tsk-a-b-c-"},
	}
	for _, tc := range cases {
		if got := issuers.TaskLoginPrefix(tc.id); got != tc.want {
			t.Errorf("TaskLoginPrefix(%q) = %q, want %q", tc.id, got, tc.want)
		}
	}
	a, b := issuers.TaskLoginPrefix("tsk_abc"), issuers.TaskLoginPrefix("tsk_abcd")
	if strings.HasPrefix(b, a) || strings.HasPrefix(a, b) {
		t.Fatalf("%q and %q overlap", a, b)
	}
	if n := len(issuers.TaskLoginPrefix("tsk_3l2zwg5rvkaoiu36xaqwde2ply")) + 8; n > 63 {
		t.Fatalf("a username of %d bytes exceeds PostgreSQL's 63", n)
	}
}

// TestNewPostgresLoginsHidesThePassword: a URL that does not parse is
// refused without echoing it.
func TestNewPostgresLoginsHidesThePassword(t *testing.T) {
	_, err := issuers.NewPostgresLogins("postgresql://check:s3cret@db:notaport/postgres")
	if err == nil || strings.Contains(err.Error(), "s3cret") {
		t.Fatalf("err = %v", err)
	}
	if _, err := issuers.NewPostgresLogins(""); err == nil {
		t.Fatal("an empty URL was accepted")
	}
}

// TestTokenLoginPrefix: each token of a task (a renewed task holds two) has
// a prefix of its own that no other token's logins match, and the whole
// username fits PostgreSQL's 63 bytes with the template's 48-character
// display name.
func TestTokenLoginPrefix(t *testing.T) {
	id := "tsk_3l2zwg5rvkaoiu36xaqwde2ply"
	seen := map[string]bool{}
	for range 200 {
		tag, err := issuers.NewLoginTag()
		if err != nil || len(tag) != 5 || strings.Trim(tag, "abcdefghijklmnopqrstuvwxyz0123456789") != "" {
			t.Fatalf("NewLoginTag = %q, %v; want 5 of [a-z0-9]", tag, err)
		}
		seen[tag] = true
	}
	if len(seen) < 190 {
		t.Fatalf("200 tags held only %d distinct ones", len(seen))
	}
	a, b := issuers.TokenLoginPrefix(id, "abcde"), issuers.TokenLoginPrefix(id, "abcdf")
	if strings.HasPrefix(a, b) || strings.HasPrefix(b, a) || !strings.HasPrefix(a, issuers.TaskLoginPrefix(id)) {
		t.Fatalf("prefixes %q and %q overlap or leave the task's", a, b)
	}
	if display := "token-valet-" + id + "-abcde"; len(display) > 48 {
		t.Fatalf("display name %q is longer than the 48 characters the username template keeps", display)
	}
	if n := len(a) + 8; n > 63 {
		t.Fatalf("usernames are %d bytes, over PostgreSQL's 63", n)
	}
}
