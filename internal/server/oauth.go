package server

import (
	"context"
	"errors"
	"net/url"
	"strings"

	"github.com/valet-dev/valet/broker"
	"github.com/valet-dev/valet/identity"
	"github.com/valet-dev/valet/oauth"
	"github.com/valet-dev/valet/revocation"
)

// loginUpstream is an identity.Login as the authorization endpoint's
// upstream provider.
type loginUpstream struct{ l *identity.Login }

func (u loginUpstream) Start() (oauth.UpstreamState, string) {
	st, authURL := u.l.Start()
	return oauth.UpstreamState(st), authURL
}

func (u loginUpstream) Finish(ctx context.Context, st oauth.UpstreamState, q url.Values) (broker.Principal, string, error) {
	return u.l.FinishToken(ctx, identity.LoginState(st), q)
}

// interactiveConfig completes the authorization code grant's config: the
// upstream login, the store and the renewer.
func interactiveConfig(ctx context.Context, o Options, renewer oauth.Renewer) (*oauth.InteractiveConfig, error) {
	oo := o.OAuth
	if oo.Interactive == nil {
		return nil, nil
	}
	ic := *oo.Interactive
	if ic.Renewer == nil {
		ic.Renewer = renewer
	}
	if ic.Store == nil {
		ic.Store = revocation.NewMemoryOAuthStore(o.Now)
	}
	if ic.Upstream == nil && oo.UpstreamLogin != nil {
		v, ok := o.Identity.(*identity.Verifier)
		if !ok {
			return nil, errors.New("server: the upstream login needs the identity verifier")
		}
		lc := *oo.UpstreamLogin
		if lc.RedirectURL == "" {
			lc.RedirectURL = strings.TrimSuffix(o.PublicURL, "/") + oauth.CallbackPath
		}
		login, err := identity.NewLogin(ctx, lc, v)
		if err != nil {
			return nil, err
		}
		ic.Upstream = loginUpstream{login}
	}
	return &ic, nil
}
