package issuers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/hashicorp/vault/api"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/policy"
)

// DefaultVaultTimeout bounds each call to Vault.
const DefaultVaultTimeout = 3 * time.Second

// Task token metadata keys. The reconciler finds Valet's tokens by
// MetaTaskID.
const (
	MetaTaskID   = "valet_task_id"
	MetaAgent    = "agent"
	MetaTemplate = "template"
	MetaIssuer   = "issuer"
	// MetaLoginTag is the tag in the token's display name that tells its
	// database logins from those of the task's other tokens (a renewed
	// task holds two): see TokenLoginPrefix.
	MetaLoginTag = "valet_login_tag"
)

// VaultConfig configures the Vault issuer.
type VaultConfig struct {
	// Client is logged in as Valet (a VaultSession keeps its token fresh).
	// Required. Its own retries should be off: Valet never repeats a
	// token creation blindly.
	Client *api.Client
	// Namespace is the Vault Enterprise namespace, if any.
	Namespace string
	// DatabaseMount is where the database secrets engine is mounted;
	// default "database".
	DatabaseMount string
	// Timeout bounds each call to Vault; default DefaultVaultTimeout.
	Timeout time.Duration
	// DatabaseLogins, when set, confirms at the database that a task's
	// logins are gone before a token's revocation counts as done, and
	// makes Mint refuse a database username it could not find
	// (TaskLoginPrefix). Optional.
	DatabaseLogins DatabaseLogins
	Now            func() time.Time
	Logger         *slog.Logger
}

// Vault issues a Vault token per task, through the token role its template
// names, and optionally database credentials read with that token, so they
// are a child lease of it and die with it. It is safe for concurrent use.
type Vault struct {
	client    *api.Client
	namespace string
	dbMount   string
	timeout   time.Duration
	logins    DatabaseLogins
	now       func() time.Time
	log       *slog.Logger
}

var (
	_ broker.Issuer          = (*Vault)(nil)
	_ broker.SourceInventory = (*Vault)(nil)
	_ broker.TokenRecognizer = (*Vault)(nil)
	_ broker.OtherKinds      = (*Vault)(nil)
	_ broker.OutlivesExpiry  = (*Vault)(nil)
)

// NewVault checks cfg and builds the issuer.
func NewVault(cfg VaultConfig) (*Vault, error) {
	if cfg.Client == nil {
		return nil, errors.New("vault issuer: client cannot be nil")
	}
	v := &Vault{client: cfg.Client, namespace: cfg.Namespace, dbMount: strings.Trim(cfg.DatabaseMount, "/"),
		timeout: cfg.Timeout, logins: cfg.DatabaseLogins, now: cfg.Now, log: cfg.Logger}
	if v.dbMount == "" {
		v.dbMount = "database"
	}
	if v.timeout <= 0 {
		v.timeout = DefaultVaultTimeout
	}
	if v.now == nil {
		v.now = time.Now
	}
	if v.log == nil {
		v.log = slog.New(slog.DiscardHandler)
	}
	return v, nil
}

// Kind implements broker.Issuer. The database leases it records are of
// kind vault_lease; they die with their parent token, so only tokens are
// ever revoked through the issuer.
func (v *Vault) Kind() broker.CredentialKind { return broker.KindVaultToken }

// Recognizes implements broker.TokenRecognizer: Vault service and batch
// tokens (hvs., hvb.) end with their task, not through RFC 7009.
func (v *Vault) Recognizes(raw string) bool {
	return strings.HasPrefix(raw, "hvs.") || strings.HasPrefix(raw, "hvb.")
}

