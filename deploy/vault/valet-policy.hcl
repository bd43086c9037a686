# The policy of Valet's own Vault token (docs/vault.md). Tests log Valet in
# with exactly this policy, so it is known to be enough.

# Create task tokens through the token role that templates name. List every
# role your templates use (or a glob such as auth/token/create/valet-*).
path "auth/token/create/valet-task" {
  capabilities = ["create", "update"]
}

# Revoke a task token by accessor; its leases (database users) go with it.
path "auth/token/revoke-accessor" {
  capabilities = ["update"]
}

# Reconciler: list every token accessor (Vault requires sudo for this) and
# look each one up to find task tokens the ledger does not know.
path "auth/token/accessors" {
  capabilities = ["list", "sudo"]
}
path "auth/token/lookup-accessor" {
  capabilities = ["update"]
}

# Response-wrap secrets for templates that set vault.wrap_ttl.
path "sys/wrapping/wrap" {
  capabilities = ["update"]
}

# Valet's own token: look itself up and renew itself.
path "auth/token/lookup-self" {
  capabilities = ["read"]
}
path "auth/token/renew-self" {
  capabilities = ["update"]
}
