package main

import (
	"crypto/sha256"
	"crypto/subtle"
)

// publishedSecrets are the secrets printed in the README, the docs, the
// examples and by `valet dev`: anyone can read them, so `valet serve`
// refuses a client (introspection or approver) configured with one.
// TestPublishedSecretsAreRefused keeps this list in step with the docs.
var publishedSecrets = []string{
	devClientSecret,   // valet dev, README, docs/agent-controls.md, docs/incident-response.md
	devApproverSecret, // valet dev, docs/agent-controls.md
	"walkthrough-secret-0123456789",
	"agent-dev-secret", // deploy/dex/config.yaml, docs/vault.md
}

// isPublishedSecret reports whether sum is the SHA-256 of a published
// secret, whether the config gave the secret or only its hash.
func isPublishedSecret(sum [32]byte) bool {
	for _, s := range publishedSecrets {
		p := sha256.Sum256([]byte(s))
		if subtle.ConstantTimeCompare(p[:], sum[:]) == 1 {
			return true
		}
	}
	return false
}

const publishedSecretMsg = "is a secret published in Valet's README, docs or `valet dev`, which anyone can read: generate your own (e.g. `openssl rand -hex 32`)"
