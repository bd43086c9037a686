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
	md := map[string]any{
		"token_endpoint":                                   e.issuer + TokenPath,
		"grant_types_supported":                            []string{GrantJWTBearer, GrantClientCredentials, delegation.GrantTypeTokenExchange},
		"token_endpoint_auth_methods_supported":            []string{"private_key_jwt"},
		"token_endpoint_auth_signing_alg_values_supported": SigningAlgs,
		"dpop_signing_alg_values_supported":                dpop.Algorithms,
		"authorization_details_types_supported":            []string{DetailsType},
		"scopes_supported":                                 scopes,
	}
	if e.interactive != nil {
		md["authorization_endpoint"] = e.issuer + AuthorizePath
		md["response_types_supported"] = []string{"code"}
		md["response_modes_supported"] = []string{"query"}
		md["code_challenge_methods_supported"] = []string{"S256"}
		md["authorization_response_iss_parameter_supported"] = true
		md["client_id_metadata_document_supported"] = e.interactive.cimd != nil
		md["token_endpoint_auth_methods_supported"] = []string{"private_key_jwt", "none"}
		grants := []string{GrantJWTBearer, GrantClientCredentials, delegation.GrantTypeTokenExchange, GrantAuthorizationCode}
		if e.interactive.renewer != nil {
			grants = append(grants, GrantRefreshToken)
		}
		md["grant_types_supported"] = grants
	}
	return md
}