// Mint implements broker.Issuer. A template without a vault block gets
// nothing. The task token's ttl and explicit_max_ttl are the task's
// remaining time, rounded down to whole seconds, so Vault kills it by the
// deadline even if Valet is gone. If any step after the token's creation
// fails, the token (and with it any lease) is revoked before returning; if
// that fails too, the error is a *broker.NotRevokedError naming it.
func (v *Vault) Mint(ctx context.Context, task broker.Task, p broker.Principal, g broker.Grant) ([]broker.Minted, error) {
	if g.Template == nil || g.Template.Vault == nil {
		return nil, nil
	}
	spec := g.Template.Vault
	now := v.now()
	ttl := task.Deadline.Sub(now).Truncate(time.Second)
	if ttl < time.Second {
		return nil, fmt.Errorf("minting vault token for task %s: less than a second of the task is left", task.ID)
	}
	no := false
	tag, err := newLoginTag()
	if err != nil {
		return nil, fmt.Errorf("minting vault token for task %s: %w", task.ID, err)
	}
	ctx1, cancel := context.WithTimeout(ctx, v.timeout)
	sec, err := v.client.Auth().Token().CreateWithRoleWithContext(ctx1, &api.TokenCreateRequest{
		Policies:       spec.Policies,
		TTL:            secs(ttl),
		ExplicitMaxTTL: secs(ttl),
		Renewable:      &no,
		NumUses:        spec.NumUses,
		DisplayName:    "valet-" + task.ID + "-" + tag,
		Metadata: map[string]string{
			MetaTaskID: metaValue(task.ID), MetaAgent: metaValue(task.Agent), MetaTemplate: metaValue(task.Template),
			MetaIssuer: metaValue(task.Issuer), MetaLoginTag: tag,
		},
	}, spec.TokenRole)
	cancel()
	if err != nil {
		return nil, v.classifyOwn(ctx, "creating vault token through role "+spec.TokenRole, err)
	}
	if sec == nil || sec.Auth == nil || sec.Auth.ClientToken == "" || sec.Auth.Accessor == "" {
		return nil, errors.New("creating vault token: Vault answered without a token")
	}
	token, accessor := sec.Auth.ClientToken, sec.Auth.Accessor
	tokCred := broker.Credential{ID: accessor, Kind: broker.KindVaultToken, TaskID: task.ID, IssuedAt: now, ExpiresAt: now.Add(ttl)}
	fail := func(err error) ([]broker.Minted, error) {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), v.timeout)
		defer cancel()
		if rerr := v.Revoke(rctx, tokCred); rerr != nil {
			v.log.ErrorContext(ctx, "revoking a half-minted vault token failed", "accessor", accessor, "task_id", task.ID, "err", rerr)
			return nil, &broker.NotRevokedError{Creds: []broker.Credential{tokCred}, Err: err}
		}
		v.log.InfoContext(ctx, "half-minted vault token revoked", "accessor", accessor, "task_id", task.ID, "why", err.Error())
		return nil, err
	}
	if got := time.Duration(sec.Auth.LeaseDuration) * time.Second; got > ttl {
		return fail(fmt.Errorf("vault token %s got a ttl of %s, more than the %s asked for", accessor, got, ttl))
	}
	if slices.Contains(sec.Auth.Policies, "default") || slices.Contains(sec.Auth.TokenPolicies, "default") {
		// Vault's default policy lets a token renew any lease it knows the
		// id of and park data in wrapping tokens (docs/vault.md).
		return fail(fmt.Errorf("vault token %s carries the default policy: set token_no_default_policy=true on token role %s",
			accessor, spec.TokenRole))
	}
	out := []broker.Minted{{Credential: tokCred, Material: map[string]any{"type": "vault_token", "token": token, "accessor": accessor}}}

	if spec.DatabaseRole != "" {
		tc, err := v.client.Clone()
		if err != nil {
			return fail(fmt.Errorf("cloning vault client: %w", err))
		}
		tc.SetToken(token)
		if v.namespace != "" {
			tc.SetNamespace(v.namespace)
		}
		ctx2, cancel := context.WithTimeout(ctx, v.timeout)
		ds, err := tc.Logical().ReadWithContext(ctx2, v.dbMount+"/creds/"+spec.DatabaseRole)
		cancel()
		if err != nil {
			return fail(classify("reading database credentials of role "+spec.DatabaseRole, err))
		}
		if ds == nil || ds.LeaseID == "" {
			return fail(errors.New("reading database credentials: Vault answered without a lease"))
		}
		username, _ := ds.Data["username"].(string)
		password, _ := ds.Data["password"].(string)
		if prefix := TokenLoginPrefix(task.ID, tag); v.logins != nil && !strings.HasPrefix(username, prefix) {
			return fail(fmt.Errorf("database role %s made username %q, which does not begin with %q: set its username_template as in deploy/vault, or the database check cannot find it",
				spec.DatabaseRole, username, prefix))
		}
		exp := now.Add(time.Duration(ds.LeaseDuration) * time.Second)
		if exp.After(tokCred.ExpiresAt) {
			exp = tokCred.ExpiresAt // the lease dies with its token
		}
		out = append(out, broker.Minted{
			Credential: broker.Credential{ID: ds.LeaseID, Kind: broker.KindVaultLease, TaskID: task.ID, Parent: accessor,
				IssuedAt: now, ExpiresAt: exp},
			Material: map[string]any{"type": "database", "username": username, "password": password, "lease_id": ds.LeaseID},
		})
	}

	if spec.WrapTTL > 0 {
		wrapTTL := min(spec.WrapTTL, ttl)
		for i := range out {
			wrapped, err := v.wrap(ctx, out[i].Material, wrapTTL)
			if err != nil {
				return fail(err)
			}
			out[i].Material = wrapped
		}
	}
	return out, nil
}

