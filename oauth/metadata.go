package oauth

import (
	"github.com/valet-dev/valet/delegation"
	"github.com/valet-dev/valet/dpop"
)

// Metadata are the RFC 8414 fields the token endpoint adds to Valet's
// authorization server metadata. scopes_supported lists the template
// scopes (template:<name>) of the templates in force; the tools of each
// are scope values too.
func (e *Endpoint) Metadata() map[string]any {
	var scopes []string
	for _, name := range e.svc.Templates().Names() {
		scopes = append(scopes, TemplateScope+name)
	}
	return map[string]any{
		"token_endpoint":                                   e.issuer + TokenPath,
		"grant_types_supported":                            []string{GrantJWTBearer, GrantClientCredentials, delegation.GrantTypeTokenExchange},
		"token_endpoint_auth_methods_supported":            []string{"private_key_jwt"},
		"token_endpoint_auth_signing_alg_values_supported": SigningAlgs,
		"dpop_signing_alg_values_supported":                dpop.Algorithms,
		"authorization_details_types_supported":            []string{DetailsType},
		"scopes_supported":                                 scopes,
	}
}
