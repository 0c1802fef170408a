-- 002: database roles for least privilege.
--
--   consent_ivr_app       what `consent-ivr serve` needs: INSERT and SELECT on the
--                         ledger; never UPDATE, DELETE or TRUNCATE of consent_event.
--   consent_ivr_readonly  auditors, reports, `consent-ivr status|evidence|verify-ledger`.
--
-- Both are NOLOGIN group roles. Roles are cluster-wide while migrations run per
-- database (and the tests clone databases from a template), so creation is
-- idempotent and tolerates a concurrent migrator of another database creating the
-- same role a moment earlier. Give a login role the group, e.g.:
--
--   CREATE ROLE consent_ivr_server LOGIN PASSWORD '…' IN ROLE consent_ivr_app;
--   DATABASE_URL=postgresql://consent_ivr_server:…@db/consent consent-ivr serve
--
-- and run `consent-ivr migrate` as the owning role (the one that created the tables).
--
-- Pattern for later migrations that add tables the server writes (e.g. the dialer's):
--
--   GRANT SELECT, INSERT ON new_table TO consent_ivr_app;          -- append-only data
--   GRANT UPDATE (state, updated_at) ON new_table TO consent_ivr_app;  -- only if needed,
--                                                                  -- column by column
-- The read-only role gets SELECT on future tables through the default privileges below.

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'consent_ivr_app') THEN
        BEGIN
            CREATE ROLE consent_ivr_app NOLOGIN;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;  -- another database's migration created it meanwhile
        END;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'consent_ivr_readonly') THEN
        BEGIN
            CREATE ROLE consent_ivr_readonly NOLOGIN;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;
        END;
    END IF;
END
$$;

GRANT USAGE ON SCHEMA public TO consent_ivr_app, consent_ivr_readonly;

-- the ledger: append and read, nothing else
REVOKE ALL ON consent_event, consent_attempt FROM consent_ivr_app;
GRANT SELECT, INSERT ON consent_event, consent_attempt TO consent_ivr_app;
-- `serve` checks for pending migrations at start
GRANT SELECT ON schema_migration TO consent_ivr_app;

GRANT SELECT ON ALL TABLES IN SCHEMA public TO consent_ivr_readonly;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO consent_ivr_readonly;
