package issuers

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"

	"github.com/go-jose/go-jose/v4"
)

// Signing algorithms Valet supports for task tokens.
const (
	AlgEdDSA = "EdDSA" // Ed25519, the default
	AlgES256 = "ES256" // ECDSA P-256 with SHA-256
)

// LoadSigningKeyPEM parses a private signing key: an Ed25519 or ECDSA P-256
// key in PKCS#8 ("PRIVATE KEY") or an ECDSA P-256 key in SEC 1
// ("EC PRIVATE KEY"). An "EC PARAMETERS" block, as `openssl ecparam -genkey`
// writes, is skipped. RSA keys, other curves, encrypted keys, several keys in
// one file and anything that is not PEM are refused with an error that says
// which of these it was.
func LoadSigningKeyPEM(data []byte) (crypto.Signer, error) {
	var key crypto.Signer
	for rest := data; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type == "EC PARAMETERS" {
			continue
		}
		if key != nil {
			return nil, errors.New("loading signing key: the PEM data holds more than one key")
		}
		k, err := parsePEMBlock(block)
		if err != nil {
			return nil, fmt.Errorf("loading signing key: %w", err)
		}
		key = k
	}
	if key == nil {
		return nil, errors.New("loading signing key: no PEM private key found")
	}
	return key, nil
}

func parsePEMBlock(block *pem.Block) (crypto.Signer, error) {
	if _, ok := block.Headers["Proc-Type"]; ok {
		return nil, errors.New("encrypted PEM keys are not supported; decrypt it first")
	}
	switch block.Type {
	case "PRIVATE KEY":
		k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parsing PKCS#8 key: %w", err)
		}
		return supportedSigner(k)
	case "EC PRIVATE KEY":
		k, err := x509.ParseECPrivateKey(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parsing SEC 1 EC key: %w", err)
		}
		return supportedSigner(k)
	case "ENCRYPTED PRIVATE KEY":
		return nil, errors.New("encrypted PKCS#8 keys are not supported; decrypt it first")
	case "RSA PRIVATE KEY":
		return nil, errors.New("RSA keys are not supported; use Ed25519 or ECDSA P-256")
	default:
		return nil, fmt.Errorf("PEM block type %q is not a supported private key", block.Type)
	}
}

// supportedSigner accepts exactly the private key types Valet signs with.
func supportedSigner(k any) (crypto.Signer, error) {
	switch k := k.(type) {
	case ed25519.PrivateKey:
		return k, nil
	case *ecdsa.PrivateKey:
		if k.Curve != elliptic.P256() {
			return nil, fmt.Errorf("ECDSA curve %s is not supported; use P-256", k.Curve.Params().Name)
		}
		return k, nil
	case *rsa.PrivateKey:
		return nil, errors.New("RSA keys are not supported; use Ed25519 or ECDSA P-256")
	default:
		return nil, fmt.Errorf("key type %T is not supported; use Ed25519 or ECDSA P-256", k)
	}
}

// GenerateSigningKey makes a fresh private key for alg ("EdDSA", the default
// when alg is empty, or "ES256"), for `valet dev` and `valet keys generate`.
func GenerateSigningKey(alg string) (crypto.Signer, error) {
	switch alg {
	case "", AlgEdDSA:
		_, k, err := ed25519.GenerateKey(rand.Reader)
		return k, err
	case AlgES256:
		return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	default:
		return nil, fmt.Errorf("generating signing key: algorithm %q is not supported (want %s or %s)", alg, AlgEdDSA, AlgES256)
	}
}

// EncodeSigningKeyPEM writes k as an unencrypted PKCS#8 "PRIVATE KEY" PEM
// block that LoadSigningKeyPEM reads back.
func EncodeSigningKeyPEM(k crypto.Signer) ([]byte, error) {
	if _, err := supportedSigner(k); err != nil {
		return nil, fmt.Errorf("encoding signing key: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, fmt.Errorf("encoding signing key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// KeyID returns the RFC 7638 JWK thumbprint (SHA-256, base64url without
// padding) of pub: the kid of a key that was configured without one.
func KeyID(pub crypto.PublicKey) (string, error) {
	if pub == nil {
		return "", errors.New("computing key id: no public key")
	}
	jwk := jose.JSONWebKey{Key: pub}
	sum, err := jwk.Thumbprint(crypto.SHA256)
	if err != nil {
		return "", fmt.Errorf("computing key id: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(sum), nil
}