// wrap puts material into a single-use response-wrapping token. The answer
// keeps the non-secret ids (accessor, lease id) beside the wrapping token.
func (v *Vault) wrap(ctx context.Context, material map[string]any, ttl time.Duration) (map[string]any, error) {
	wc, err := v.client.Clone()
	if err != nil {
		return nil, fmt.Errorf("cloning vault client: %w", err)
	}
	wc.SetToken(v.client.Token())
	if v.namespace != "" {
		wc.SetNamespace(v.namespace)
	}
	wc.SetWrappingLookupFunc(func(string, string) string { return secs(ttl) })
	ctx, cancel := context.WithTimeout(ctx, v.timeout)
	defer cancel()
	sec, err := wc.Logical().WriteWithContext(ctx, "sys/wrapping/wrap", material)
	if err != nil {
		return nil, classify("wrapping secrets", err)
	}
	if sec == nil || sec.WrapInfo == nil || sec.WrapInfo.Token == "" {
		return nil, errors.New("wrapping secrets: Vault answered without a wrapping token")
	}
	out := map[string]any{
		"type":              material["type"],
		"wrapped":           true,
		"wrapping_token":    sec.WrapInfo.Token,
		"wrapping_accessor": sec.WrapInfo.Accessor,
		"wrap_ttl_seconds":  sec.WrapInfo.TTL,
	}
	for _, k := range []string{"accessor", "lease_id"} {
		if id, ok := material[k]; ok {
			out[k] = id
		}
	}
	return out, nil
}

// AlsoRevokes implements broker.OtherKinds: the issuer revokes the
// database leases it records, not only the tokens they hang under.
func (v *Vault) AlsoRevokes() []broker.CredentialKind {
	return []broker.CredentialKind{broker.KindVaultLease}
}

// OutlivesExpiry implements broker.OutlivesExpiry: a database login lives
// until the database drops it, whatever the lease's expiry (VALID UNTIL is
// the database role's default_ttl, and expiry kills no open session), so a
// lease whose revocation failed is retried until it succeeds.
//
// With DatabaseLogins, a token's revocation is only done once the task's
// logins are gone at the database, so tokens are retried past expiry too.
func (v *Vault) OutlivesExpiry(c broker.Credential) bool {
	return c.Kind == broker.KindVaultLease || v.logins != nil && c.Kind == broker.KindVaultToken
}

