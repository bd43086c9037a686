-- revocation_statements of the database role "readonly" (docs/vault.md).
-- Vault runs this block as one statement in one transaction, as its
-- database user (a superuser), with {{name}} filled in. Valet revokes the
-- lease synchronously, so an error here reaches Valet, which retries.
--
-- Sessions are found by role oid (usesysid), never by name. The role
-- keeps LOGIN until this transaction commits (other sessions cannot see
-- the NOLOGIN before that), so its sessions are ended until a pass finds
-- none, then everything it owns in this database is dropped (tables, TEMP
-- tables, large objects, default privileges and its grants, also on
-- shared objects), then the role, then its sessions are ended once more.
-- Sessions of roles dropped earlier (usesysid without a role) are ended
-- too. A role that is gone already is not an error.
DO $$
DECLARE
  r oid;
  pass int := 0;
  alive int;
BEGIN
  SET LOCAL lock_timeout = '5s';
  PERFORM pg_terminate_backend(pid, 1000) FROM pg_stat_activity
   WHERE backend_type = 'client backend' AND usesysid IS NOT NULL
     AND usesysid NOT IN (SELECT oid FROM pg_roles);
  SELECT oid INTO r FROM pg_roles WHERE rolname = '{{name}}';
  IF r IS NULL THEN
    RETURN;
  END IF;
  EXECUTE format('ALTER ROLE %I NOLOGIN', '{{name}}');
  LOOP
    PERFORM pg_terminate_backend(pid) FROM pg_stat_activity
     WHERE usesysid = r AND pid <> pg_backend_pid();
    PERFORM pg_sleep(0.002);
    -- Within a transaction pg_stat_activity is a snapshot: take a new one.
    PERFORM pg_stat_clear_snapshot();
    SELECT count(*) INTO alive FROM pg_stat_activity WHERE usesysid = r AND pid <> pg_backend_pid();
    EXIT WHEN alive = 0;
    pass := pass + 1;
    IF pass >= 2500 THEN
      RAISE EXCEPTION 'role % still has % session(s) after % passes of pg_terminate_backend', '{{name}}', alive, pass;
    END IF;
  END LOOP;
  EXECUTE format('DROP OWNED BY %I CASCADE', '{{name}}');
  EXECUTE format('DROP ROLE %I', '{{name}}');
  PERFORM pg_stat_clear_snapshot();
  PERFORM pg_terminate_backend(pid, 5000) FROM pg_stat_activity
   WHERE usesysid = r AND pid <> pg_backend_pid();
END
$$;
