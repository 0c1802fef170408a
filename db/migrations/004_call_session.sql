-- 004: one row per FastAGI call, so a call cut by a crash is visible afterwards.
--
-- Written off the call's critical path: inserted ('in_progress') just after the
-- connection is authenticated, finished when the call ends. A server killed with
-- SIGKILL leaves its rows 'in_progress'; the next start of the same instance (another
-- boot_id) marks them 'interrupted' and files an 'interrupted' consent_attempt for
-- each that holds no decision — never consent. Instance names must therefore be
-- unique per running server process (CONSENT_IVR_INSTANCE).

CREATE TABLE call_session (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    call_id         text        NOT NULL,
    instance        text        NOT NULL,
    boot_id         uuid        NOT NULL,
    route           text        NOT NULL,
    state           text        NOT NULL DEFAULT 'in_progress'
                                CHECK (state IN ('in_progress', 'finished', 'interrupted')),
    outcome         text,
    uniqueid        text,
    channel_name    text,
    callerid_num    text,
    callerid_name   text,
    number_e164     text,
    peer            text,
    started_at      timestamptz NOT NULL,
    ended_at        timestamptz,
    recorded_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    UNIQUE (instance, boot_id, call_id)
);

CREATE INDEX call_session_open ON call_session (instance, boot_id) WHERE state = 'in_progress';
CREATE INDEX call_session_number ON call_session (number_e164, started_at);
CREATE INDEX call_session_uniqueid ON call_session (uniqueid);
-- the recovery looks decisions and attempts up by call
CREATE INDEX IF NOT EXISTS consent_event_uniqueid ON consent_event (uniqueid);
CREATE INDEX IF NOT EXISTS consent_attempt_uniqueid ON consent_attempt (uniqueid);

GRANT SELECT, INSERT ON call_session TO consent_ivr_app;
GRANT UPDATE (state, outcome, ended_at) ON call_session TO consent_ivr_app;
GRANT SELECT ON call_session TO consent_ivr_readonly;