// Revoke implements broker.Issuer. A nil answer means the credential is
// dead at its source, checked there, not assumed:
//
//   - a lease is revoked synchronously (sys/leases/revoke/<id>), so Vault
//     runs the database role's revocation statements now and a failure
//     (the role's sessions or objects, the database down) comes back as an
//     error; then Vault must no longer know it;
//   - a token is looked up by accessor first, and revoked only if it is a
//     task token of c's task (Valet's policy lets it revoke any accessor;
//     this keeps a wrong or forged record from killing someone else's
//     token), then revoked by accessor and looked up again; with
//     DatabaseLogins, the database must then show no live login of the
//     task (its leases, and any more the agent read with its token).
//
// One that is gone already is not an error.
func (v *Vault) Revoke(ctx context.Context, c broker.Credential) error {
	ctx, cancel := context.WithTimeout(ctx, v.timeout)
	defer cancel()
	switch c.Kind {
	case broker.KindVaultToken:
		return v.revokeToken(ctx, c)
	case broker.KindVaultLease:
		return v.revokeLease(ctx, c)
	default:
		return fmt.Errorf("vault issuer cannot revoke a %s credential", c.Kind)
	}
}

func (v *Vault) revokeToken(ctx context.Context, c broker.Credential) error {
	prefix, err := v.revokeTokenInVault(ctx, c)
	if err != nil {
		return err
	}
	if v.logins != nil {
		return v.confirmLoginsGone(ctx, c.TaskID, prefix)
	}
	return nil
}

// revokeTokenInVault revokes the token and answers the prefix of the
// database logins made with it, from the tag in its metadata; a token
// already gone (its metadata with it) or minted before tags existed
// answers the whole task's prefix, which waits for the task's other tokens
// too: such a revocation is confirmed, or retried, once they are dead.
func (v *Vault) revokeTokenInVault(ctx context.Context, c broker.Credential) (string, error) {
	tokens := v.client.Auth().Token()
	info, err := tokens.LookupAccessorWithContext(ctx, c.ID)
	if isGone(err) {
		return TaskLoginPrefix(c.TaskID), nil
	}
	if err != nil {
		return "", classify("looking up vault token "+c.ID+" before revoking it", err)
	}
	prefix := TaskLoginPrefix(c.TaskID)
	if info != nil {
		meta, _ := info.Data["meta"].(map[string]any)
		if got, _ := meta[MetaTaskID].(string); got == "" || got != c.TaskID {
			return "", fmt.Errorf("refusing to revoke vault token %s: it is not a task token of task %s", c.ID, c.TaskID)
		}
		if tag, _ := meta[MetaLoginTag].(string); tag != "" {
			prefix = TokenLoginPrefix(c.TaskID, tag)
		}
	}
	if err := tokens.RevokeAccessorWithContext(ctx, c.ID); err != nil && !isGone(err) {
		return "", classify("revoking vault token "+c.ID, err)
	}
	if _, err := tokens.LookupAccessorWithContext(ctx, c.ID); !isGone(err) {
		if err != nil {
			return "", classify("checking vault token "+c.ID+" is gone", err)
		}
		return "", fmt.Errorf("vault token %s still live after its revocation", c.ID)
	}
	return prefix, nil
}

func (v *Vault) revokeLease(ctx context.Context, c broker.Credential) error {
	if _, err := v.client.Logical().WriteWithContext(ctx, "sys/leases/revoke/"+c.ID, map[string]any{"sync": true}); err != nil && !isGone(err) {
		return classify("revoking vault lease "+c.ID, err)
	}
	_, err := v.client.Logical().WriteWithContext(ctx, "sys/leases/lookup", map[string]any{"lease_id": c.ID})
	switch {
	case isGone(err):
		return nil
	case err != nil:
		return classify("checking vault lease "+c.ID+" is gone", err)
	}
	return fmt.Errorf("vault lease %s still live after its revocation", c.ID)
}

