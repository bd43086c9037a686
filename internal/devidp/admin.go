package devidp

import (
	"errors"

	"github.com/golang-jwt/jwt/v5"
)

// AdminAudience is the aud of development admin tokens: the development
// issuer signs both kinds, and only the audience keeps an agent's token off
// the admin API.
const AdminAudience = "valet-admin"

// AdminGroup is the group every development admin token carries; `valet
// dev` maps it to the admin role.
const AdminGroup = "valet-admins"

// AdminToken signs a one-hour admin token for name, in AdminGroup.
func (d *IdP) AdminToken(name string) (string, error) {
	if !agentName.MatchString(name) {
		return "", errors.New("admin name must be 1-128 characters of letters, digits and ._@:- starting with a letter or digit")
	}
	now := d.now()
	t := jwt.NewWithClaims(jwt.SigningMethodES256, jwt.MapClaims{
		"iss": d.issuer, "sub": name, "aud": AdminAudience,
		"iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(d.ttl).Unix(),
		"groups": []string{AdminGroup},
	})
	t.Header["kid"] = d.kid
	return t.SignedString(d.key)
}
