"""FakeAsterisk behaviour beyond the 30 recordings, each rule traced to res_agi.c / app.c.

The transcripts pin the common paths byte for byte (test_transcripts.py); these pin the
corners a server can still hit: fgets() line handling, the dead-channel command table, GET
OPTION's strchr quirk, press-script and timeline semantics, the env block's shape.
"""

from __future__ import annotations

import asyncio
import socket

import pytest

from tests.fakes import ENV_ORDER, HANGUP, R_511, SILENCE, CallRecord, FakeAsterisk


async def talk(
    steps: list[tuple[bytes, int]], *, idle: float = 0.0, **fake_kwargs
) -> tuple[list[bytes], bytes, CallRecord]:
    """A raw server: for each step send the bytes, then read that many lines; then (after
    ``idle`` real seconds) half-close and read to EOF. Returns (lines after env, env, record)."""
    lines: list[bytes] = []
    env = bytearray()
    done = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while not env.endswith(b"\n\n"):
                env.extend(await asyncio.wait_for(reader.readline(), 5))
            for data, count in steps:
                writer.write(data)
                await writer.drain()
                for _ in range(count):
                    lines.append(await asyncio.wait_for(reader.readline(), 5))
            if idle:
                await asyncio.sleep(idle)
            writer.write_eof()
            rest = await asyncio.wait_for(reader.read(), 5)
            lines.extend(rest.splitlines(keepends=True))
            writer.close()
        finally:
            done.set()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    fake_kwargs.setdefault("sounds_dir", None)
    async with server:
        record = await asyncio.wait_for(FakeAsterisk("127.0.0.1", port, **fake_kwargs).run(), 10)
        await asyncio.wait_for(done.wait(), 5)
    return lines, bytes(env), record


# --------------------------------------------------------------------------- fgets()


async def test_nul_truncates_and_the_next_line_is_appended() -> None:
    """strlen() stops at NUL, fgets() appends the next line there: one merged command."""
    lines, _, record = await talk([(b'SET VARIABLE X "a\x00b"\nNOOP\n', 1)])
    assert lines == [b"200 result=1\n", b"HANGUP\n"]
    assert record.variables["X"] == "aNOOP"


@pytest.mark.parametrize(
    ("size", "replies"),
    [
        (2046, [b"200 result=0\n"]),  # the longest command encode_command allows
        (2047, [b"200 result=0\n", b"510 Invalid or unknown command\n"]),  # "\n" left over
        (3000, [b"200 result=0\n", b"510 Invalid or unknown command\n"]),  # rest is a command
    ],
)
async def test_long_lines_are_cut_at_2047_bytes(size: int, replies: list[bytes]) -> None:
    command = b"NOOP " + b"x" * (size - 5) + b"\n"
    lines, _, _ = await talk([(command, len(replies))])
    assert lines == [*replies, b"HANGUP\n"]


async def test_partial_line_before_eof_still_runs() -> None:
    lines, _, record = await talk([(b"NOOP", 0)])
    assert lines == [b"200 result=0\n", b"HANGUP\n"]
    assert record.commands == ["NOOP"]


async def test_failure_line_ends_the_agi_with_failure() -> None:
    lines, _, record = await talk([(b"failure: cannot exec\n", 1)])
    assert lines == [b"HANGUP\n"]
    assert record.agistatus == "FAILURE"


@pytest.mark.parametrize(
    ("command", "reply"),
    [
        (b"NOOP\r\n", b"510 Invalid or unknown command\n"),  # CR is part of the word
        (b"nOoP\n", b"200 result=0\n"),
        (b"get VARIABLE CALLERID(num)\n", b"200 result=1 (+447700900123)\n"),
        (b"GET\n", b"510 Invalid or unknown command\n"),
        (b"GET FULL\n", b"510 Invalid or unknown command\n"),
        (b"WAIT FOR DIGIT x\n", b"520-Invalid command syntax.  Proper usage follows:\n"),
        (b"SAY NUMBER 42\n", b"520-Invalid command syntax.  Proper usage follows:\n"),
        (b"\t \n", b"510 Invalid or unknown command\n"),
    ],
)
async def test_command_lookup(command: bytes, reply: bytes) -> None:
    lines, _, _ = await talk([(command, 1)])
    assert lines[0] == reply