// Live implements broker.SourceInventory: every token in Vault that carries
// a Valet task id in its metadata. It lists all accessors (which needs sudo
// on auth/token/accessors) and looks each up, so one pass costs one
// request per token in Vault.
func (v *Vault) Live(ctx context.Context) ([]broker.Credential, error) {
	lctx, cancel := context.WithTimeout(ctx, v.timeout)
	sec, err := v.client.Logical().ListWithContext(lctx, "auth/token/accessors")
	cancel()
	if err != nil {
		return nil, classify("listing vault token accessors", err)
	}
	if sec == nil {
		return nil, nil
	}
	keys, _ := sec.Data["keys"].([]any)
	var out []broker.Credential
	for _, k := range keys {
		accessor, _ := k.(string)
		if accessor == "" {
			continue
		}
		lctx, cancel := context.WithTimeout(ctx, v.timeout)
		info, err := v.client.Auth().Token().LookupAccessorWithContext(lctx, accessor)
		cancel()
		if isGone(err) {
			continue // expired or revoked since the listing
		}
		if err != nil {
			return nil, classify("looking up vault token accessor "+accessor, err)
		}
		if info == nil {
			continue
		}
		meta, _ := info.Data["meta"].(map[string]any)
		taskID, _ := meta[MetaTaskID].(string)
		if taskID == "" {
			continue
		}
		c := broker.Credential{ID: accessor, Kind: broker.KindVaultToken, TaskID: taskID}
		if n, ok := info.Data["creation_time"].(json.Number); ok {
			if sec, err := n.Int64(); err == nil {
				c.IssuedAt = time.Unix(sec, 0)
			}
		}
		if s, ok := info.Data["expire_time"].(string); ok {
			c.ExpiresAt, _ = time.Parse(time.RFC3339Nano, s)
		}
		if c.ExpiresAt.IsZero() {
			c.ExpiresAt = v.now().Add(policy.MaxTTL)
		}
		out = append(out, c)
	}
	return out, nil
}

// classifyOwn is classify for a call made with Valet's own token: a 403
// that comes from Vault no longer knowing that token (it expired, was
// revoked, or Vault lost its state) means Valet cannot serve now, which
// wraps broker.ErrUnavailable; a 403 for a token that is fine (a policy the
// role does not allow) stays a 4xx.
func (v *Vault) classifyOwn(ctx context.Context, op string, err error) error {
	var re *api.ResponseError
	if errors.As(err, &re) && re.StatusCode == http.StatusForbidden {
		lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), v.timeout)
		_, lerr := v.client.Auth().Token().LookupSelfWithContext(lctx)
		cancel()
		if lerr != nil {
			return fmt.Errorf("%s: %w: Valet's own vault token is not valid (%w): %w", op, broker.ErrUnavailable, lerr, err)
		}
	}
	return classify(op, err)
}

// maxMetaLen bounds each value Valet writes into Vault token metadata.
const maxMetaLen = 256

// metaValue makes s fit to be written into another system's metadata:
// invalid UTF-8, control and format characters (newline, NUL, bidi
// overrides such as U+202E) become '?', and it is cut to maxMetaLen bytes
// on a rune boundary, marked with a trailing '~'.
func metaValue(s string) string {
	var b strings.Builder
	for _, r := range strings.ToValidUTF8(s, "?") {
		if unicode.IsControl(r) || unicode.Is(unicode.Cf, r) || r == utf8.RuneError {
			r = '?'
		}
		if b.Len()+utf8.RuneLen(r) > maxMetaLen-1 {
			b.WriteByte('~')
			break
		}
		b.WriteRune(r)
	}
	return b.String()
}

// classify wraps a Vault error: no answer, a timeout, or an answer that
// means Vault cannot serve now (5xx, 429, sealed) wraps
// broker.ErrUnavailable; a 4xx answer (permission, a bad role) does not.
func classify(op string, err error) error {
	var re *api.ResponseError
	if errors.As(err, &re) && re.StatusCode < 500 && re.StatusCode != http.StatusTooManyRequests {
		return fmt.Errorf("%s: %w", op, err)
	}
	return fmt.Errorf("%s: %w: %w", op, broker.ErrUnavailable, err)
}

// isGone reports whether Vault said the accessor or lease does not exist.
func isGone(err error) bool {
	var re *api.ResponseError
	if !errors.As(err, &re) || re.StatusCode != http.StatusBadRequest {
		return false
	}
	msg := strings.Join(re.Errors, " ")
	return strings.Contains(msg, "invalid accessor") || strings.Contains(msg, "invalid lease")
}

// secs formats d as whole seconds for Vault ("300s").
func secs(d time.Duration) string { return strconv.FormatInt(int64(d/time.Second), 10) + "s" }
