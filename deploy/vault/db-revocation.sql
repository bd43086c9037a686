-- revocation_statements of the database role "readonly" (docs/vault.md).
-- Vault runs this block as one statement in one transaction, as its
-- database user (a superuser), with {{name}} filled in. Valet revokes the
-- lease synchronously, so an error here reaches Valet, which retries.
--
-- Order matters: no new logins, then every session of the role is ended
-- (found by role oid, so a session never hides behind a renamed or
-- dropped role), then everything it owns in this database is dropped
-- (tables, TEMP tables, large objects, default privileges and its grants,
-- also on shared objects), then the role itself. A role that is gone
-- already is not an error: revoking twice is harmless.
DO $$
DECLARE
  r oid;
  alive int;
BEGIN
  SELECT oid INTO r FROM pg_roles WHERE rolname = '{{name}}';
  IF r IS NULL THEN
    RETURN;
  END IF;
  EXECUTE format('ALTER ROLE %I NOLOGIN', '{{name}}');
  -- pg_terminate_backend(pid, timeout) waits until the backend is gone.
  PERFORM pg_terminate_backend(pid, 5000) FROM pg_stat_activity
   WHERE usesysid = r AND pid <> pg_backend_pid();
  -- Within a transaction pg_stat_activity is a snapshot: take a new one.
  PERFORM pg_stat_clear_snapshot();
  SELECT count(*) INTO alive FROM pg_stat_activity WHERE usesysid = r AND pid <> pg_backend_pid();
  IF alive > 0 THEN
    RAISE EXCEPTION 'role % still has % session(s) after pg_terminate_backend', '{{name}}', alive;
  END IF;
  EXECUTE format('DROP OWNED BY %I CASCADE', '{{name}}');
  EXECUTE format('DROP ROLE %I', '{{name}}');
END
$$;