async def test_usage_without_docs_is_one_line() -> None:
    lines, _, _ = await talk([(b"WAIT FOR DIGIT\n", 1)], usage_docs=False)
    assert lines == [b"520 Invalid command syntax.  Proper usage not available.\n", b"HANGUP\n"]


async def test_unmodelled_command_is_an_error_not_a_guess() -> None:
    lines, _, record = await talk([(b"RECORD FILE x wav # 1000\n", 0)])
    assert lines == [b"HANGUP\n"]
    assert record.errors and "RECORD FILE" in record.errors[0]


# --------------------------------------------------------------------------- dead channel

DEAD = [
    (b"ANSWER\n", R_511),
    (b'STREAM FILE beep ""\n', R_511),
    (b"GET DATA beep 1000 4\n", R_511),
    (b'GET OPTION beep "1" 1000\n', R_511),
    (b'SAY DIGITS 123 ""\n', R_511),
    (b'SAY NUMBER 42 ""\n', R_511),
    (b"WAIT FOR DIGIT 100\n", R_511),
    (b"CHANNEL STATUS\n", R_511),
    (b"HANGUP\n", R_511),
    (b"SET VARIABLE CONSENT_RESULT no_decision\n", b"200 result=1\n"),
    (b"GET VARIABLE CONSENT_RESULT\n", b"200 result=1 (no_decision)\n"),
    (b"GET FULL VARIABLE ${CONSENT_RESULT}\n", b"200 result=1 (no_decision)\n"),
    (b"VERBOSE bye 1\n", b"200 result=1\n"),
    (b"NOOP\n", b"200 result=0\n"),
    (b"EXEC Playback beep\n", b"200 result=0\n"),
    (b"DATABASE PUT fam key val\n", b"200 result=1\n"),
    (b"DATABASE GET fam key\n", b"200 result=1 (val)\n"),
    (b"ASYNCAGI BREAK\n", b"200 result=0\n"),
]


async def test_dead_channel_command_table() -> None:
    steps = [(b"NOOP\n", 2)] + [(command, 1) for command, _ in DEAD]
    lines, _, record = await talk(steps, hangup_after=0)
    assert lines[:2] == [b"HANGUP\n", b"200 result=0\n"]  # hangup before any command
    assert lines[2:-1] == [reply for _, reply in DEAD]
    assert lines[-1] == b"HANGUP\n"
    assert record.agistatus == "HANGUP"


async def test_exit_on_hangup_sends_two_hangups_and_closes() -> None:
    lines, _, record = await talk([], hangup_after=0, exit_on_hangup=True)
    assert lines == [b"HANGUP\n", b"HANGUP\n"]
    assert record.agistatus == "HANGUP"


# --------------------------------------------------------------------------- media rules


async def test_get_option_hangup_while_waiting_answers_zero() -> None:
    """strchr(edigits, -1) is NULL, so a hangup after the prompt reads as "no key" (res=0)."""
    lines, _, record = await talk(
        [(b'GET OPTION beep "1" 5000\n', 2), (b"NOOP\n", 1)],
        answered=True,
        timeline=[(1.0, "HANGUP")],
    )
    assert lines == [b"200 result=0 endpos=3520\n", b"HANGUP\n", b"200 result=0\n", b"HANGUP\n"]
    assert record.agistatus == "HANGUP"


async def test_get_option_ignores_a_key_that_is_not_an_escape_digit() -> None:
    lines, _, _ = await talk(
        [(b'GET OPTION beep "1" 5000\n', 1)], answered=True, timeline=[(1.0, "5")]
    )
    assert lines[0] == b"200 result=0 endpos=3520\n"


@pytest.mark.parametrize(
    ("command", "reply"),
    [
        (b'STREAM FILE nosuch "" 1000\n', b"200 result=-1 endpos=1000\n"),  # the offset back
        (b'GET OPTION nosuch "1" 100\n', b"200 result=-1 endpos=0\n"),
        (b"GET DATA nosuch 100 4\n", b"200 result=-1\n"),  # ast_streamfile failed: res -1
    ],
)
async def test_missing_files(command: bytes, reply: bytes) -> None:
    lines, _, record = await talk([(command, 1)], answered=True)
    assert lines[0] == reply
    expect = "SUCCESS" if command.startswith(b"GET DATA") else "FAILURE"
    assert record.agistatus == expect
    assert record.prompts[0].outcome == "missing"


