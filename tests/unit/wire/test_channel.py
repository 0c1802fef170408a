"""agi.wire.channel.AGIChannel against the FakeAsterisk (and a few raw peers) over real TCP.

A tiny asyncio server accepts one connection on an AGIStream, reads the env block and
builds a AGIChannel exactly as the real server does. Every assertion is made here, outside the
server, on what the channel returned and on what the fake recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from agi.wire.channel import AGIChannel, AGIStream, GetDataResult, PlaybackResult, ReplyTimeout
from agi.wire.protocol import (
    AGIAppError,
    AGIDeadChannel,
    AGIHangup,
    AGIInvalidCommand,
    AGIUsageError,
    ProtocolError,
)
from tests.fakes import HANGUP, SILENCE, USAGE, CallRecord, FakeAsterisk

Scenario = Callable[[AGIChannel], Awaitable[Any]]


async def _accept_one(stream: AGIStream, **channel_kwargs: Any) -> AGIChannel:
    env = await stream.read_env(5.0)
    return AGIChannel(env, stream, **channel_kwargs)


async def run_call(
    scenario: Scenario, channel_kwargs: dict | None = None, **fake_kwargs: Any
) -> tuple[Any, CallRecord, AGIChannel]:
    """Run ``scenario(channel)`` against a FakeAsterisk; return (result or exception, record)."""
    loop = asyncio.get_running_loop()
    outcome: asyncio.Future = loop.create_future()
    channels: list[AGIChannel] = []

    async def handle(stream: AGIStream) -> None:
        channel = await _accept_one(stream, **(channel_kwargs or {}))
        channels.append(channel)
        try:
            outcome.set_result(await scenario(channel))
        except Exception as exc:  # asserted outside the server
            outcome.set_result(exc)
        finally:
            channel.close()
            await channel.wait_closed()

    tasks: set[asyncio.Task] = set()

    def connected(stream: AGIStream) -> None:  # as the server does, from connection_made
        tasks.add(loop.create_task(handle(stream)))

    server = await loop.create_server(lambda: AGIStream(connected), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    fake_kwargs.setdefault("sounds_dir", None)
    async with server:
        record = await asyncio.wait_for(FakeAsterisk("127.0.0.1", port, **fake_kwargs).run(), 10)
        result = await asyncio.wait_for(outcome, 5)
    assert not record.errors, record.errors
    return result, record, channels[0]


# --------------------------------------------------------------------------- verbs


async def test_answer_noop_verbose() -> None:
    async def scenario(ch: AGIChannel) -> None:
        await ch.answer()
        await ch.noop()
        await ch.noop("step 1")
        await ch.verbose('said "hi" \\ bye', 3)

    result, record, _ = await run_call(scenario)
    assert result is None
    assert record.answered
    assert record.commands == [
        "ANSWER",
        "NOOP",
        'NOOP "step 1"',
        'VERBOSE "said \\"hi\\" \\\\ bye" 3',
    ]
    assert record.agistatus == "SUCCESS"
    assert record.replies()[-1] == b"HANGUP\n"  # the final HANGUP after our close


@pytest.mark.parametrize(
    ("press", "digit", "endpos"),
    [("1", "1", 1760), ("2", "2", 1760), (SILENCE, None, 3520), ("9", None, 3520)],
)
async def test_stream_file(press, digit, endpos) -> None:
    result, record, _ = await run_call(
        lambda ch: ch.stream_file("beep", "12"), presses=[press], answered=True
    )
    assert result == PlaybackResult(digit=digit, endpos=endpos)
    assert record.commands == ['STREAM FILE "beep" "12"']
    assert record.prompts[0].interrupted is (digit is not None)


async def test_stream_file_without_escape_digits_ignores_presses() -> None:
    result, record, _ = await run_call(
        lambda ch: ch.stream_file("beep"), presses=["1"], answered=True
    )
    assert result == PlaybackResult(digit=None, endpos=3520)
    assert record.presses_used == []


async def test_missing_file_is_an_app_error_not_a_hangup() -> None:
    result, record, ch = await run_call(
        lambda ch: ch.stream_file("consent-ivr/identify", "12"), answered=True
    )
    assert type(result) is AGIAppError
    assert not ch.hung_up
    assert record.commands == ['STREAM FILE "consent-ivr/identify" "12"', "NOOP"]
    assert record.agistatus == "FAILURE"  # as transcript 05


@pytest.mark.parametrize("notice", ["immediate", "on_next_command"])
async def test_hangup_during_playback_is_a_hangup_not_an_app_error(notice: str) -> None:
    """result=-1 is ambiguous; the HANGUP line (before or after NOOP's reply) settles it."""
    result, record, ch = await run_call(
        lambda ch: ch.stream_file("demo-thanks", "12"),
        presses=[HANGUP],
        answered=True,
        hangup_notice=notice,
    )
    assert type(result) is AGIHangup
    assert ch.hung_up
    assert record.hung_up and record.agistatus == "HANGUP"
    assert record.prompts[0].outcome == "hangup"


async def test_get_option() -> None:
    result, _, _ = await run_call(
        lambda ch: ch.get_option("beep", "12", 1500), presses=["1"], answered=True
    )
    assert result == PlaybackResult(digit="1", endpos=1760)
    result, _, _ = await run_call(
        lambda ch: ch.get_option("beep", "12", 1500), presses=[SILENCE], answered=True
    )
    assert result == PlaybackResult(digit=None, endpos=3520)


@pytest.mark.parametrize(
    ("press", "expected"),
    [
        ("07700900123#", GetDataResult("07700900123", False)),
        ("1234", GetDataResult("1234", False)),  # max digits reached
        ("12", GetDataResult("12", True)),  # partial, then timeout
        (SILENCE, GetDataResult("", True)),
        ("#", GetDataResult("", False)),
    ],
)
async def test_get_data(press, expected) -> None:
    max_digits = 4 if press in ("1234", "12") else 11
    result, record, _ = await run_call(
        lambda ch: ch.get_data("beep", 3000, max_digits), presses=[press], answered=True
    )
    assert result == expected
    assert record.commands == [f'GET DATA "beep" 3000 {max_digits}']


async def test_get_data_hangup() -> None:
    result, _, ch = await run_call(
        lambda ch: ch.get_data("beep", 3000, 4), presses=[HANGUP], answered=True
    )
    assert type(result) is AGIHangup and ch.hung_up


@pytest.mark.parametrize(("press", "digit"), [("5", "5"), ("#", "#"), (SILENCE, None)])
async def test_wait_for_digit(press, digit) -> None:
    result, _, _ = await run_call(lambda ch: ch.wait_for_digit(2000), presses=[press])
    assert result == digit


async def test_wait_for_digit_hangup() -> None:
    result, record, _ = await run_call(lambda ch: ch.wait_for_digit(2000), presses=[HANGUP])
    assert type(result) is AGIHangup
    # a NOOP settles "-1" only when HANGUP was not already in the same read
    assert record.commands in (["WAIT FOR DIGIT 2000"], ["WAIT FOR DIGIT 2000", "NOOP"])


async def test_say_digits() -> None:
    result, record, _ = await run_call(lambda ch: ch.say_digits("07700", ""), answered=True)
    assert result is None
    assert record.prompt_names() == ["digits/0", "digits/7", "digits/7", "digits/0", "digits/0"]


@pytest.mark.parametrize("digits", ["", "12a", "+44", "1 2"])
async def test_say_digits_refuses_non_digits_before_sending(digits: str) -> None:
    result, record, _ = await run_call(lambda ch: ch.say_digits(digits))
    assert type(result) is ValueError
    assert record.commands == []


@pytest.mark.parametrize("digits", ["²", "١٢٣"])
async def test_say_digits_refuses_non_ascii_digits(digits: str) -> None:
    result, _, _ = await run_call(lambda ch: ch.say_digits(digits))
    assert type(result) is ValueError


VALUES = [
    'hello world "quoted" back\\slash',
    '" ; EXEC System "rm -rf /',
    "trailing\\",
    "",
    "Jöhn Dœ ☎",
    "tab\tinside",
    "${CALLERID(num)}",
]


async def test_set_and_get_variable_round_trip_exactly() -> None:
    async def scenario(ch: AGIChannel) -> list[str | None]:
        out = []
        for i, value in enumerate(VALUES):
            await ch.set_variable(f"CONSENT_V{i}", value)
            out.append(await ch.get_variable(f"CONSENT_V{i}"))
        out.append(await ch.get_variable("NOSUCHVAR"))
        out.append(await ch.get_variable("CALLERID(num)"))
        out.append(await ch.get_full_variable("${CALLERID(num)} / ${NOSUCHVAR}"))
        return out

    result, record, _ = await run_call(scenario)
    assert result == [*VALUES, None, "+447700900123", "+447700900123 / "]
    assert record.variables_set == [(f"CONSENT_V{i}", v) for i, v in enumerate(VALUES)]
    # no value ever became a second command
    assert len(record.commands) == 2 * len(VALUES) + 3


async def test_exec() -> None:
    async def scenario(ch: AGIChannel) -> list[Any]:
        out: list[Any] = [await ch.exec("Playback", "beep,noanswer"), await ch.exec("Set", "X=42")]
        try:
            await ch.exec("NoSuchApp", "foo")
        except AGIAppError as exc:
            out.append(exc)
        out.append(await ch.get_variable("X"))
        return out

    result, record, _ = await run_call(scenario)
    assert result[:2] == [0, 0]
    assert type(result[2]) is AGIAppError
    assert result[3] == "42"
    assert record.prompt_names() == ["beep"]


async def test_hangup_verb_and_channel_status() -> None:
    async def scenario(ch: AGIChannel) -> list[int]:
        before = await ch.channel_status()
        await ch.answer()
        after = await ch.channel_status()
        await ch.hangup()
        return [before, after]

    result, record, ch = await run_call(scenario)
    assert result == [4, 6]  # AST_STATE_RING, AST_STATE_UP
    assert record.hung_up and record.hangup_by == "server"
    assert ch.hung_up  # the HANGUP notice that follows was seen... or will be on next read
    assert record.agistatus == "HANGUP"


# --------------------------------------------------------------------------- hangups, errors


async def test_hangup_notice_before_the_reply() -> None:
    """Transcript 30: HANGUP arrives between a command and its reply; the reply still comes."""

    async def scenario(ch: AGIChannel) -> bool:
        await ch.answer()
        await ch.noop()
        return ch.hung_up

    result, record, _ = await run_call(scenario, hangup_after=1, hangup_notice="on_next_command")
    assert result is True
    assert [d for k, d in record.transcript if k == "<"][-3:] == [
        b"HANGUP\n",
        b"200 result=0\n",
        b"HANGUP\n",
    ]


async def test_dead_channel_511() -> None:
    async def scenario(ch: AGIChannel) -> Any:
        await ch.answer()
        await ch.noop()  # still allowed after hangup
        await ch.set_variable("CONSENT_RESULT", "no_decision")  # allowed too
        await ch.stream_file("beep")  # 511

    result, record, ch = await run_call(scenario, hangup_after=1)
    assert type(result) is AGIDeadChannel
    assert isinstance(result, AGIHangup)
    assert ch.hung_up
    assert record.variables["CONSENT_RESULT"] == "no_decision"


async def test_invalid_command_510() -> None:
    result, _, _ = await run_call(lambda ch: ch.command("FOO BAR"))
    assert type(result) is AGIInvalidCommand


@pytest.mark.parametrize("docs", [True, False])
async def test_usage_error_520(docs: bool) -> None:
    result, _, _ = await run_call(lambda ch: ch.command("WAIT FOR DIGIT"), usage_docs=docs)
    assert type(result) is AGIUsageError
    assert result.usage == (USAGE["wait for digit"] if docs else ())


async def test_replies_split_across_reads() -> None:
    """Nagle-like gaps between the lines of a burst (520 block, -1 then HANGUP)."""

    async def scenario(ch: AGIChannel) -> list[Any]:
        out: list[Any] = []
        try:
            await ch.command("GET VARIABLE")
        except AGIUsageError as exc:
            out.append(exc.usage)
        try:
            await ch.stream_file("demo-thanks", "1")
        except AGIHangup as exc:
            out.append(type(exc))
        return out

    result, _, _ = await run_call(
        scenario, answered=True, presses=[HANGUP], line_delay=0.01, hangup_notice="immediate"
    )
    assert result == [USAGE["get variable"], AGIHangup]


# --------------------------------------------------------------------------- raw peers


async def _raw_peer(
    script: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
    scenario: Scenario,
    **channel_kwargs: Any,
) -> tuple[Any, AGIChannel]:
    loop = asyncio.get_running_loop()
    outcome: asyncio.Future = loop.create_future()
    channels: list[AGIChannel] = []

    async def handle(stream: AGIStream) -> None:
        ch = await _accept_one(stream, **channel_kwargs)
        channels.append(ch)
        try:
            outcome.set_result(await scenario(ch))
        except Exception as exc:
            outcome.set_result(exc)
        finally:
            ch.close()

    tasks: set[asyncio.Task] = set()
    server = await loop.create_server(
        lambda: AGIStream(lambda s: tasks.add(loop.create_task(handle(s)))), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        peer = asyncio.create_task(script(reader, writer))
        result = await asyncio.wait_for(outcome, 5)
        await asyncio.wait_for(peer, 5)
        writer.close()
    return result, channels[0]


ENV = b"agi_network: yes\nagi_network_script: consent\nagi_request: agi://x/consent\n\n"


async def test_reply_byte_by_byte() -> None:
    async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(ENV)
        await reader.readline()
        for byte in b"200 result=49 endpos=13760\n":
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.001)

    result, _ = await _raw_peer(peer, lambda ch: ch.stream_file("beep", "1"))
    assert result == PlaybackResult(digit="1", endpos=13760)


async def test_reply_timeout_closes_the_channel() -> None:
    async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(ENV)
        await reader.readline()
        await reader.read()  # never answers; waits for the channel to close

    result, ch = await _raw_peer(peer, lambda ch: ch.answer(), command_timeout=0.2)
    assert type(result) is ReplyTimeout
    assert isinstance(result, AGIHangup)
    assert ch.closed


async def test_eof_instead_of_reply() -> None:
    async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(ENV)
        await reader.readline()
        writer.write(b"HANGUP\nHANGUP\n")  # AGIEXITONHANGUP (13): two HANGUPs, then close
        writer.close()

    result, ch = await _raw_peer(peer, lambda ch: ch.answer())
    assert type(result) is AGIHangup and ch.hung_up


async def test_hangup_in_the_same_read_as_the_env_block() -> None:
    async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(ENV + b"HANGUP\n")
        await reader.readline()
        writer.write(b"200 result=0\n")
        await writer.drain()

    async def scenario(ch: AGIChannel) -> tuple[bool, bool]:
        before = ch.hung_up
        await ch.noop()
        return before, ch.hung_up

    result, _ = await _raw_peer(peer, scenario)
    assert result == (True, True)


async def test_deadline_follows_each_command_after_a_long_one() -> None:
    """One lazily re-armed timer per connection: a short command after a long one still
    times out on its own deadline, and a slow-but-in-time reply is not cut."""

    async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(ENV)
        await reader.readline()  # STREAM FILE: answered after 0.3 s (its deadline is long)
        await asyncio.sleep(0.3)
        writer.write(b"200 result=0 endpos=100\n")
        await reader.readline()  # ANSWER: never answered
        await reader.read()

    async def scenario(ch: AGIChannel) -> Any:
        played = await ch.stream_file("beep", max_seconds=5)
        t0 = asyncio.get_running_loop().time()
        try:
            await ch.answer()
        except ReplyTimeout:
            return played, asyncio.get_running_loop().time() - t0
        return played, None

    result, ch = await _raw_peer(peer, scenario, command_timeout=0.2)
    played, waited = result
    assert played == PlaybackResult(digit=None, endpos=100)
    assert waited is not None and 0.15 < waited < 1.5
    assert ch.closed


async def test_a_flood_of_unsolicited_replies_is_cut_off() -> None:
    async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(ENV)
        await reader.readline()
        writer.write(b"200 result=0\n" * (AGIStream.MAX_QUEUED + 10))
        await reader.read()

    async def scenario(ch: AGIChannel) -> str:
        await ch.answer()  # the first reply answers it
        await asyncio.sleep(0.2)  # the flood arrives
        await ch.noop()
        return "a flooded session went on"

    result, _ = await _raw_peer(peer, scenario)
    assert isinstance(result, ProtocolError), result


async def test_commands_from_two_coroutines_go_one_at_a_time() -> None:
    async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(ENV)
        for _ in range(2):
            line = await reader.readline()
            assert line.startswith(b"NOOP")
            # nothing else may arrive before this reply goes out
            with contextlib.suppress(TimeoutError):
                extra = await asyncio.wait_for(reader.readline(), 0.05)
                raise AssertionError(f"second command in flight: {extra!r}")
            writer.write(b"200 result=0\n")
        await reader.read()

    async def scenario(ch: AGIChannel) -> int:
        await asyncio.gather(ch.noop("a"), ch.noop("b"))
        return ch.commands_sent

    result, _ = await _raw_peer(peer, scenario)
    assert result == 2


async def test_a_failing_connect_hook_closes_the_connection() -> None:
    loop = asyncio.get_running_loop()

    def broken(stream: AGIStream) -> None:
        raise RuntimeError("hook failed")

    errors: list[dict] = []
    loop.set_exception_handler(lambda _loop, ctx: errors.append(ctx))
    try:
        server = await loop.create_server(lambda: AGIStream(broken), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(ENV)
            assert await asyncio.wait_for(reader.read(), 5) == b""  # closed, not left open
            writer.close()
    finally:
        loop.set_exception_handler(None)
    assert any("hook failed" in str(ctx.get("exception")) for ctx in errors)


async def test_each_command_is_observed_with_its_outcome() -> None:
    """on_command sees every command once: ok (after a "100 Trying"), error (510),
    hangup (511) and, last, timeout — which also closes the channel."""
    seen: list[tuple[str, float, str]] = []

    async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(ENV)
        await reader.readline()  # EXEC
        writer.write(b"100 result=0 Trying...\n")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"200 result=0\n")
        await reader.readline()  # an unknown verb
        writer.write(b"510 Invalid or unknown command\n")
        await reader.readline()  # ANSWER on a dead channel
        writer.write(b"511 Command Not Permitted on a dead channel or intercept routine\n")
        await reader.readline()  # NOOP: never answered
        await reader.read()

    async def scenario(ch: AGIChannel) -> list[str]:
        outcomes = []
        await ch.exec("Wait", "1")
        for call in (lambda: ch.command("BOGUS"), ch.answer, ch.noop):
            try:
                await call()
            except Exception as exc:
                outcomes.append(type(exc).__name__)
        return outcomes

    result, ch = await _raw_peer(peer, scenario, command_timeout=0.3,
                                 on_command=lambda *obs: seen.append(obs))
    assert result == ["AGIInvalidCommand", "AGIDeadChannel", "ReplyTimeout"]
    assert [(verb, outcome) for verb, _, outcome in seen] == [
        ("EXEC", "ok"), ("BOGUS", "error"), ("ANSWER", "hangup"), ("NOOP", "timeout")]
    assert seen[0][1] >= 0.04 and 0.2 < seen[3][1] < 2.0  # seconds to the (final) reply
    assert ch.closed


async def test_a_cancelled_wait_releases_the_command_slot() -> None:
    """A command cancelled while it waits for its reply (a drain cutting a call short)
    gives the one-command slot back and leaves no waiter for a late reply to wake."""

    async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(ENV)
        await reader.readline()  # GET OPTION: answered only after the wait was cancelled
        await asyncio.sleep(0.2)
        writer.write(b"200 result=0 endpos=5\n")
        await reader.readline()  # NOOP
        writer.write(b"200 result=0\n")
        await reader.read()

    async def scenario(ch: AGIChannel) -> Any:
        waiting = asyncio.create_task(ch.get_option("beep", "12", 1000))
        await asyncio.sleep(0.05)
        waiting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiting
        stale = ch._stream._waiter
        await asyncio.wait_for(ch.noop(), 2)  # not stuck behind the cancelled command
        return stale, ch.commands_sent

    result, _ = await _raw_peer(peer, scenario)
    assert result == (None, 2)
