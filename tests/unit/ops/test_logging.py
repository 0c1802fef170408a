"""Logs: one line per event whatever a caller sends, and no phone number in clear.

The masking processor is fuzzed (hypothesis): for any text a caller controls, the
value carries no raw control character, and a phone number anywhere in it is masked.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re

import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st

from agi.ops.logs import configure_logging, mask_number, mask_numbers


@pytest.mark.parametrize(("raw", "masked"), [
    ("+447700900123", "+4477009****23"),
    ("07700900123", "077009****23"),
    ("5551234", "55****34"),
    ("123456", "******"),
])
def test_mask_number(raw: str, masked: str) -> None:
    assert mask_number(raw) == masked


@settings(max_examples=300, deadline=None)
@given(st.text(), st.lists(st.text(), max_size=3))
def test_any_caller_text_is_one_clean_line(name: str, extra: list[str]) -> None:
    out = mask_numbers(None, "info", {"callerid_name": name, "digits": extra,
                                      "uniqueid": "1700000000.12345"})
    for value in [out["callerid_name"], *out["digits"]]:
        assert not re.search(r"[\x00-\x1f\x7f]", value)
    assert out["uniqueid"] == "1700000000.12345"  # identifiers are not phone numbers


@settings(max_examples=300, deadline=None)
@given(st.text(), st.from_regex(r"\A\+?[1-9][0-9]{8,14}\Z"), st.text())
def test_a_phone_number_anywhere_in_caller_text_is_masked(
    before: str, number: str, after: str
) -> None:
    out = mask_numbers(None, "info", {"callerid_name": f"{before} {number} {after}"})
    assert number not in out["callerid_name"].split(" ")


def test_forged_line_break_and_number_in_a_real_log_line(json_log: io.StringIO) -> None:
    log = structlog.get_logger("agi.test")
    log.warning("agi_connection_refused", peer="10.0.0.1:5060",
                calleridname='x"\n{"event": "consent_recorded", "number": "+447700900123"}\r')
    lines = json_log.getvalue().splitlines()
    assert len(lines) == 1
    event = json.loads(lines[0])
    assert event["event"] == "agi_connection_refused"
    assert "\n" not in event["calleridname"] and "+447700900123" not in lines[0]


def test_numbers_in_nested_values_and_tracebacks_are_masked(json_log: io.StringIO) -> None:
    """asyncpg puts the failing row, phone number included, in its error DETAIL."""
    log = structlog.get_logger("agi.test")
    try:
        raise ValueError("Failing row contains (3, +447400200250, Example)")
    except ValueError:
        log.exception("agi_call_failed", context={"number": "+447400200251"})
    text = json_log.getvalue()
    assert len(text.splitlines()) == 1
    assert "+447400200250" not in text and "+447400200251" not in text
    assert "agi_call_failed" in text and "ValueError" in text


def test_stdlib_loggers_render_the_same_way(json_log: io.StringIO) -> None:
    logging.getLogger("asyncpg.pool").warning("lost connection to +447700900123\nretrying")
    [line] = json_log.getvalue().splitlines()
    assert "+447700900123" not in line and json.loads(line)["logger"] == "asyncpg.pool"


class _CountingStream(io.StringIO):
    """Counts write() calls: one per system call on a real stream."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, s: str) -> int:
        self.writes += 1
        return super().write(s)


def test_lines_of_one_loop_turn_go_out_in_one_write() -> None:
    stream = _CountingStream()
    configure_logging("json", "info", stream=stream)
    log = structlog.get_logger("agi.test")

    async def burst() -> int:
        for i in range(5):
            log.info("line", n=i)
        written_during_the_turn = stream.writes
        await asyncio.sleep(0)  # the turn ends: the queued lines are written
        await asyncio.sleep(0)
        return written_during_the_turn

    assert asyncio.run(burst()) == 0
    assert stream.writes == 1
    assert [json.loads(x)["n"] for x in stream.getvalue().splitlines()] == [0, 1, 2, 3, 4]


def test_stdlib_record_keeps_its_place_after_queued_lines() -> None:
    stream = _CountingStream()
    configure_logging("json", "info", stream=stream)

    async def mixed() -> None:
        structlog.get_logger("agi.test").info("first")
        logging.getLogger("asyncpg").warning("second")  # written at once, after "first"
        structlog.get_logger("agi.test").info("third")
        await asyncio.sleep(0)

    asyncio.run(mixed())
    assert [json.loads(x)["event"] for x in stream.getvalue().splitlines()] == [
        "first", "second", "third"]


def test_a_loop_that_ends_before_its_flush_holds_nothing_back() -> None:
    stream = _CountingStream()
    configure_logging("json", "info", stream=stream)
    log = structlog.get_logger("agi.test")
    loop = asyncio.new_event_loop()

    def emit_and_stop() -> None:
        log.info("stranded")  # its flush is scheduled for the next turn...
        loop.stop()  # ...which never comes

    loop.call_soon(emit_and_stop)
    loop.run_forever()
    loop.close()
    assert "stranded" not in stream.getvalue()

    async def next_loop() -> None:
        log.info("later")  # a line on another loop schedules a flush there
        await asyncio.sleep(0)

    asyncio.run(next_loop())
    events = [json.loads(x)["event"] for x in stream.getvalue().splitlines()]
    assert events == ["stranded", "later"]
    log.info("outside any loop")  # and outside a loop a line is written at once
    assert "outside any loop" in stream.getvalue()


def test_json_lines_are_what_structlogs_renderer_writes() -> None:
    """The renderer's serializer builds its encoder once; the text must not change."""
    import datetime as dt

    from agi.ops.logs import _json_dumps

    class Odd:
        def __repr__(self) -> str:
            return "<odd é>"

    stock = structlog.processors.JSONRenderer()
    ours = structlog.processors.JSONRenderer(serializer=_json_dumps)
    for event in ({"event": "x", "n": 1, "f": 0.5, "b": True, "none": None},
                  {"event": "ünï \"q\" \\", "when": dt.datetime(2026, 11, 30, tzinfo=dt.UTC),
                   "odd": Odd(), "nested": {"a": [1, "two", {"three": Odd()}]}},
                  {"event": "sorted?", "z": 1, "a": 2}):
        assert ours(None, "info", dict(event)) == stock(None, "info", dict(event))


@given(st.dictionaries(st.sampled_from(["event", "channel", "level", "logger", "number",
                                        "uniqueid", "digits", "n"]),
                       st.one_of(st.text(), st.integers(), st.none(),
                                 st.lists(st.text(), max_size=2)), max_size=6))
def test_only_dirty_values_change(event: dict[str, object]) -> None:
    """Masking leaves clean values as the very same objects and keeps every key."""
    out = mask_numbers(None, "info", dict(event))
    assert list(out) == list(event)
    for key, value in event.items():
        if isinstance(value, str) and value.isprintable() and not re.search(r"\d{7}", value):
            assert out[key] is value
        if key in {"uniqueid", "level", "logger"}:
            assert out[key] is value  # identifiers, and values the logging setup sets
