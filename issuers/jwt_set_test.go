package issuers

import (
	"encoding/base64"
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// TestSignSET: a SET carries Valet's iss, typ secevent+jwt and no exp, and
// passes for neither a task token nor an action token; claims a SET must
// not carry are refused.
func TestSignSET(t *testing.T) {
	for _, alg := range []string{AlgEdDSA, AlgES256} {
		t.Run(alg, func(t *testing.T) {
			j := newIssuer(t, JWTConfig{Algorithm: alg, Keys: []SigningKey{{Private: newKey(t, alg)}}}, time.Now)
			raw, err := j.SignSET(map[string]any{"jti": "j1", "iat": time.Now().Unix(), "iss": "https://forged.example",
				"events": map[string]any{"https://schemas.openid.net/secevent/caep/event-type/session-revoked": map[string]any{}}})
			if err != nil {
				t.Fatal(err)
			}
			parts := strings.Split(raw, ".")
			hb, _ := base64.RawURLEncoding.DecodeString(parts[0])
			pb, _ := base64.RawURLEncoding.DecodeString(parts[1])
			var h, c map[string]any
			_ = json.Unmarshal(hb, &h)
			_ = json.Unmarshal(pb, &c)
			if h["typ"] != "secevent+jwt" || h["kid"] == nil || c["iss"] != testIssuer || c["exp"] != nil {
				t.Fatalf("header %v claims %v", h, c)
			}
			if _, err := j.Verify(raw); err == nil {
				t.Fatal("a SET verified as a task token")
			}
			if _, err := j.VerifyAction(raw); err == nil {
				t.Fatal("a SET verified as an action token")
			}
			for name, bad := range map[string]map[string]any{
				"no jti":    {"events": map[string]any{}},
				"no events": {"jti": "x"},
				"exp":       {"jti": "x", "events": map[string]any{}, "exp": 1},
			} {
				if _, err := j.SignSET(bad); err == nil {
					t.Errorf("%s: signed", name)
				}
			}
		})
	}
}
