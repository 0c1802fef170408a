"""The consent flow end to end: the strict fake Asterisk over real TCP, real PostgreSQL.

Assertions are made outside the server: on what crossed the wire (the fake's record)
and what landed in the database — never inside a route whose errors the server swallows.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import asyncpg
import pytest

from agi.calls.consent import ConsentFlow
from agi.calls.dialogue import MAX_IGNORED_KEYS
from agi.calls.prompts import PromptCatalogue, PromptError
from agi.ledger.records import AttemptRecord, CommitResult, ConsentDecision, StorageUnavailable
from agi.ops import resources
from agi.ops.config import Settings
from tests.fakes import HANGUP, OPT_IN, SILENCE, CallRecord, FakeAsterisk
from tests.harness import consent_stack, running_server

CALLER = "+447400123456"
Q = "consent-ivr/question-marketing-calls"


async def call(port: int, **kwargs: Any) -> CallRecord:
    kwargs.setdefault("callerid", CALLER)
    kwargs.setdefault("calleridname", 'Jane "JJ" Doe')
    return await FakeAsterisk("127.0.0.1", port, **kwargs).run()


async def events(pool: asyncpg.Pool) -> list[dict[str, Any]]:
    rows = await pool.fetch("SELECT * FROM consent_event ORDER BY id")
    out = []
    for r in rows:
        d = dict(r)
        d["digits"] = json.loads(d["digits"])
        d["prompts"] = json.loads(d["prompts"])
        out.append(d)
    return out


async def attempts(pool: asyncpg.Pool) -> list[dict[str, Any]]:
    return [dict(r) for r in await pool.fetch("SELECT * FROM consent_attempt ORDER BY id")]


@pytest.fixture
async def server(settings: Settings, pool: asyncpg.Pool):  # type: ignore[no-untyped-def]
    flow, _, _ = consent_stack(settings, pool)
    async with running_server(settings, {"consent": flow}) as srv:
        yield srv


async def test_opt_in_with_confirmation(server, pool: asyncpg.Pool) -> None:  # type: ignore[no-untyped-def]
    rec = await call(server.port, presses=OPT_IN, uniqueid="1796006581.1")
    assert rec.variables["CONSENT_RESULT"] == "opted_in", rec.dialogue()
    [event] = await events(pool)
    assert rec.variables["CONSENT_EVENT_ID"] == str(event["id"])
    assert event["decision"] == "opt_in" and event["number_e164"] == CALLER
    assert event["method"] == "ivr_inbound" and event["evidence_strength"] == "caller_id"
    assert event["channel"] == "automated_call" and event["purpose"] == "marketing-calls"
    assert event["callerid_name"] == 'Jane "JJ" Doe' and event["uniqueid"] == "1796006581.1"
    steps = [(d["step"], d["digit"]) for d in event["digits"]]
    assert steps == [("question", "1"), ("confirm", "1")]
    assert [p["id"] for p in event["prompts"]] == [
        "identify", "question-marketing-calls", "statement-marketing-calls", "confirm-opt-in"]
    statement = event["prompts"][2]
    assert statement["heard_ms"] == statement["length_ms"] > 10_000  # heard whole
    manifest = json.loads((server.settings.sounds_dir / "manifest.json").read_text())
    shas = {(p["id"], p["lang"]): p["sha256"] for p in manifest["prompts"]}
    for p in event["prompts"]:
        assert p["sha256"] == shas[(p["id"], "en")] and p["lang"] == "en" and p["text"]
    # the caller heard "recorded" only after CONSENT_EVENT_ID (the commit) was set
    names = rec.prompt_names()
    assert names[-1] == "consent-ivr/opted-in"
    set_order = [name for name, _ in rec.variables_set]
    assert set_order[0] == "CONSENT_RESULT"  # the safe value first
    assert rec.variables_set[0] == ("CONSENT_RESULT", "error")
    assert await attempts(pool) == []


async def test_commit_happens_before_confirmation_prompt(settings: Settings, pool) -> None:  # type: ignore[no-untyped-def]
    flow, real_store, _ = consent_stack(settings, pool)
    seen: dict[str, Any] = {}

    class Spy:
        async def commit_decision(self, d: ConsentDecision) -> CommitResult:
            seen["prompts_before_commit"] = list(fake.record.prompt_names())
            return await real_store.commit_decision(d)

        async def record_attempt(self, a: AttemptRecord) -> None:
            await real_store.record_attempt(a)

    flow.store = Spy()
    async with running_server(settings, {"consent": flow}) as srv:
        fake = FakeAsterisk("127.0.0.1", srv.port, callerid=CALLER, presses=["2"])
        rec = await fake.run()
    assert "consent-ivr/opted-out" not in seen["prompts_before_commit"]
    assert rec.prompt_names()[-1] == "consent-ivr/opted-out"
    assert rec.variables["CONSENT_RESULT"] == "opted_out"


async def test_opt_out_needs_no_confirmation(server, pool) -> None:  # type: ignore[no-untyped-def]
    rec = await call(server.port, presses=["2"])
    assert rec.variables["CONSENT_RESULT"] == "opted_out"
    [event] = await events(pool)
    assert event["decision"] == "opt_out"
    assert "consent-ivr/confirm-opt-in" not in rec.prompt_names()


async def test_identification_plays_whole_before_any_key(server, pool) -> None:  # type: ignore[no-untyped-def]
    rec = await call(server.port, presses=["2"])
    assert rec.variables["CONSENT_RESULT"] == "opted_out"
    identify = rec.prompts[0]
    assert identify.name == "consent-ivr/identify" and identify.outcome == "completed"
    [event] = await events(pool)
    assert event["prompts"][0] == {**event["prompts"][0], "id": "identify", "interrupted": False}


async def test_opt_in_then_cancel_records_nothing(server, pool) -> None:  # type: ignore[no-untyped-def]
    rec = await call(server.port, presses=["1", SILENCE, "3"])
    assert rec.variables["CONSENT_RESULT"] == "no_decision"
    assert await events(pool) == []
    [attempt] = await attempts(pool)
    assert attempt["reason"] == "cancelled" and attempt["outcome"] == "no_decision"
    assert "consent-ivr/cancelled" in rec.prompt_names()


async def test_repeat_key_plays_the_question_again(server, pool) -> None:  # type: ignore[no-untyped-def]
    rec = await call(server.port, presses=["*", *OPT_IN])
    assert rec.variables["CONSENT_RESULT"] == "opted_in"
    assert rec.prompt_names().count(Q) == 2


async def test_invalid_key_then_valid(server, pool) -> None:  # type: ignore[no-untyped-def]
    rec = await call(server.port, presses=["5", "2"])
    assert rec.variables["CONSENT_RESULT"] == "opted_out"
    assert "consent-ivr/invalid-key" in rec.prompt_names()
    [event] = await events(pool)
    assert [d["digit"] for d in event["digits"]] == ["5", "2"]


async def test_three_timeouts_record_no_decision(server, pool) -> None:  # type: ignore[no-untyped-def]
    rec = await call(server.port, presses=[SILENCE] * 3)
    assert rec.variables["CONSENT_RESULT"] == "no_decision"
    assert rec.prompt_names().count(Q) == 3
    assert rec.prompt_names()[-1] == "consent-ivr/no-decision"
    assert await events(pool) == []
    [attempt] = await attempts(pool)
    assert attempt["reason"] == "timeout" and attempt["number_e164"] == CALLER


async def test_three_invalid_keys_record_no_decision(server, pool) -> None:  # type: ignore[no-untyped-def]
    rec = await call(server.port, presses=["7", "8", "#"])
    assert rec.variables["CONSENT_RESULT"] == "no_decision"
    assert await events(pool) == []
    assert (await attempts(pool))[0]["reason"] == "invalid_keys"


async def test_silence_on_confirmation_never_opts_in(server, pool) -> None:  # type: ignore[no-untyped-def]
    rec = await call(server.port, presses=["1", SILENCE, SILENCE, SILENCE])
    assert rec.variables["CONSENT_RESULT"] == "no_decision"
    assert await events(pool) == []
    assert (await attempts(pool))[0]["reason"] == "not_confirmed"


@pytest.mark.parametrize(
    ("caller", "stored"),
    [
        pytest.param({"hangup_after": 4}, False, id="right-after-answer"),
        pytest.param({"timeline": [(1.0, HANGUP)]}, False, id="during-identification"),
        pytest.param({"presses": [HANGUP]}, False, id="during-question"),
        pytest.param({"presses": ["1", HANGUP]}, False, id="during-statement"),
        pytest.param({"presses": ["1", SILENCE, HANGUP]}, False, id="during-confirmation"),
        pytest.param({"presses": ["*", HANGUP]}, False, id="during-repeat"),
        pytest.param({"presses": ["4", HANGUP]}, False, id="during-invalid-key-reprompt"),
        pytest.param({"presses": OPT_IN, "hangup_after": 11}, True,
                     id="during-recorded-prompt"),
        pytest.param({"hangup_after": 0}, False, id="before-first-command"),
    ],
)
async def test_hangup_at_each_step(server, pool, caller, stored) -> None:  # type: ignore[no-untyped-def]
    rec = await call(server.port, **caller)
    assert rec.hung_up
    if stored:
        # hung up while hearing "recorded": the decision was already durable and stands
        [event] = await events(pool)
        assert event["decision"] == "opt_in"
        assert rec.variables["CONSENT_RESULT"] == "opted_in"
    else:
        assert await events(pool) == []
        assert rec.variables["CONSENT_RESULT"] == "error"
        [attempt] = await attempts(pool)
        assert attempt["outcome"] == "hangup"


async def test_withheld_caller_id_keys_in_number(server, pool) -> None:  # type: ignore[no-untyped-def]
    rec = await call(
        server.port, callerid="anonymous", presses=["07400123456#", "1", *OPT_IN]
    )
    assert rec.variables["CONSENT_RESULT"] == "opted_in", rec.dialogue()
    [event] = await events(pool)
    assert event["number_e164"] == CALLER and event["evidence_strength"] == "keyed_in"
    assert event["callerid_num"] == "anonymous"
    assert any(c.startswith("SAY DIGITS") for c in rec.commands)
    assert ("enter_number", "07400123456") in [(d["step"], d["digit"]) for d in event["digits"]]


async def test_restricted_presentation_is_treated_as_withheld(server, pool) -> None:  # type: ignore[no-untyped-def]
    fake = FakeAsterisk("127.0.0.1", server.port, callerid=CALLER,
                        presses=["07400123456#", "1", "2"])
    fake.env["callingpres"] = "32"  # presentation restricted
    rec = await fake.run()
    assert rec.variables["CONSENT_RESULT"] == "opted_out"
    [event] = await events(pool)
    assert event["evidence_strength"] == "keyed_in"


async def test_keyed_in_number_reentered_after_no(server, pool) -> None:  # type: ignore[no-untyped-def]
    rec = await call(server.port, callerid="", presses=[
        "123#", "07400123450#", "2", "07400123456#", "1", "2"])
    assert rec.variables["CONSENT_RESULT"] == "opted_out", rec.dialogue()
    [event] = await events(pool)
    assert event["number_e164"] == CALLER


async def test_keyed_in_number_never_confirmed(server, pool) -> None:  # type: ignore[no-untyped-def]
    rec = await call(server.port, callerid="anonymous", presses=[SILENCE, "99#", SILENCE])
    assert rec.variables["CONSENT_RESULT"] == "no_decision"
    assert await events(pool) == []
    assert (await attempts(pool))[0]["reason"] == "number_not_confirmed"


async def test_missing_prompt_records_nothing(server, pool) -> None:  # type: ignore[no-untyped-def]
    rec = await call(server.port, presses=OPT_IN, missing_sounds=[Q])
    assert rec.variables["CONSENT_RESULT"] == "error"
    assert rec.agistatus == "FAILURE"
    assert await events(pool) == []
    [attempt] = await attempts(pool)
    assert attempt["reason"] == "prompt_failed"


async def test_duplicate_delivery_of_the_same_decision(server, pool) -> None:  # type: ignore[no-untyped-def]
    first = await call(server.port, presses=OPT_IN, uniqueid="1796000000.7")
    second = await call(server.port, presses=OPT_IN, uniqueid="1796000000.7")
    assert first.variables["CONSENT_EVENT_ID"] == second.variables["CONSENT_EVENT_ID"] != ""
    assert len(await events(pool)) == 1


async def test_welsh_channel_hears_welsh_prompts(server, pool) -> None:  # type: ignore[no-untyped-def]
    rec = await call(server.port, language="cy", presses=["2"])
    assert rec.variables["CONSENT_RESULT"] == "opted_out"
    assert {p.lang for p in rec.prompts} == {"cy"}
    [event] = await events(pool)
    assert {p["lang"] for p in event["prompts"]} == {"cy"}


async def test_unknown_language_falls_back_to_english(server, pool) -> None:  # type: ignore[no-untyped-def]
    rec = await call(server.port, language="fr", presses=["2"])
    assert {p.lang for p in rec.prompts} == {"en"}
    [event] = await events(pool)
    assert {p["lang"] for p in event["prompts"]} == {"en"}


async def test_unknown_purpose_asks_nothing(server, pool) -> None:  # type: ignore[no-untyped-def]
    rec = await call(server.port, network_script="consent?purpose=holidays", presses=OPT_IN)
    assert rec.variables["CONSENT_RESULT"] == "error"
    assert rec.prompt_names() == []
    assert await events(pool) == []
    assert (await attempts(pool))[0]["reason"] == "unknown_purpose"


async def test_unknown_route_sets_error(server, pool) -> None:  # type: ignore[no-untyped-def]
    rec = await call(server.port, network_script="nosuchroute", presses=["1"])
    assert rec.variables["CONSENT_RESULT"] == "error"
    assert rec.prompt_names() == []
    assert await events(pool) == []


async def test_agent_transfer_method_is_recorded(server, pool) -> None:  # type: ignore[no-untyped-def]
    rec = await call(
        server.port,
        network_script="consent?purpose=marketing-calls&method=agent_transfer",
        answered=True,
        presses=OPT_IN,
    )
    assert rec.variables["CONSENT_RESULT"] == "opted_in"
    assert rec.prompt_names()[0] == "consent-ivr/transfer-intro"
    assert rec.prompt_names()[-1] == "consent-ivr/transfer-return"
    [event] = await events(pool)
    assert event["method"] == "ivr_agent_transfer"


async def test_storage_down_without_journal_fails_closed(settings: Settings, pool) -> None:  # type: ignore[no-untyped-def]
    flow, real_store, _ = consent_stack(settings, pool, journal=False)

    class Down:
        async def commit_decision(self, d: ConsentDecision) -> CommitResult:
            raise StorageUnavailable("database and journal both down")

        async def record_attempt(self, a: AttemptRecord) -> None:
            await real_store.record_attempt(a)

    flow.store = Down()
    async with running_server(settings, {"consent": flow}) as srv:
        rec = await call(srv.port, presses=OPT_IN)
    assert rec.variables["CONSENT_RESULT"] == "error"
    assert "consent-ivr/opted-in" not in rec.prompt_names()
    assert rec.prompt_names()[-1] == "consent-ivr/error"
    assert await events(pool) == []


async def test_custom_keys(make_settings, pool) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(key_opt_in="5", key_opt_out="6", key_confirm="5")
    flow, _, _ = consent_stack(settings, pool)
    async with running_server(settings, {"consent": flow}) as srv:
        rec = await call(srv.port, presses=["1", "5", SILENCE, "5"])
    assert rec.variables["CONSENT_RESULT"] == "opted_in"
    assert "consent-ivr/invalid-key" in rec.prompt_names()


async def test_hangup_notice_before_reply_is_handled(server, pool) -> None:  # type: ignore[no-untyped-def]
    # transcript 30: HANGUP arrives between the next command and its reply
    rec = await call(server.port, presses=[HANGUP], hangup_notice="on_next_command")
    assert rec.hung_up
    assert await events(pool) == []
    [attempt] = await attempts(pool)
    assert attempt["outcome"] == "hangup"


async def test_settings_override_is_isolated(settings: Settings) -> None:
    assert replace(settings, key_opt_in="9").key_opt_in == "9"


# ------------------------------------------------- the statement is heard whole (issue 14)

def _length_s(prompt_id: str, lang: str = "en") -> float:
    manifest = json.loads((resources.sounds_dir() / "manifest.json").read_text())
    [samples] = [p["samples"] for p in manifest["prompts"]
                 if p["id"] == prompt_id and p["lang"] == lang]
    return float(samples) / 8000


async def test_fast_double_press_cannot_opt_in(server, pool) -> None:  # type: ignore[no-untyped-def]
    # 1 barges into the question, the second 1 follows 0.3 s later: it lands in the
    # statement, counts for nothing, and the caller never confirms
    t = _length_s("identify") + 1.0
    rec = await call(server.port, timeline=[(t, "1"), (t + 0.3, "1")])
    assert rec.variables["CONSENT_RESULT"] == "no_decision", rec.dialogue()
    assert await events(pool) == []
    [attempt] = await attempts(pool)
    assert attempt["reason"] == "not_confirmed"
    digits = json.loads(attempt["digits"])
    assert [(d["step"], d["digit"], d["ignored"]) for d in digits] == [
        ("question", "1", False), ("statement", "1", True)]
    [statement] = [p for p in json.loads(attempt["prompts"])
                   if p["id"] == "statement-marketing-calls"]
    assert statement["interrupted"] is False
    assert statement["heard_ms"] == statement["length_ms"] == int(
        _length_s("statement-marketing-calls") * 1000)


async def test_press_script_double_one_cannot_opt_in(server, pool) -> None:  # type: ignore[no-untyped-def]
    rec = await call(server.port, presses=["1", "1"])
    assert rec.variables["CONSENT_RESULT"] == "no_decision"
    assert await events(pool) == []


async def test_keys_during_the_statement_are_recorded_and_it_resumes(server, pool) -> None:  # type: ignore[no-untyped-def]
    q = _length_s("identify") + 1.0
    st = _length_s("statement-marketing-calls")
    confirm_at = q + st + 2.0  # into the confirmation prompt
    rec = await call(server.port, timeline=[
        (q, "1"), (q + 2.0, "5"), (q + 6.0, "#"), (q + 9.0, "1"), (confirm_at, "1")])
    assert rec.variables["CONSENT_RESULT"] == "opted_in", rec.dialogue()
    [event] = await events(pool)
    assert [(d["step"], d["digit"], d["ignored"]) for d in event["digits"]] == [
        ("question", "1", False), ("statement", "5", True), ("statement", "#", True),
        ("statement", "1", True), ("confirm", "1", False)]
    offsets = [d["offset_ms"] for d in event["digits"]]
    assert offsets == sorted(offsets)
    # what crossed the wire: the statement resumed each time from where it stopped
    plays = [c for c in rec.commands if "statement-marketing-calls" in c]
    assert len(plays) == 4
    assert plays[0].endswith('"0123456789*#"')
    resumed = [int(c.rsplit(" ", 1)[1]) for c in plays[1:]]
    assert resumed == sorted(resumed) and resumed[0] > 0
    [statement] = [p for p in event["prompts"] if p["id"] == "statement-marketing-calls"]
    assert statement["heard_ms"] == statement["length_ms"] and not statement["interrupted"]


async def test_a_stuck_key_cannot_keep_the_statement_from_ending(server, pool) -> None:  # type: ignore[no-untyped-def]
    q = _length_s("identify") + 1.0
    confirm_at = q + _length_s("statement-marketing-calls") + 2.0
    mashed = [(q + 0.5 + 0.1 * i, "5") for i in range(MAX_IGNORED_KEYS + 8)]
    rec = await call(server.port, timeline=[(q, "1"), *mashed, (confirm_at, "1")])
    assert rec.variables["CONSENT_RESULT"] == "opted_in", rec.dialogue()
    [event] = await events(pool)
    ignored = [d for d in event["digits"] if d["ignored"]]
    assert len(ignored) == MAX_IGNORED_KEYS
    plays = [c for c in rec.commands if "statement-marketing-calls" in c]
    # the 32nd key's stop resumes deaf to keys: the rest plays, the 8 more are Asterisk's to drop
    assert len(plays) == MAX_IGNORED_KEYS + 1 and '""' in plays[-1]
    assert rec.dropped_digits == ["5"] * 8


async def test_a_purpose_without_a_statement_asks_nothing(settings: Settings, pool) -> None:  # type: ignore[no-untyped-def]
    prompts = PromptCatalogue.load(settings.sounds_dir)
    # the question for "marketing-calls" exists, its statement is withheld from the catalogue
    trimmed = PromptCatalogue({(p.id, p.lang): p for p in prompts
                               if p.id != "statement-marketing-calls"})
    with pytest.raises(PromptError, match="statement-marketing-calls"):
        ConsentFlow(settings, consent_stack(settings, pool)[1], trimmed)


async def test_status_and_evidence_say_the_statement_was_heard_in_full(server, pool) -> None:  # type: ignore[no-untyped-def]
    from agi.ledger.evidence import build_evidence, render_text
    from agi.ledger.ledger import Ledger

    await call(server.port, presses=OPT_IN)
    status = await Ledger(pool).consent_at(CALLER, "marketing-calls", with_history=True)
    assert status.to_json()["latest"]["statement_heard_in_full"] == "yes"
    async with pool.acquire() as conn:
        text = render_text(await build_evidence(conn, CALLER))
    assert "statement heard in full: yes" in text
    assert "heard statement-marketing-calls [en]" in text


async def test_the_kit_s_linkedid_in_the_url_saves_a_round_trip(server, pool) -> None:  # type: ignore[no-untyped-def]
    rec = await call(server.port, presses=["2"],
                     network_script="consent?purpose=marketing-calls&linkedid=1796006581.7")
    assert rec.variables["CONSENT_RESULT"] == "opted_out"
    assert not any("CHANNEL(linkedid)" in c for c in rec.commands)
    [event] = await events(pool)
    assert event["linkedid"] == "1796006581.7"


async def test_the_kit_s_answered_in_the_url_saves_the_answer(server, pool) -> None:  # type: ignore[no-untyped-def]
    # the kit Answer()s before AGI() and says so: no ANSWER crosses the wire
    rec = await call(server.port, presses=["2"], answered=True,
                     network_script="consent?purpose=marketing-calls&answered=1")
    assert rec.variables["CONSENT_RESULT"] == "opted_out", rec.dialogue()
    assert "ANSWER" not in rec.commands
    # the fail-closed presets stay, first
    assert rec.variables_set[:2] == [("CONSENT_RESULT", "error"), ("CONSENT_EVENT_ID", "")]
    [event] = await events(pool)
    assert event["decision"] == "opt_out"


@pytest.mark.parametrize("script", ["consent?purpose=marketing-calls",
                                    "consent?purpose=marketing-calls&answered=yes"])
async def test_without_the_kit_s_answered_the_flow_answers(server, pool, script) -> None:  # type: ignore[no-untyped-def]
    rec = await call(server.port, presses=["2"], network_script=script)
    assert rec.variables["CONSENT_RESULT"] == "opted_out", rec.dialogue()
    assert rec.answered and rec.commands.count("ANSWER") == 1
    assert rec.commands.index("ANSWER") < next(
        i for i, c in enumerate(rec.commands) if c.startswith("STREAM FILE"))


async def test_a_malformed_linkedid_is_asked_of_asterisk_instead(server, pool) -> None:  # type: ignore[no-untyped-def]
    rec = await call(server.port, presses=["2"],
                     network_script="consent?purpose=marketing-calls&linkedid=x%20y")
    assert any("CHANNEL(linkedid)" in c for c in rec.commands)
