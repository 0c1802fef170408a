-- 001: the consent ledger.
-- consent_event is legal evidence: append-only, enforced by the database itself
-- (triggers reject UPDATE, DELETE and TRUNCATE whoever asks, short of a superuser
-- disabling them; migration 003's hash chain then catches that too).

CREATE TABLE consent_event (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- when the ledger learned of the decision: the database clock, never the app's
    recorded_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- when the caller pressed the key (server clock; differs from recorded_at only
    -- for decisions replayed from the durable journal after a database outage)
    decided_at        timestamptz NOT NULL,
    number_e164       text        NOT NULL CHECK (number_e164 ~ '^\+[1-9][0-9]{6,14}$'),
    organisation      text        NOT NULL CHECK (organisation <> ''),
    purpose           text        NOT NULL CHECK (purpose ~ '^[a-z0-9][a-z0-9._-]{0,63}$'),
    channel           text        NOT NULL CHECK (channel IN ('automated_call', 'live_call')),
    decision          text        NOT NULL CHECK (decision IN ('opt_in', 'opt_out')),
    method            text        NOT NULL CHECK (method IN (
                          'ivr_inbound', 'ivr_agent_transfer', 'ivr_outbound_reconfirm',
                          'ivr_outbound_opt_out', 'import', 'admin')),
    captured_by       text        NOT NULL DEFAULT 'first_party'
                                  CHECK (captured_by IN ('first_party', 'third_party')),
    third_party_name  text,
    evidence_strength text        NOT NULL CHECK (evidence_strength IN ('caller_id', 'keyed_in', 'import')),
    -- [{"step": "question", "digit": "1", "offset_ms": 5230}, ...] from call start
    digits            jsonb       NOT NULL DEFAULT '[]'::jsonb,
    -- [{"id": "identify", "lang": "en", "sha256": "…", "text": "…"}, ...] in playing order
    prompts           jsonb       NOT NULL DEFAULT '[]'::jsonb,
    uniqueid          text,
    linkedid          text,
    channel_name      text,
    callerid_num      text,
    callerid_name     text,
    call_started_at   timestamptz,
    instance          text        NOT NULL,
    source            text        NOT NULL DEFAULT 'live' CHECK (source IN ('live', 'journal', 'import')),
    -- natural key of the decision (call uniqueid + channel + step): a retried or
    -- replayed write can never create a second row
    idempotency_key   text        NOT NULL UNIQUE
);

-- "latest event wins" for one number, organisation, purpose and channel
CREATE INDEX consent_event_lookup
    ON consent_event (number_e164, purpose, organisation, channel, decided_at DESC, id DESC);

CREATE FUNCTION consent_event_reject_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'consent_event is append-only: % rejected', TG_OP
        USING ERRCODE = 'P0001', HINT = 'record a new event (e.g. an opt_out) instead';
END;
$$;

CREATE TRIGGER consent_event_no_update_delete
    BEFORE UPDATE OR DELETE ON consent_event
    FOR EACH ROW EXECUTE FUNCTION consent_event_reject_change();

CREATE TRIGGER consent_event_no_truncate
    BEFORE TRUNCATE ON consent_event
    FOR EACH STATEMENT EXECUTE FUNCTION consent_event_reject_change();

-- Calls that ended without a decision: kept for audit, never consent.
CREATE TABLE consent_attempt (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    recorded_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    route             text        NOT NULL,
    outcome           text        NOT NULL CHECK (outcome IN (
                          'no_decision', 'hangup', 'error', 'interrupted', 'refused')),
    reason            text        NOT NULL,
    number_e164       text,
    organisation      text,
    purpose           text,
    digits            jsonb       NOT NULL DEFAULT '[]'::jsonb,
    prompts           jsonb       NOT NULL DEFAULT '[]'::jsonb,
    uniqueid          text,
    linkedid          text,
    channel_name      text,
    callerid_num      text,
    callerid_name     text,
    call_started_at   timestamptz,
    ended_at          timestamptz,
    instance          text        NOT NULL,
    idempotency_key   text        NOT NULL UNIQUE
);

CREATE INDEX consent_attempt_number ON consent_attempt (number_e164, recorded_at);
