package issuers

import "testing"

// TestVaultRecognizes: /v1/revoke answers unsupported_token_type for Vault
// tokens (they end with their task) instead of a false 200 (issue 9, low).
func TestVaultRecognizes(t *testing.T) {
	var v *Vault
	for raw, want := range map[string]bool{"hvs.CAESIabc": true, "hvb.AAAAAQabc": true, "eyJhbGciOi.x.y": false, "garbage": false, "": false} {
		if got := v.Recognizes(raw); got != want {
			t.Errorf("Recognizes(%q) = %v, want %v", raw, got, want)
		}
	}
}
