-- 010: campaigns, contact lists, suppression lists, do-not-call, the dialer's job and attempt
-- tables, and the evidence of every marketing playback or refusal (issue 3, sections 2-5).
--
-- Fail closed in the schema too: a play row whose consent the database cannot verify halts its
-- campaign (trigger), and an opt-out pressed on an outbound marketing call is a do-not-call entry
-- written in the same transaction as the opt-out event (trigger), whichever path stored it
-- (live write or journal replay).

CREATE TABLE campaign (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name             text        NOT NULL UNIQUE CHECK (name ~ '^[a-z0-9][a-z0-9._-]{0,63}$'),
    organisation     text        NOT NULL CHECK (organisation <> ''),
    purpose          text        NOT NULL CHECK (purpose ~ '^[a-z0-9][a-z0-9._-]{0,63}$'),
    profile          text        NOT NULL,
    audio_prompt     text        NOT NULL CHECK (audio_prompt ~ '^[a-z0-9][a-z0-9._-]{0,63}$'),
    -- the campaign's own calling window in the callee's local time (half-open), on top of
    -- the profile's statutory window
    window_start     time,
    window_end       time,
    caller_id        text        NOT NULL,
    dial_template    text        NOT NULL CHECK (dial_template LIKE '%{number}%'),
    default_region   text        NOT NULL DEFAULT 'GB',
    pacing_cps       double precision NOT NULL CHECK (pacing_cps > 0 AND pacing_cps <= 1000),
    max_concurrent   integer     NOT NULL CHECK (max_concurrent > 0),
    max_attempts     integer     NOT NULL CHECK (max_attempts > 0),
    retry_spacing    interval    NOT NULL CHECK (retry_spacing >= interval '0'),
    ring_seconds     integer     NOT NULL CHECK (ring_seconds > 0),
    opt_out_key      text        NOT NULL DEFAULT '9' CHECK (opt_out_key ~ '^[0-9*#]$'),
    status           text        NOT NULL DEFAULT 'active'
                                 CHECK (status IN ('active', 'paused', 'halted')),
    halted_at        timestamptz,
    halt_reason      text,
    -- token bucket shared by every dialer worker (updated under the campaign row lock)
    pace_tokens      double precision NOT NULL DEFAULT 1,
    pace_updated_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    created_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    CHECK ((window_start IS NULL) = (window_end IS NULL)),
    CHECK (window_start IS NULL OR window_start < window_end)
);

-- One row per number per campaign; it is also the dialer's job.
CREATE TABLE contact (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    campaign_id      bigint      NOT NULL REFERENCES campaign (id),
    number_e164      text        NOT NULL CHECK (number_e164 ~ '^\+[1-9][0-9]{6,14}$'),
    -- IANA zones phonenumbers places the number in (empty: cannot place it), computed at
    -- import so the dry run can evaluate calling hours set-based
    time_zones       text[]      NOT NULL,
    source_file      text,
    source_line      integer,
    imported_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    state            text        NOT NULL DEFAULT 'ready'
                                 CHECK (state IN ('ready', 'dialling', 'done', 'refused', 'exhausted')),
    attempts         integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    last_attempt_at  timestamptz,
    next_attempt_at  timestamptz NOT NULL DEFAULT '-infinity',
    lease_owner      text,
    lease_expires_at timestamptz,
    outcome          text,
    UNIQUE (campaign_id, number_e164),
    CHECK ((state = 'dialling') = (lease_expires_at IS NOT NULL))
);

CREATE INDEX contact_due ON contact (campaign_id, next_attempt_at, id) WHERE state = 'ready';
CREATE INDEX contact_lease ON contact (lease_expires_at) WHERE state = 'dialling';

-- Suppression lists (TPS, CTPS, US National DNC, internal) as dated snapshots. Each snapshot's
-- numbers live in their own partition, so loading millions is COPY into a fresh table, an index
-- build and a quick ATTACH; replacing a snapshot detaches and drops the old partition.
CREATE TABLE suppression_snapshot (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    list        text        NOT NULL CHECK (list IN ('tps', 'ctps', 'us-dnc', 'internal')),
    as_of       date        NOT NULL,
    loaded_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    source_file text,
    numbers     bigint      NOT NULL DEFAULT 0,
    rejected    bigint      NOT NULL DEFAULT 0,
    current     boolean     NOT NULL DEFAULT false
);

