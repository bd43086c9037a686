# The policy a task token carries to read its database credentials. The
# token role's allowed_policies must list it.
path "database/creds/readonly" {
  capabilities = ["read"]
}