async def test_digits_pressed_during_answer_are_kept_for_the_next_command() -> None:
    lines, _, _ = await talk(
        [(b"ANSWER\n", 1), (b"WAIT FOR DIGIT 100\n", 1)], timeline=[(0.2, "7")]
    )
    assert lines[:2] == [b"200 result=0\n", b"200 result=55\n"]


async def test_digits_while_no_command_listens_are_lost() -> None:
    """29: a digit arriving while the AGI is idle (here: during NOOP-free SAY) is dropped."""
    lines, _, record = await talk(
        [(b'SAY DIGITS 12 ""\n', 1), (b"WAIT FOR DIGIT 100\n", 1)],
        answered=True,
        timeline=[(0.5, "3")],
    )
    assert lines[:2] == [b"200 result=0\n", b"200 result=0\n"]
    assert record.dropped_digits == ["3"]


async def test_realtime_idle_hangup_is_pushed_unsolicited() -> None:
    """14: the channel hangs up while the server idles; HANGUP arrives without a command."""
    lines, _, record = await talk(
        [(b"NOOP\n", 1), (b"", 1), (b"WAIT FOR DIGIT 100\n", 1)],
        answered=True,
        realtime=True,
        time_scale=0.01,
        timeline=[(2.0, "HANGUP")],
    )
    assert lines == [b"200 result=0\n", b"HANGUP\n", R_511, b"HANGUP\n"]
    assert record.agistatus == "HANGUP"


# --------------------------------------------------------------------------- press script


async def test_press_script_semantics() -> None:
    steps = [
        (b'STREAM FILE beep ""\n', 1),  # no escape digits: consumes nothing
        (b'STREAM FILE beep "12"\n', 1),  # "2": interrupts at half the prompt
        (b'STREAM FILE beep "12"\n', 1),  # "5": not an escape digit, ignored
        (b"GET DATA beep 3000 11\n", 1),  # whole entry
        (b"WAIT FOR DIGIT 3000\n", 1),  # SILENCE
        (b"WAIT FOR DIGIT 3000\n", 2),  # HANGUP
    ]
    lines, _, record = await talk(
        steps, answered=True, presses=["2", "5", "07700900123#", SILENCE, HANGUP]
    )
    assert lines == [
        b"200 result=0 endpos=3520\n",
        b"200 result=50 endpos=1760\n",
        b"200 result=0 endpos=3520\n",
        b"200 result=07700900123\n",
        b"200 result=0\n",
        b"200 result=-1\n",
        b"HANGUP\n",
        b"HANGUP\n",
    ]
    assert [p for _, p in record.presses_used] == ["2", "5", "07700900123#", SILENCE, HANGUP]
    assert record.hung_up and record.hangup_by == "caller"


async def test_exhausted_press_script() -> None:
    lines, _, _ = await talk([(b"WAIT FOR DIGIT 3000\n", 1)], presses=[])
    assert lines[0] == b"200 result=0\n"
    lines, _, _ = await talk(
        [(b"WAIT FOR DIGIT 3000\n", 2)], presses=[], on_presses_exhausted="hangup"
    )
    assert lines[:2] == [b"200 result=-1\n", b"HANGUP\n"]


# --------------------------------------------------------------------------- env, sounds


async def test_env_block_shape() -> None:
    args = [f"a{i}" for i in range(1, 12)]
    _, env, _ = await talk([], network_script=None, args=args, calleridname='Jane "JJ" Doe')
    keys = [ln.split(b":", 1)[0].decode() for ln in env.splitlines() if ln]
    assert keys == [f"agi_{k}" for k in ENV_ORDER if k != "network_script"] + [
        f"agi_arg_{i}" for i in range(1, 12)
    ]
    assert b"agi_request: agi://127.0.0.1:" in env
    assert b'agi_calleridname: Jane "JJ" Doe\n' in env
    assert b"agi_accountcode: \n" in env  # empty value keeps ": "
    assert env.endswith(b"agi_arg_11: a11\n\n")


async def test_env_with_script_and_query() -> None:
    _, env, _ = await talk([], network_script="consent?purpose=marketing-calls")
    assert env.startswith(
        b"agi_network: yes\nagi_network_script: consent?purpose=marketing-calls\n"
    )


