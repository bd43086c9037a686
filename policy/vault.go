package policy

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// MaxWrapTTL is the longest a response-wrapping token may live: long enough
// to hand over, short enough that a leaked one is soon worthless.
const MaxWrapTTL = 5 * time.Minute

// VaultSpec is a template's vault block: the Vault credentials each task
// of the template gets.
type VaultSpec struct {
	// TokenRole is the token role (auth/token/roles/<name>) the task token is
	// created through. Required.
	TokenRole string
	// Policies are the task token's policies. Vault itself checks at mint
	// time that they are a subset of the role's allowed_policies.
	Policies []string
	// NumUses limits how many requests the task token may make; 0 is no
	// limit.
	NumUses int
	// DatabaseRole, when set, is read from the database secrets engine
	// (database/creds/<role>) with the task token.
	DatabaseRole string
	// WrapTTL, when set, delivers the secrets response-wrapped: a
	// single-use wrapping token that lives this long.
	WrapTTL time.Duration
}

// vaultNameRE is a Vault role name: one path segment, no "/" or "..".
var vaultNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$`)

// vaultPolicyRE is a Vault policy name as Vault stores it (lower case).
var vaultPolicyRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_.-]{0,127}$`)

func decodeVault(l *templateLoader, n *yaml.Node, path string, t *Template) {
	v := &VaultSpec{}
	if !decodeMapping(l, n, path, vaultFields, v) {
		return
	}
	if v.NumUses > 0 && v.DatabaseRole != "" {
		// Valet reads the database credentials with the task token (one
		// use), and Vault revokes a token's leases when its uses run out,
		// so the agent's own calls would kill its database login.
		for i := 0; i+1 < len(n.Content); i += 2 {
			if n.Content[i].Value == "num_uses" {
				l.report(n.Content[i+1], path+".num_uses", "cannot be combined with database_role: the database login dies with the token when its uses run out")
				return
			}
		}
	}
	t.Vault = v
}

// vaultFields is the schema of a template's vault block.
var vaultFields = []field[*VaultSpec]{
	{key: "token_role", required: true, decode: func(l *templateLoader, n *yaml.Node, path string, v *VaultSpec) {
		v.TokenRole = l.vaultName(n, path, "token role")
	}},
	{key: "policies", required: true, decode: func(l *templateLoader, n *yaml.Node, path string, v *VaultSpec) {
		v.Policies = l.stringList(n, path, "policy names", checkVaultPolicy)
		if isEmptyList(n) {
			l.report(n, path, "must list at least one policy")
		}
	}},
	{key: "num_uses", decode: func(l *templateLoader, n *yaml.Node, path string, v *VaultSpec) {
		s, ok := l.str(n, path)
		if !ok {
			return
		}
		u, err := strconv.Atoi(s)
		if err != nil || u < 0 || n.ShortTag() != "!!int" {
			l.report(n, path, "%q must be a whole number, 0 or more (0: no limit)", truncate(s, 64))
			return
		}
		v.NumUses = u
	}},
	{key: "database_role", decode: func(l *templateLoader, n *yaml.Node, path string, v *VaultSpec) {
		v.DatabaseRole = l.vaultName(n, path, "database role")
	}},
	{key: "wrap_ttl", decode: func(l *templateLoader, n *yaml.Node, path string, v *VaultSpec) {
		d, ok := l.duration(n, path)
		switch {
		case !ok:
		case d > MaxWrapTTL:
			l.report(n, path, "%s is longer than the limit of %s", d, MaxWrapTTL)
		case d < time.Second:
			l.report(n, path, "must be at least 1s")
		default:
			v.WrapTTL = d
		}
	}},
}

// vaultName decodes a Vault role name: one path segment.
func (l *templateLoader) vaultName(n *yaml.Node, path, what string) string {
	s, ok := l.str(n, path)
	if !ok {
		return ""
	}
	if !vaultNameRE.MatchString(s) || strings.Contains(s, "..") {
		l.report(n, path, "%q is not a valid %s name: use 1 to 128 of A-Z, a-z, 0-9, '_', '.', '-', starting with a letter or digit", truncate(s, 64), what)
		return ""
	}
	return s
}

// checkVaultPolicy accepts a lower-case Vault policy name other than root.
// Names are checked exactly as written, before anything else sees them, so
// " root" or "ROOT" cannot slip past (Vault CVE-2025-5999).
func checkVaultPolicy(s string) string {
	if strings.EqualFold(strings.TrimSpace(s), "root") {
		return "the root policy may not be granted to a task"
	}
	if !vaultPolicyRE.MatchString(s) {
		return fmt.Sprintf("%q is not a valid policy name: use 1 to 128 of a-z, 0-9, '_', '.', '-', starting with a letter or digit", truncate(s, 64))
	}
	return ""
}