CREATE UNIQUE INDEX suppression_snapshot_current ON suppression_snapshot (list) WHERE current;

CREATE TABLE suppression_entry (
    snapshot_id bigint NOT NULL,
    number_e164 text   NOT NULL
) PARTITION BY LIST (snapshot_id);

CREATE INDEX suppression_entry_number ON suppression_entry (number_e164);

-- Company-specific do-not-call entries (press-9 requests, admin entries). Permanent: a later
-- opt-in does not lift one; only an administrator can (and that is not automated).
CREATE TABLE do_not_call (
    number_e164      text        NOT NULL CHECK (number_e164 ~ '^\+[1-9][0-9]{6,14}$'),
    organisation     text        NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    source           text        NOT NULL,
    consent_event_id bigint,
    PRIMARY KEY (number_e164, organisation)
);

CREATE FUNCTION consent_event_do_not_call() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    INSERT INTO do_not_call (number_e164, organisation, source, consent_event_id)
    VALUES (NEW.number_e164, NEW.organisation, NEW.method, NEW.id)
    ON CONFLICT DO NOTHING;
    RETURN NULL;
END;
$$;

CREATE TRIGGER consent_event_outbound_opt_out_dnc
    AFTER INSERT ON consent_event
    FOR EACH ROW
    WHEN (NEW.decision = 'opt_out' AND NEW.method = 'ivr_outbound_opt_out')
    EXECUTE FUNCTION consent_event_do_not_call();

-- Every gate decision of the dialer (allowed or refused) and, for allowed ones, the call.
CREATE TABLE dial_attempt (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    campaign_id       bigint      NOT NULL REFERENCES campaign (id),
    contact_id        bigint      NOT NULL REFERENCES contact (id),
    number_e164       text        NOT NULL,
    attempt_no        integer     NOT NULL,
    decided_at        timestamptz NOT NULL DEFAULT clock_timestamp(),
    allowed           boolean     NOT NULL,
    reason            text        NOT NULL,
    rule              text        NOT NULL,
    detail            text        NOT NULL DEFAULT '',
    consent_event_id  bigint,
    worker            text        NOT NULL,
    -- refused: the gate said no; originating: Originate sent (or about to be);
    -- answered / completed / failed: from AMI; unknown: the outcome was lost (AMI loss, worker
    -- death) -- counted as an attempt, never re-sent
    state             text        NOT NULL CHECK (state IN (
                          'refused', 'originating', 'answered', 'completed', 'failed', 'unknown')),
    action_id         text UNIQUE,
    uniqueid          text,
    originate_reason  integer,
    hangup_cause      integer,
    -- set by the marketing route: played | refused | opted_out | error
    result            text,
    answered_at       timestamptz,
    ended_at          timestamptz,
    CHECK (allowed = (state <> 'refused'))
);

CREATE INDEX dial_attempt_contact ON dial_attempt (contact_id, id);
CREATE INDEX dial_attempt_active ON dial_attempt (campaign_id)
    WHERE state IN ('originating', 'answered');

-- The independent check behind every playback: SQL, not the Python gate, so a defect in one is
-- caught by the other. True only if event_id is the opt-in a playback may rely on at time "at".
CREATE FUNCTION marketing_consent_ok(
    p_number text, p_org text, p_purpose text, p_event bigint,
    p_call_started timestamptz, p_at timestamptz
) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT COALESCE((
        SELECT e.decision = 'opt_in'
           AND e.channel = 'automated_call'
           AND e.number_e164 = p_number
           AND e.organisation = p_org
           AND e.purpose = p_purpose
           AND e.recorded_at < p_call_started
           -- no newer event for this purpose on the automated channel
           AND NOT EXISTS (
               SELECT 1 FROM consent_event n
                WHERE n.number_e164 = p_number AND n.organisation = p_org
                  AND n.purpose = p_purpose AND n.channel = 'automated_call'
                  AND n.recorded_at <= p_at
                  AND (n.decided_at, n.id) > (e.decided_at, e.id))
           -- no newer opt-out from this organisation, whatever purpose or channel
           AND NOT EXISTS (
               SELECT 1 FROM consent_event o
                WHERE o.number_e164 = p_number AND o.organisation = p_org
                  AND o.decision = 'opt_out' AND o.recorded_at <= p_at
                  AND (o.decided_at, o.id) > (e.decided_at, e.id))
           AND NOT EXISTS (
               SELECT 1 FROM do_not_call d
                WHERE d.number_e164 = p_number AND d.organisation = p_org)
           AND NOT EXISTS (
               SELECT 1 FROM suppression_entry s
                 JOIN suppression_snapshot ss ON ss.id = s.snapshot_id AND ss.current
                WHERE s.number_e164 = p_number)
          FROM consent_event e WHERE e.id = p_event), false)
