"""Inbound calls through the kit (``consent-inbound``) on a real Asterisk 22.

Every call is a Local channel: the line's half runs ``test-line`` (caller ID as the network
delivers it) and then the kit exactly as an admin includes it; the caller's half presses
keys with ``SendDTMF`` on a schedule computed from the prompt manifest. Each test checks
``CONSENT_RESULT`` and ``AGISTATUS`` as Asterisk set them, which contexts the call went
through, and what the ledger holds for that caller.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.asterisk.conftest import outcome, run_batch, start_serve
from tests.asterisk.pbx import Asterisk, CallRecord, Timeline, core_sounds
from tests.harness import Serve

EN, CY = Timeline("en"), Timeline("cy")
#: From the caller's answer to the first prompt: Answer()'s own half second on a Local
#: channel, then the FastAGI connection (measured: 0.5 s and a few ms).
START = 0.6
#: How far into a prompt the caller presses: long enough that the prompt has begun
#: whatever the jitter of the Local channel and the AGI round trips.
INTO = 2.0

KIT = ["test-line", "consent-inbound"]
FALLBACK = [*KIT, "consent-fallback"]


def digit_seconds(digits: str) -> float:
    """How long ``SAY DIGITS`` speaks, from the core sound files' own lengths (GSM: 33
    bytes a 20 ms frame)."""
    core = core_sounds()
    assert core is not None, "core sounds (asterisk-core-sounds-en-gsm) are missing"
    return sum((core / "digits" / f"{d}.gsm").stat().st_size / 33 * 0.02 for d in digits)


def question(tl: Timeline) -> float:
    """From the answer to INTO seconds into the question."""
    return START + tl.length("identify") + INTO


def confirmation(tl: Timeline) -> float:
    """From the opt-in key to INTO seconds into the confirmation (the statement plays whole)."""
    return tl.length("statement-marketing-calls") + INTO


SCENARIOS: dict[str, dict[str, Any]] = {
    "opt_in_confirmed": dict(cid="+447400100001",
                             script=[(question(EN), "1"), (confirmation(EN), "1")]),
    "opt_out": dict(cid="+447400100002", script=[(question(EN), "2")]),
    "silence": dict(cid="+447400100003", script=[]),
    "invalid_then_valid": dict(cid="+447400100004", script=[
        (question(EN), "7"), (EN.length("invalid-key") + INTO, "2")]),
    "cancel_at_confirm": dict(cid="+447400100005",
                              script=[(question(EN), "1"), (confirmation(EN), "5")]),
    # issue 14: the second 1 lands in the statement, which plays on; nothing confirms it
    "fast_double_press": dict(cid="+447400100011", script=[(question(EN), "1"), (0.3, "1")]),
    # keys during the statement are recorded as ignored; it resumes from where it stopped
    "keys_during_statement": dict(cid="+447400100012", script=[
        (question(EN), "1"), (3.0, "5"), (3.0, "#"),
        (EN.length("statement-marketing-calls") - 6.0 + INTO, "1")]),
    "hangup_mid_question": dict(cid="+447400100006", script=[(question(EN) + 1, "H")]),
    "national_caller_id": dict(cid="07400100007", script=[(question(EN), "2")]),
    "withheld_keyed_in": dict(cid="anonymous", pres="prohib", script=[
        (START + EN.length("identify") + INTO, "07400100008#"),
        (EN.length("number-readback") + digit_seconds("07400100008") + INTO, "1"),
        (INTO, "2")]),
    "welsh_line": dict(cid="+447400100009", context="consent-phones", exten="7001",
                       script=[(question(CY), "2")]),
    # without the kit: no Answer() before AGI(), no parameters but the purpose
    "admin_one_line": dict(cid="+447400100013", context="test-admin-line",
                           script=[(question(EN), "2")]),
    "keys_during_identification": dict(cid="+447400100010", script=[
        (START + INTO, "1"), (EN.length("identify") - INTO + INTO, "2")]),
}


async def _ledger(db_url: str) -> dict[str, list[dict[str, Any]]]:
    conn = await asyncpg.connect(db_url)
    try:
        events = await conn.fetch("SELECT * FROM consent_event ORDER BY id")
        attempts = await conn.fetch("SELECT * FROM consent_attempt ORDER BY id")
    finally:
        await conn.close()
    return {"events": [_row(r) for r in events], "attempts": [_row(r) for r in attempts]}


def _row(record: asyncpg.Record) -> dict[str, Any]:
    row = dict(record)
    for key in ("digits", "prompts"):
        row[key] = json.loads(row[key])
    return row


@pytest.fixture(scope="module")
def inbound(pbx: Asterisk, tier_db: str, tier_dir: Path) -> Iterator[dict[str, Any]]:
    # Two tries instead of three keep the silent call near 80 s instead of 110 s.
    serve: Serve = start_serve(tier_db, tier_dir / "inbound", pbx.agi_port,
                               CONSENT_IVR_MAX_TRIES="2")
    try:
        def scenario(spec: dict[str, Any]) -> Any:
            return lambda: pbx.call(spec["cid"], spec["script"], pres=spec.get("pres", ""),
                                    context=spec.get("context", "consent-inbound"),
                                    exten=spec.get("exten", "s"), timeout=200)

        results = run_batch(pbx, {name: scenario(spec) for name, spec in SCENARIOS.items()})
        results["ledger"] = asyncio.run(_ledger(tier_db))
        results["log"] = pbx.log_text()
        yield results
    finally:
        serve.kill()


def _events(results: dict[str, Any], number: str) -> list[dict[str, Any]]:
    return [e for e in results["ledger"]["events"] if e["number_e164"] == number]


def _attempts(results: dict[str, Any], number: str) -> list[dict[str, Any]]:
    return [a for a in results["ledger"]["attempts"] if a["number_e164"] == number]


def _decided(results: dict[str, Any], name: str, number: str, decision: str) -> dict[str, Any]:
    """The call recorded exactly one ``decision`` for ``number``, tied to its channel."""
    rec: CallRecord = outcome(results, name)
    result = "opted_in" if decision == "opt_in" else "opted_out"
    assert rec.last("CONSENT_RESULT") == result, rec.summary()
    assert rec.last("AGISTATUS") == "SUCCESS", rec.summary()
    assert rec.contexts() == KIT, rec.summary()
    events = _events(results, number)
    assert [e["decision"] for e in events] == [decision]
    event = events[0]
    assert rec.last("CONSENT_EVENT_ID") == str(event["id"])
    assert event["uniqueid"] == rec.uniqueids[rec.line_channel]
    assert event["linkedid"] == rec.linkedid
    # the kit passed both in the AGI URL: the flow did not have to ask for the linkedid,
    # nor answer a channel the kit had answered
    assert ["GET", "VARIABLE", "CHANNEL(linkedid)"] not in rec.agi_commands()
    assert ["ANSWER"] not in rec.agi_commands(), rec.agi
    assert event["channel_name"] == rec.line_channel
    assert event["source"] == "live"
    assert not _attempts(results, number)
    # the dialplan itself played nothing: the flow said what was recorded
    assert rec.playbacks() == []
    return event


def _counted_keys(event: dict[str, Any]) -> list[tuple[str, str]]:
    return [(d["step"], d["digit"]) for d in event["digits"]
            if d["step"] in {"question", "confirm", "confirm_number", "enter_number"}]


def test_opt_in_with_confirmation(inbound: dict[str, Any]) -> None:
    event = _decided(inbound, "opt_in_confirmed", "+447400100001", "opt_in")
    assert event["method"] == "ivr_inbound"
    assert event["evidence_strength"] == "caller_id"
    assert _counted_keys(event) == [("question", "1"), ("confirm", "1")]
    heard = [p["id"] for p in event["prompts"]]
    assert heard[:4] == ["identify", "question-marketing-calls", "statement-marketing-calls",
                         "confirm-opt-in"]
    statement = event["prompts"][2]
    assert statement["heard_ms"] == statement["length_ms"] and not statement["interrupted"]
    rec = outcome(inbound, "opt_in_confirmed")
    assert "consent-ivr/opted-in" in rec.prompts_streamed()


def test_fast_double_press_cannot_opt_in(inbound: dict[str, Any]) -> None:
    rec = outcome(inbound, "fast_double_press")
    assert rec.last("CONSENT_RESULT") == "no_decision", rec.summary()
    assert rec.last("AGISTATUS") == "SUCCESS"
    assert not _events(inbound, "+447400100011")
    [attempt] = _attempts(inbound, "+447400100011")
    assert (attempt["outcome"], attempt["reason"]) == ("no_decision", "not_confirmed")
    # Asterisk stopped the statement at the second 1 (STREAM FILE's escape digit): recorded
    # as ignored, and the statement played on to its end
    assert [(d["step"], d["digit"], d["ignored"]) for d in attempt["digits"]] == [
        ("question", "1", False), ("statement", "1", True)]
    [statement] = [p for p in attempt["prompts"] if p["id"] == "statement-marketing-calls"]
    assert statement["heard_ms"] == statement["length_ms"]
    streams = [c for c in rec.agi_commands()
               if c[:2] == ["STREAM", "FILE"] and c[2].endswith("statement-marketing-calls")]
    assert len(streams) == 2 and int(streams[1][4]) > 0, streams  # resumed at endpos


def test_keys_during_statement_are_recorded_and_it_resumes(inbound: dict[str, Any]) -> None:
    event = _decided(inbound, "keys_during_statement", "+447400100012", "opt_in")
    assert [(d["step"], d["digit"], d["ignored"]) for d in event["digits"]] == [
        ("question", "1", False), ("statement", "5", True), ("statement", "#", True),
        ("confirm", "1", False)]
    rec = outcome(inbound, "keys_during_statement")
    offsets = [int(c[4]) for c in rec.agi_commands()
               if c[:2] == ["STREAM", "FILE"] and c[2].endswith("statement-marketing-calls")
               and len(c) > 4]
    # each resume starts where Asterisk said the last one stopped, about 3 s further on
    assert len(offsets) == 2 and 20_000 < offsets[0] < offsets[1], offsets


def test_opt_out(inbound: dict[str, Any]) -> None:
    event = _decided(inbound, "opt_out", "+447400100002", "opt_out")
    assert _counted_keys(event) == [("question", "2")]
    assert "consent-ivr/opted-out" in outcome(inbound, "opt_out").prompts_streamed()


def test_silence_records_no_decision(inbound: dict[str, Any]) -> None:
    rec = outcome(inbound, "silence")
    assert rec.last("CONSENT_RESULT") == "no_decision", rec.summary()
    assert rec.last("AGISTATUS") == "SUCCESS"
    assert rec.contexts() == KIT
    assert rec.prompts_streamed().count("consent-ivr/question-marketing-calls") == 2
    assert not _events(inbound, "+447400100003")
    [attempt] = _attempts(inbound, "+447400100003")
    assert (attempt["outcome"], attempt["reason"]) == ("no_decision", "timeout")


def test_invalid_key_then_valid(inbound: dict[str, Any]) -> None:
    event = _decided(inbound, "invalid_then_valid", "+447400100004", "opt_out")
    assert _counted_keys(event) == [("question", "7"), ("question", "2")]
    assert "consent-ivr/invalid-key" in outcome(inbound, "invalid_then_valid").prompts_streamed()


def test_cancel_at_confirmation_stores_no_consent(inbound: dict[str, Any]) -> None:
    rec = outcome(inbound, "cancel_at_confirm")
    assert rec.last("CONSENT_RESULT") == "no_decision", rec.summary()
    assert rec.contexts() == KIT
    assert "consent-ivr/cancelled" in rec.prompts_streamed()
    assert not _events(inbound, "+447400100005")
    [attempt] = _attempts(inbound, "+447400100005")
    assert (attempt["outcome"], attempt["reason"]) == ("no_decision", "cancelled")


def test_hangup_mid_question(inbound: dict[str, Any]) -> None:
    rec = outcome(inbound, "hangup_mid_question")
    assert rec.last("CONSENT_RESULT") == "error", rec.summary()  # the safe value stands
    assert rec.last("AGISTATUS") == "HANGUP"
    # after a hangup only the h extension runs: never the fallback's prompts
    assert "consent-fallback" not in rec.contexts()
    assert not _events(inbound, "+447400100006")
    [attempt] = _attempts(inbound, "+447400100006")
    assert (attempt["outcome"], attempt["reason"]) == ("hangup", "caller_hung_up")


def test_national_format_caller_id_is_normalised(inbound: dict[str, Any]) -> None:
    event = _decided(inbound, "national_caller_id", "+447400100007", "opt_out")
    assert event["callerid_num"] == "07400100007"  # exactly as Asterisk delivered it
    assert event["evidence_strength"] == "caller_id"


def test_withheld_caller_id_is_keyed_in(inbound: dict[str, Any]) -> None:
    event = _decided(inbound, "withheld_keyed_in", "+447400100008", "opt_out")
    assert event["evidence_strength"] == "keyed_in"
    # Asterisk sends the word "unknown" for an absent number; stored as received
    assert event["callerid_num"] == "unknown"
    assert _counted_keys(event) == [("enter_number", "07400100008"), ("confirm_number", "1"),
                                    ("question", "2")]
    rec = outcome(inbound, "withheld_keyed_in")
    assert ["SAY", "DIGITS", "07400100008", ""] in rec.agi_commands(), rec.agi


def test_welsh_line_plays_welsh_prompts(inbound: dict[str, Any]) -> None:
    rec: CallRecord = outcome(inbound, "welsh_line")
    assert rec.last("CONSENT_RESULT") == "opted_out", rec.summary()
    assert rec.contexts() == ["test-line", "consent-phones", "consent-inbound"]
    [event] = _events(inbound, "+447400100009")
    assert {p["lang"] for p in event["prompts"]} == {"cy"}
    # Asterisk itself chose the Welsh files for the channel's language
    line = rec.line_channel
    played = [ln for ln in inbound["log"].splitlines() if line in ln and "Playing '" in ln]
    assert played, "no playback logged"
    assert all("(language 'cy')" in ln for ln in played), played


def test_a_call_without_the_kit_is_answered_by_the_flow(inbound: dict[str, Any]) -> None:
    rec: CallRecord = outcome(inbound, "admin_one_line")
    assert rec.last("CONSENT_RESULT") == "opted_out", rec.summary()
    assert rec.last("AGISTATUS") == "SUCCESS"
    assert rec.contexts() == ["test-line", "test-admin-line"]
    commands = rec.agi_commands()
    # the dialplan answered nothing: the flow's ANSWER did, before the first prompt
    assert not [s for s in rec.steps if s[0] == rec.line_channel and s[3] == "Answer"]
    assert commands.count(["ANSWER"]) == 1, rec.agi
    assert commands.index(["ANSWER"]) < next(
        i for i, c in enumerate(commands) if c[:2] == ["STREAM", "FILE"])
    assert ["GET", "VARIABLE", "CHANNEL(linkedid)"] in commands  # not in the URL: asked
    [event] = _events(inbound, "+447400100013")
    assert event["decision"] == "opt_out" and event["linkedid"] == rec.linkedid
    assert rec.last("CONSENT_EVENT_ID") == str(event["id"])


def test_keys_during_identification_do_not_count(inbound: dict[str, Any]) -> None:
    event = _decided(inbound, "keys_during_identification", "+447400100010", "opt_out")
    # the 1 pressed while the identification played was no answer to any question
    assert _counted_keys(event) == [("question", "2")]
