-- creation_statements of the database role "readonly" (docs/vault.md).
-- Vault runs this block as one statement in one transaction, as its
-- database user (a superuser), with {{name}}, {{password}} and
-- {{expiration}} filled in.
--
-- It creates the login and refuses to hand out one that revocation could
-- not clean up: db-revocation.sql drops what the role owns only in the
-- database Vault connects to, so the role may reach no other database.
DO $$
DECLARE
  other text;
BEGIN
  -- template1 is open to PUBLIC out of the box; nobody should log in there,
  -- and anything made there would be copied into every new database.
  REVOKE CONNECT ON DATABASE template1 FROM PUBLIC;
  EXECUTE format('CREATE ROLE %I WITH LOGIN NOINHERIT PASSWORD %L VALID UNTIL %L',
    '{{name}}', '{{password}}', '{{expiration}}');
  EXECUTE format('GRANT CONNECT ON DATABASE %I TO %I', current_database(), '{{name}}');
  SELECT datname INTO other FROM pg_database
   WHERE datallowconn AND datname <> current_database()
     AND has_database_privilege('{{name}}', oid, 'CONNECT')
   LIMIT 1;
  IF other IS NOT NULL THEN
    RAISE EXCEPTION 'the new role could connect to database %, where its revocation cannot reach: revoke CONNECT on it from PUBLIC', other;
  END IF;
END
$$;