@pytest.mark.parametrize(("language", "found_in"), [("en", "en"), ("cy", "cy"), ("fr", "en")])
def test_prompt_language_fallback(language: str, found_in: str) -> None:
    fake = FakeAsterisk(language=language, sounds={}, sounds_dir=None)
    fake._localized = {("en", "consent-ivr/identify"): 8000, ("cy", "consent-ivr/identify"): 9000}
    samples, lang = fake._lookup("consent-ivr/identify")
    assert lang == found_in and samples == (9000 if found_in == "cy" else 8000)


def test_repo_prompts_are_found_when_present() -> None:
    fake = FakeAsterisk()
    assert any(name.startswith("consent-ivr/") for _, name in fake._localized)


def test_missing_sounds_override() -> None:
    fake = FakeAsterisk(missing_sounds=["beep"], sounds_dir=None)
    assert fake._lookup("beep") == (None, None)


def test_constructor_rejects_contradictions() -> None:
    with pytest.raises(ValueError):
        FakeAsterisk(presses=["1"], timeline=[(1.0, "1")])
    with pytest.raises(ValueError):
        FakeAsterisk(hangup_notice="sometimes")
    with pytest.raises(ValueError):
        FakeAsterisk(timeline=[(1.0, "12")])


# --------------------------------------------------------------------------- the real Asterisk
# Differences and confirmations found by the real-Asterisk tier (tests/asterisk); each one is
# listed in docs/asterisk-kit.md, "The real-Asterisk test tier".


@pytest.mark.parametrize(("number", "name"), [("", ""), ("", "Jane Doe"), ("+447700900123", "")])
async def test_absent_caller_id_is_sent_as_unknown(number: str, name: str) -> None:
    """res_agi setup_env: ``S_COR(valid, str, "unknown")`` for the number and the name, so a
    withheld caller (CALLERID(num) empty) arrives as ``agi_callerid: unknown``, never empty
    (seen on the real Asterisk: test_inbound.py, withheld caller ID)."""
    _, env, _ = await talk([], callerid=number, calleridname=name)
    assert f"agi_callerid: {number or 'unknown'}\n".encode() in env
    assert f"agi_calleridname: {name or 'unknown'}\n".encode() in env


async def _killed(*, during_prompt: bool) -> CallRecord:
    """A server that sets the safe result first, then dies (SIGKILL: the kernel resets the
    connection, nothing more is read) in a prompt or between two commands."""
    env = bytearray()
    dead = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while not env.endswith(b"\n\n"):
                env.extend(await asyncio.wait_for(reader.readline(), 5))
            writer.write(b"SET VARIABLE CONSENT_RESULT error\n")
            await asyncio.wait_for(reader.readline(), 5)
            if during_prompt:
                writer.write(b'GET OPTION long "12" 5000\n')
                await writer.drain()
                await asyncio.sleep(0.3)  # into the 30 s prompt
            writer.transport.abort()
        finally:
            dead.set()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        fake = FakeAsterisk("127.0.0.1", port, sounds_dir=None, sounds={"long": 8000 * 30},
                            realtime=True)
        record = await asyncio.wait_for(fake.run(), 10)
        await asyncio.wait_for(dead.wait(), 5)
    return record


@pytest.mark.parametrize("during_prompt", [True, False])
async def test_server_killed_leaves_its_variables_and_agistatus_success(
        during_prompt: bool) -> None:
    """run_agi: a read that finds the connection gone is "Program terminated", returning
    the status so far -- SUCCESS. The real Asterisk showed exactly this for a consent
    server SIGKILLed in the question (test_fail_closed.py): CONSENT_RESULT=error and
    AGISTATUS=SUCCESS, indistinguishable from a flow that ended on its own."""
    record = await _killed(during_prompt=during_prompt)
    assert record.variables["CONSENT_RESULT"] == "error"
    assert record.agistatus == "SUCCESS"
    assert not record.hung_up  # the caller is still there, for the dialplan's fallback


async def test_nothing_listening_is_agistatus_failure() -> None:
    """launch_netscript cannot connect: FAILURE, and no env is sent (test_fail_closed.py,
    server not listening)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: the connect is refused
        record = await FakeAsterisk("127.0.0.1", port, sounds_dir=None).run()
    assert (record.connected, record.agistatus) == (False, "FAILURE")
