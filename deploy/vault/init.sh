#!/bin/sh
# Configures the dev Vault for Valet (docs/vault.md): run once by the
# vault-init service of docker-compose.yml, with VAULT_ADDR, VAULT_TOKEN
# (root) and PGPASSWORD set.
set -eu
until vault status >/dev/null 2>&1; do sleep 1; done

vault policy write valet /deploy/vault/valet-policy.hcl
vault policy write valet-db /deploy/vault/task-db-policy.hcl

# The token role task tokens are created through. No default policy: it
# would let a task token renew any lease and create wrapping tokens.
vault write auth/token/roles/valet-task \
  allowed_policies=valet-db orphan=false renewable=false \
  token_explicit_max_ttl=24h token_type=service token_no_default_policy=true

# The database secrets engine against the compose PostgreSQL. The role's
# statements are the files the tests load (docs/vault.md explains them).
vault secrets enable database || true
vault write database/config/valet-pg \
  plugin_name=postgresql-database-plugin \
  connection_url='postgresql://{{username}}:{{password}}@postgres:5432/postgres?sslmode=disable' \
  username=postgres password="$PGPASSWORD" allowed_roles=readonly \
  username_template=@/deploy/vault/db-username-template
vault write database/roles/readonly db_name=valet-pg \
  creation_statements=@/deploy/vault/db-creation.sql \
  revocation_statements=@/deploy/vault/db-revocation.sql \
  renew_statements=@/deploy/vault/db-renew.sql \
  default_ttl=15m max_ttl=24h

# Valet's own token: only the valet policy, renewed by Valet every period.
vault token create -id=valet-dev-token -policy=valet -no-default-policy -period=1h -orphan -display-name=valet >/dev/null
echo "vault-init: done"