$$;

-- One row per playback of campaign audio, written (with the consent it relies on) right
-- before the audio starts; status moves on as the call goes.
CREATE TABLE marketing_play (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    campaign_id       bigint      NOT NULL REFERENCES campaign (id),
    dial_attempt_id   bigint REFERENCES dial_attempt (id),
    number_e164       text        NOT NULL,
    consent_event_id  bigint      NOT NULL,
    consent_verified  boolean     NOT NULL,
    call_started_at   timestamptz NOT NULL,
    started_at        timestamptz NOT NULL DEFAULT clock_timestamp(),
    ended_at          timestamptz,
    -- blocked: the database could not verify the consent, nothing played
    status            text        NOT NULL DEFAULT 'playing' CHECK (status IN (
                          'blocked', 'playing', 'completed', 'opted_out', 'hangup', 'error')),
    audio_prompt      text        NOT NULL,
    prompts           jsonb       NOT NULL DEFAULT '[]'::jsonb,
    uniqueid          text,
    channel_name      text,
    instance          text        NOT NULL,
    idempotency_key   text        NOT NULL UNIQUE
);

CREATE INDEX marketing_play_campaign ON marketing_play (campaign_id);
CREATE INDEX marketing_play_unverified ON marketing_play (campaign_id) WHERE NOT consent_verified;

-- Circuit breaker: any playback the database cannot verify halts the campaign, in the same
-- transaction that records it.
CREATE FUNCTION marketing_play_breaker() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    IF NOT NEW.consent_verified THEN
        UPDATE campaign
           SET status = 'halted', halted_at = COALESCE(halted_at, clock_timestamp()),
               halt_reason = COALESCE(halt_reason, 'unverified consent on marketing_play '
                                      || NEW.id || ' (' || NEW.status || ')')
         WHERE id = NEW.campaign_id;
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER marketing_play_breaker
    AFTER INSERT OR UPDATE ON marketing_play
    FOR EACH ROW EXECUTE FUNCTION marketing_play_breaker();

CREATE TABLE marketing_refused (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    recorded_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    campaign_id      bigint REFERENCES campaign (id),
    dial_attempt_id  bigint REFERENCES dial_attempt (id),
    number_e164      text,
    reason           text        NOT NULL,
    rule             text        NOT NULL DEFAULT '',
    detail           text        NOT NULL DEFAULT '',
    consent_event_id bigint,
    uniqueid         text,
    channel_name     text,
    instance         text        NOT NULL,
    idempotency_key  text        NOT NULL UNIQUE
);

CREATE INDEX marketing_refused_campaign ON marketing_refused (campaign_id);

-- What `consent-ivr serve` (role consent_ivr_app, see 002) needs for the marketing route: read
-- campaigns, lists and attempts; append plays and refusals; move a play's status and an
-- attempt's result. The dialer and the import commands run as the owning role.
GRANT SELECT ON campaign, contact, suppression_snapshot, suppression_entry, do_not_call,
    dial_attempt TO consent_ivr_app;
GRANT SELECT, INSERT ON marketing_play, marketing_refused TO consent_ivr_app;
GRANT UPDATE (status, ended_at, prompts) ON marketing_play TO consent_ivr_app;
GRANT UPDATE (result, answered_at) ON dial_attempt TO consent_ivr_app;
