# The policy of Valet's own Vault token (docs/vault.md). Tests log Valet in
# with exactly this policy, so it is known to be enough.

# Create task tokens through the token role that templates name. List every
# role your templates use (or a glob such as auth/token/create/valet-*).
path "auth/token/create/valet-task" {
  capabilities = ["create", "update"]
}

# Revoke a task token by accessor; its leases (database users) go with it.
# Vault's policy language cannot limit this path to the tokens of one role
# or to Valet's own children (the accessor is a random body parameter), so
# this is the one power here wider than Valet needs: it could revoke any
# token whose accessor it is given. Valet only ever revokes an accessor
# after looking it up and finding its own task id in its metadata.
path "auth/token/revoke-accessor" {
  capabilities = ["update"]
  allowed_parameters = {
    "accessor" = []
  }
}

# Revoke a task's database lease synchronously, so a failing revocation
# statement reaches Valet, and check that Vault no longer holds it. Only
# leases of the database secrets engine (mount "database"; change the path
# with vault.database_mount). The lease id must be in the path: Vault would
# take a lease_id body parameter over it, so no parameter but sync is let in.
path "sys/leases/revoke/database/creds/*" {
  capabilities = ["update"]
  allowed_parameters = {
    "sync" = []
  }
}
path "sys/leases/lookup" {
  capabilities = ["update"]
}

# Reconciler: list every token accessor (Vault requires sudo for this) and
# look each one up to find task tokens the ledger does not know; the same
# lookup guards every revocation above.
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
