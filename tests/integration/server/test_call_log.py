"""One canonical ``call_finished`` line per call, at info level, through the production
log pipeline (JSON, masking): what happened, what was decided and where it is stored."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from typing import Any

import asyncpg

from agi.ops.config import Settings
from tests.fakes import OPT_IN, SILENCE, FakeAsterisk
from tests.harness import consent_stack, running_server

CALLER = "+447400123456"


def _lines(buf: io.StringIO) -> list[dict[str, Any]]:
    """The lines of the call (the server's start and stop lines carry no call_id)."""
    return [e for e in map(json.loads, buf.getvalue().splitlines()) if "call_id" in e]


async def _call(settings: Settings, pool: asyncpg.Pool, presses: list[Any]) -> None:
    flow, _, _ = consent_stack(settings, pool)
    async with running_server(settings, {"consent": flow}) as srv:
        await FakeAsterisk("127.0.0.1", srv.port, network_script="consent?purpose=marketing-calls",
                           presses=presses, callerid=CALLER).run()


async def test_an_opt_in_is_one_info_line_with_the_decision_and_its_event(
    make_settings: Callable[..., Settings], pool: asyncpg.Pool, json_log: io.StringIO
) -> None:
    await _call(make_settings(), pool, [*OPT_IN])
    lines = _lines(json_log)
    assert [e["event"] for e in lines] == ["call_finished"]  # consent_recorded is debug
    [line] = lines
    event_id = await pool.fetchval("SELECT max(id) FROM consent_event")
    assert line["level"] == "info"
    assert line["outcome"] == "opted_in" and line["decision"] == "opt_in"
    assert line["event_id"] == event_id and line["journaled"] is False
    assert line["purpose"] == "marketing-calls"
    assert line["number"] == "+4474001****56"
    assert CALLER not in json_log.getvalue()
    assert line["prompts"] == ["identify", "question-marketing-calls",
                               "statement-marketing-calls", "confirm-opt-in", "opted-in"]
    assert line["keys"] == "11"
    assert line["commands"] >= 8 and line["hung_up"] is False
    assert line["duration_ms"] >= line["commit_ms"] >= 0
    assert line["call_id"] and line["route"] == "consent"


async def test_a_call_without_a_decision_says_so_in_the_same_line(
    make_settings: Callable[..., Settings], pool: asyncpg.Pool, json_log: io.StringIO
) -> None:
    await _call(make_settings(), pool, ["1", "5", SILENCE, "3"])  # opt in, a key ignored, cancel
    [line] = _lines(json_log)
    assert line["event"] == "call_finished" and line["outcome"] == "no_decision"
    assert line["decision"] is None and line["event_id"] is None and line["commit_ms"] is None
    assert line["keys"] == "1(5)3" and "cancelled" in line["prompts"]
    assert line["number"] == "+4474001****56"


async def test_consent_recorded_is_still_there_at_debug(
    make_settings: Callable[..., Settings], pool: asyncpg.Pool, json_log: io.StringIO
) -> None:
    from agi.ops.logs import configure_logging

    configure_logging("json", "debug", stream=json_log)
    await _call(make_settings(), pool, ["2"])
    by_event = {e["event"]: e for e in _lines(json_log)}
    recorded = by_event["consent_recorded"]
    assert recorded["level"] == "debug" and recorded["decision"] == "opt_out"
    assert by_event["call_finished"]["event_id"] == recorded["event_id"]
