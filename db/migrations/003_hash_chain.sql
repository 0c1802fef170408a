-- 003: tamper evidence — a sha256 hash chain over consent_event.
--
-- Every event carries prev_hash (the hash of the event before it, by id; 32 zero
-- bytes for the first) and hash = sha256(prev_hash || convert_to(canonical, 'UTF8')),
-- where canonical is consent_event_canonical(), a stable text encoding of every
-- evidentiary column (documented in docs/security.md; agi/chain.py computes the same
-- bytes in Python, and the tests prove the two agree):
--
--   consent_event.v1\n
--   then, for each column in the fixed order below, one line:
--     <name>=<n>:<value>\n     n = length of <value> in UTF-8 bytes
--     <name>=~\n               NULL
--   timestamptz  → microseconds since 1970-01-01T00:00:00Z, decimal
--   jsonb        → PostgreSQL's jsonb text form (keys ordered by length then bytes,
--                  ", " and ": " separators, non-ASCII as UTF-8)
--   bigint/text  → decimal / the text itself
--
-- The BEFORE INSERT trigger serialises writers with a transaction-level advisory
-- lock, reads the chain tail, and assigns recorded_at (and id when needed) under it, so
-- chain order = id order = recorded_at order. An AFTER INSERT trigger moves the
-- chain head (consent_chain_head) only for rows really inserted (an
-- INSERT … ON CONFLICT DO NOTHING that skips its row fires the BEFORE trigger but
-- not the AFTER one), and refuses a row whose prev_hash is not the head: under
-- REPEATABLE READ a stale snapshot raises a serialization failure instead of forking
-- the chain. The head also exposes a deleted last row. Both functions are SECURITY
-- DEFINER so the application role needs no right on the head table.

ALTER TABLE consent_event ADD COLUMN prev_hash bytea, ADD COLUMN hash bytea;

CREATE FUNCTION consent_event_canonical(e consent_event) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT 'consent_event.v1' || E'\n' || string_agg(
        f.name || '=' || CASE WHEN f.value IS NULL THEN '~'
                              ELSE octet_length(convert_to(f.value, 'UTF8')) || ':' || f.value END,
        E'\n' ORDER BY f.ord) || E'\n'
    FROM (VALUES
        (1,  'id',                e.id::text),
        (2,  'recorded_at',       ((extract(epoch FROM e.recorded_at) * 1000000)::bigint)::text),
        (3,  'decided_at',        ((extract(epoch FROM e.decided_at) * 1000000)::bigint)::text),
        (4,  'number_e164',       e.number_e164),
        (5,  'organisation',      e.organisation),
        (6,  'purpose',           e.purpose),
        (7,  'channel',           e.channel),
        (8,  'decision',          e.decision),
        (9,  'method',            e.method),
        (10, 'captured_by',       e.captured_by),
        (11, 'third_party_name',  e.third_party_name),
        (12, 'evidence_strength', e.evidence_strength),
        (13, 'digits',            e.digits::text),
        (14, 'prompts',           e.prompts::text),
        (15, 'uniqueid',          e.uniqueid),
        (16, 'linkedid',          e.linkedid),
        (17, 'channel_name',      e.channel_name),
        (18, 'callerid_num',      e.callerid_num),
        (19, 'callerid_name',     e.callerid_name),
        (20, 'call_started_at',   ((extract(epoch FROM e.call_started_at) * 1000000)::bigint)::text),
        (21, 'instance',          e.instance),
        (22, 'source',            e.source),
        (23, 'idempotency_key',   e.idempotency_key)
    ) AS f(ord, name, value)
$$;

CREATE FUNCTION consent_event_hash(prev bytea, e consent_event) RETURNS bytea
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT sha256(prev || convert_to(consent_event_canonical(e), 'UTF8'))
$$;

-- One row: the hash and id of the last event. Not granted to the application.
CREATE TABLE consent_chain_head (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    last_id   bigint,
    hash      bytea   NOT NULL
);

-- Backfill events written before this migration (append-only triggers paused for it).
ALTER TABLE consent_event DISABLE TRIGGER consent_event_no_update_delete;
DO $$
DECLARE
    r    consent_event;
    prev bytea := '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea;
    last bigint;
BEGIN
    FOR r IN SELECT * FROM consent_event ORDER BY id LOOP
        UPDATE consent_event SET prev_hash = prev, hash = consent_event_hash(prev, r)
            WHERE id = r.id;
        prev := consent_event_hash(prev, r);
        last := r.id;
    END LOOP;
    INSERT INTO consent_chain_head (last_id, hash) VALUES (last, prev);
END
$$;
ALTER TABLE consent_event ENABLE TRIGGER consent_event_no_update_delete;
ALTER TABLE consent_event ALTER COLUMN prev_hash SET NOT NULL, ALTER COLUMN hash SET NOT NULL;

CREATE FUNCTION consent_event_chain() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    prev    bytea;
    prev_id bigint;
BEGIN
    -- writers queue here until the transaction holding the lock commits or aborts
    PERFORM pg_advisory_xact_lock(hashtext('consent_event_chain'));
    -- a fresh snapshot (volatile function): sees every committed event and the rows
    -- this same statement inserted before this one
    SELECT id, hash INTO prev_id, prev FROM consent_event ORDER BY id DESC LIMIT 1;
    NEW.prev_hash := coalesce(prev, '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea);
    -- the identity default was drawn before the lock: a writer that drew a later id
    -- may have committed first, so draw again to keep id order = chain order
    IF prev_id IS NOT NULL AND NEW.id <= prev_id THEN
        NEW.id := nextval(pg_get_serial_sequence('consent_event', 'id'));
    END IF;
    NEW.recorded_at := clock_timestamp();
    NEW.hash := consent_event_hash(NEW.prev_hash, NEW);
    RETURN NEW;
END;
$$;

CREATE FUNCTION consent_event_chain_head() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    UPDATE consent_chain_head SET last_id = NEW.id, hash = NEW.hash
        WHERE hash = NEW.prev_hash;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'consent_event hash chain: event % does not extend the chain head', NEW.id
            USING ERRCODE = '40001', HINT = 'retry the transaction';
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER consent_event_chain_link
    BEFORE INSERT ON consent_event
    FOR EACH ROW EXECUTE FUNCTION consent_event_chain();

CREATE TRIGGER consent_event_chain_advance
    AFTER INSERT ON consent_event
    FOR EACH ROW EXECUTE FUNCTION consent_event_chain_head();

REVOKE ALL ON consent_chain_head FROM PUBLIC;
GRANT SELECT ON consent_chain_head TO consent_ivr_readonly, consent_ivr_app;
