"""Conformance against 30 byte-exact recordings of real Asterisk 22.10.1 over FastAGI.

For every transcript file:

(a) every ``<`` line Asterisk sent is fed, whole / byte by byte / in random splits, to
    ``agi.wire.protocol``'s HeaderParser and ReplyParser, and the parse is compared with
    expectations derived here, independently, from the recorded bytes;
(b) a scripted raw asyncio server sends exactly the transcript's ``>`` lines (and performs its
    half-close / full close) against :class:`tests.fakes.FakeAsterisk`, configured only with
    the transcript's env values, the caller's DTMF/hangup timeline, stock sound lengths and
    the hangup-notice mode. Every byte the server receives must equal the transcript's ``<``
    lines, in order, and the fake's own record must show the same interleaving of commands
    and replies (which is what HANGUP placement and pipelining are about).

Any change to a reply format in the fake, or to the parsers, fails here.
"""

from __future__ import annotations

import asyncio
import random
import re
import socket
from pathlib import Path

import pytest

from agi.wire.protocol import HangupNotice, HeaderParser, Reply, ReplyParser
from tests.fakes import FakeAsterisk
from tests.transcripts import (
    TRANSCRIPT_DIR,
    Transcript,
    load_all,
    sender_timeline,
    transcript_files,
)

TRANSCRIPTS = load_all()
BY_NAME = {t.name: t for t in TRANSCRIPTS}
CONNECTED = [t for t in TRANSCRIPTS if t.connected]
SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "asterisk-agi-transcripts"

#: Real-time runs (only the pipelining cases need the socket watched while media plays).
TIME_SCALE = 0.05


# --------------------------------------------------------------------------- the files


def test_thirty_transcript_files_in_repo() -> None:
    files = transcript_files()
    assert [p.name[:2] for p in files] == [f"{n:02d}" for n in range(1, 31)]
    assert (TRANSCRIPT_DIR / "INDEX.md").is_file()
    assert (TRANSCRIPT_DIR / "00-README.txt").is_file()
    # 24 holds two transcripts, 23 and the second half of 26 none with bytes
    assert len(TRANSCRIPTS) == 32
    assert sorted(t.name for t in TRANSCRIPTS if not t.connected) == [
        "23-server-not-listening",
        "26-hagi[125]",
    ]


@pytest.mark.skipif(
    not SHARED.is_dir(), reason="../shared/asterisk-agi-transcripts is not beside the clone"
)
def test_in_repo_copies_are_byte_identical_to_shared() -> None:
    shared = sorted(p.name for p in SHARED.iterdir() if p.is_file())
    ours = sorted(p.name for p in TRANSCRIPT_DIR.iterdir() if p.is_file())
    assert ours == shared
    for name in shared:
        assert (TRANSCRIPT_DIR / name).read_bytes() == (SHARED / name).read_bytes(), name


@pytest.mark.parametrize("tr", TRANSCRIPTS, ids=lambda t: t.name)
def test_header_commands_match_recorded_server_lines(tr: Transcript) -> None:
    """The header's "Commands sent" list is what the '>' lines carry (parser sanity)."""
    if tr.commands is None:
        assert not tr.server_lines()
        return
    assert [ln.decode().removesuffix("\n") for ln in tr.server_lines()] == tr.commands


# --------------------------------------------------------------------------- (a) parsers

_REPLY_200 = re.compile(
    r"200 result=(?P<result>\S*)(?: \((?P<data>.*)\))?(?: endpos=(?P<endpos>\d+))?"
)


def expected_events(lines: list[bytes]) -> list[tuple]:
    """What a correct parser must produce, derived from the raw lines without agi.wire.protocol."""
    out: list[tuple] = []
    block: list[str] | None = None
    head = ""
    for raw in lines:
        line = raw.decode().removesuffix("\n")
        if block is not None:
            if line.startswith("520 "):
                out.append(("reply", 520, "", None, None, head, tuple(block)))
                block = None
            else:
                block.append(line)
        elif line == "HANGUP":
            out.append(("hangup",))
        elif line.startswith("520-"):
            block, head = [], line[4:]
        elif line.startswith("200 "):
            match = _REPLY_200.fullmatch(line)
            assert match, line
            endpos = match.group("endpos")
            out.append(
                (
                    "reply",
                    200,
                    match.group("result"),
                    match.group("data"),
                    int(endpos) if endpos else None,
                    "",
                    (),
                )
            )
        else:
            out.append(("reply", int(line[:3]), "", None, None, line, ()))
    assert block is None, "transcript ends inside a 520 block"
    return out


def as_tuple(event: Reply | HangupNotice) -> tuple:
    if isinstance(event, HangupNotice):
        return ("hangup",)
    return ("reply", event.code, event.result, event.data, event.endpos, event.text, event.usage)


def chunkings(data: bytes) -> list[list[bytes]]:
    """Whole, byte by byte, and a few seeded random splits."""
    out = [[data], [data[i : i + 1] for i in range(len(data))]]
    for seed in range(4):
        rng = random.Random(seed)
        chunks, i = [], 0
        while i < len(data):
            step = rng.randint(1, 40)
            chunks.append(data[i : i + step])
            i += step
        out.append(chunks)
    return out


@pytest.mark.parametrize("tr", CONNECTED, ids=lambda t: t.name)
def test_header_parser_on_recorded_env_block(tr: Transcript) -> None:
    expected = tr.env
    args = tuple(v for k, v in expected.items() if k.startswith("arg_"))
    for chunks in chunkings(tr.env_block):
        parser = HeaderParser()
        env = None
        for chunk in chunks:
            assert env is None, "env returned before the blank line"
            env = parser.feed(chunk)
        assert env is not None
        assert dict(env.values) == expected
        assert env.args == args
        assert env.network_script == expected.get("network_script", "")
        assert env.calleridname == expected["calleridname"]  # raw quotes kept
        assert parser.remainder == b""
    if "network_script" in expected:
        assert env.script_path == "consent"
        assert env.params["campaign"] == "demo"


@pytest.mark.parametrize("tr", CONNECTED, ids=lambda t: t.name)
def test_reply_parser_on_recorded_replies(tr: Transcript) -> None:
    replies = tr.replies()
    expected = expected_events(replies)
    for chunks in chunkings(b"".join(replies)):
        parser = ReplyParser()
        events: list[tuple] = []
        for chunk in chunks:
            events += [as_tuple(e) for e in parser.feed(chunk)]
        assert events == expected
        parser.feed_eof()  # nothing half-parsed is left over


@pytest.mark.parametrize("tr", CONNECTED, ids=lambda t: t.name)
def test_env_then_replies_in_one_stream(tr: Transcript) -> None:
    """Env block and replies arriving in the same reads: HeaderParser.remainder hands over."""
    stream = tr.sent_by_asterisk()
    expected = expected_events(tr.replies())
    for chunks in chunkings(stream)[2:]:
        header, replies = HeaderParser(), ReplyParser()
        events: list[tuple] = []
        env = None
        for chunk in chunks:
            if env is None:
                env = header.feed(chunk)
                if env is not None:
                    events += [as_tuple(e) for e in replies.feed(header.remainder)]
            else:
                events += [as_tuple(e) for e in replies.feed(chunk)]
        assert env is not None and events == expected


def test_every_reply_shape_is_covered_by_the_recordings() -> None:
    """The recordings exercise every reply form the parser documents."""
    lines = {ln for t in CONNECTED for ln in t.replies()}
    for needle in (
        b"200 result=0\n",
        b"200 result=49 endpos=13760\n",
        b"200 result=-1 endpos=0\n",
        b"200 result=-1 endpos=12000\n",
        b"200 result= (timeout)\n",
        b"200 result=12 (timeout)\n",
        b"200 result=1234\n",
        b"200 result=1 ()\n",
        b"200 result=-2\n",
        b"200 result=-1\n",
        b"HANGUP\n",
        b"510 Invalid or unknown command\n",
        b"511 Command Not Permitted on a dead channel or intercept routine\n",
        b"520-Invalid command syntax.  Proper usage follows:\n",
        b"520 End of proper usage.\n",
    ):
        assert needle in lines, needle


# --------------------------------------------------------------------------- (b) the fake

#: Per-transcript caller configuration. Default: the [sender] plan's timeline (seconds after
#: answer, see tests.transcripts.sender_timeline), immediate HANGUP notice.
SPECIAL: dict[str, dict] = {
    # originate "application SendDTMF 1": the digit comes while ANSWER waits for media (and is
    # kept for the next command); the ;1 half then hangs up while the server sends its NOOP —
    # Asterisk reported the HANGUP between that NOOP and its reply.
    "01-env-block": {
        "timeline": [(0.205, "1")],
        "hangup_after": 2,
        "hangup_notice": "on_next_command",
    },
    "13-hangup-agiexitonhangup": {"exit_on_hangup": True},
    # "channel request hangup" from the CLI while the server idles: virtual time does not pass
    # between commands, so the idle hangup is "after the first reply" (ANSWER).
    "14-hangup-while-idle-cli": {"timeline": [], "hangup_after": 1},
    # SIP: RFC 4733 '1' x3 from a pcap (+2 s, +3 s, +3 s) then BYE; times from the annotations.
    "30-sip-rfc2833-dtmf": {
        "timeline": [(2.148, "1"), (5.16, "1"), (8.155, "1"), (11.02, "HANGUP")],
        "hangup_notice": "on_next_command",
    },
    # pipelining needs the socket watched while media plays: real time, 20x faster
    "27-pipelined-command-during-playback": {"realtime": True, "time_scale": TIME_SCALE},
    "28-pipelined-command-during-wait": {"realtime": True, "time_scale": TIME_SCALE},
}

#: AGISTATUS the header does not state (30: the BYE hung the channel up during the AGI).
AGISTATUS = {"30-sip-rfc2833-dtmf": "HANGUP"}


def fake_kwargs(tr: Transcript) -> dict:
    kwargs: dict = {"timeline": sender_timeline(tr), "sounds_dir": None, "idle_timeout": 5.0}
    kwargs.update(SPECIAL.get(tr.name, {}))
    return kwargs


async def _read_until(reader: asyncio.StreamReader, got: bytearray, size: int) -> bool:
    """Read until ``got`` holds ``size`` bytes; False on EOF/timeout."""
    while len(got) < size:
        try:
            data = await asyncio.wait_for(reader.read(4096), 5.0)
        except (TimeoutError, ConnectionError):
            return False
        if not data:
            return False
        got += data
    return True


async def replay(tr: Transcript, **kwargs) -> tuple[bytes, list[str], object]:
    """Run the transcript's server side against a FakeAsterisk; return what the server saw."""
    received = bytearray()
    notes: list[str] = []
    done = asyncio.Event()
    realtime = kwargs.get("realtime", False)
    scale = kwargs.get("time_scale", 1.0)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            expected = len(tr.env_block)
            assert await _read_until(reader, received, expected), "env block not received"
            previous = None
            closed = False
            for item in tr.items:
                if item.kind == "<":
                    expected += len(item.data)
                    if not closed and not await _read_until(reader, received, expected):
                        notes.append(f"short read before {item.data!r}")
                elif item.kind == ">":
                    if realtime and previous is not None and previous.kind == ">":
                        # pipelined: the recorded server waited this long before sending
                        await asyncio.sleep(((item.t or 0) - (previous.t or 0)) * scale)
                    try:
                        writer.write(item.data)
                        await writer.drain()
                    except (ConnectionError, OSError) as exc:
                        notes.append(f"write error: {exc!r}")
                elif item.data == b"half_close":
                    writer.write_eof()
                elif item.data == b"full_close":
                    writer.close()
                    closed = True
                elif item.data == b"eof":
                    extra = await asyncio.wait_for(reader.read(), 5.0)
                    received.extend(extra)
                    notes.append("eof")
                if item.kind in "<>":
                    previous = item
            if not closed:
                # nothing more may arrive after the recording ends
                with_timeout = asyncio.wait_for(reader.read(), 5.0)
                try:
                    received.extend(await with_timeout)
                except (ConnectionError, OSError):
                    pass
                writer.close()
        finally:
            done.set()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        fake = FakeAsterisk.from_env(tr.env, "127.0.0.1", port, **kwargs)
        record = await asyncio.wait_for(fake.run(), 20.0)
        await asyncio.wait_for(done.wait(), 10.0)
    return bytes(received), notes, record


def expected_record(tr: Transcript) -> list[tuple[str, bytes]]:
    """The fake's own (causal) view of the dialogue: env, then the exchange as recorded.

    Lines the fake can never see are dropped: after Asterisk closed (13) the server's writes
    go nowhere.
    """
    out = [("<", line) for line in tr.env_lines] + [("<", b"\n")]
    for item in tr.items:
        if item.kind == "event" and item.data == b"eof":
            break
        if item.kind in "<>":
            out.append((item.kind, item.data))
    return out


@pytest.mark.parametrize("tr", CONNECTED, ids=lambda t: t.name)
async def test_fake_reproduces_transcript(tr: Transcript) -> None:
    received, notes, record = await replay(tr, **fake_kwargs(tr))

    # 1. byte for byte what the recorded server received, in order
    assert received == tr.sent_by_asterisk(), record.dialogue()
    assert not [n for n in notes if n.startswith("short read")], notes

    # 2. the same interleaving of commands and replies, seen from the fake
    expected = expected_record(tr)
    got = list(record.transcript)
    if "full_close" in tr.event_names():
        # Asterisk still writes its final "HANGUP" into the closed socket; nobody sees it
        assert got[-1] == ("<", b"HANGUP\n")
        got = got[:-1]
    if tr.name == "28-pipelined-command-during-wait":
        # The recorded server wrote "NOOP" while WAIT FOR DIGIT / SAY DIGITS ran; the fake logs
        # a command when it reads it, i.e. after the aborted command's reply. Per direction
        # the sequences must match, and each reply must still follow its command.
        assert [x for x in got if x[0] == "<"] == [x for x in expected if x[0] == "<"]
        assert [x for x in got if x[0] == ">"] == [x for x in expected if x[0] == ">"]
        joined = b"".join(k.encode() + d for k, d in got)
        for fragment in (
            # aborted WAIT FOR DIGIT answers "200 result=1", then the NOOP its own reply
            b">WAIT FOR DIGIT 5000\n<200 result=1\n>NOOP pipelined-during-wait\n<200 result=0\n",
            # aborted GET DATA: no reply line at all
            b">GET DATA beep 5000 4\n>NOOP pipelined-during-get-data\n<200 result=0\n",
            # SAY DIGITS is not aborted: it finishes, then the NOOP runs
            b'>SAY DIGITS 1234567890 ""\n<200 result=0\n'
            b">NOOP pipelined-during-say-digits\n<200 result=0\n",
        ):
            assert fragment in joined
    else:
        assert got == expected, record.dialogue()

    # 3. the status the dialplan would have seen
    assert record.agistatus == (tr.agistatus or AGISTATUS[tr.name])
    assert record.connected and not record.errors


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("tr", [t for t in TRANSCRIPTS if not t.connected], ids=lambda t: t.name)
async def test_nothing_listening_is_failure(tr: Transcript) -> None:
    """23 / 26[125]: no TCP connection, no bytes, AGISTATUS=FAILURE."""
    assert tr.exchange == [] and tr.env_lines == []
    record = await FakeAsterisk("127.0.0.1", _free_port(), sounds_dir=None).run()
    assert not record.connected
    assert record.transcript == []
    assert record.agistatus == tr.agistatus == "FAILURE"


async def test_pipelining_is_only_detected_in_real_time_mode() -> None:
    """Virtual time cannot see a command arrive "during" playback unless it is already
    buffered; the real-time mode is what reproduces 27 (a guard on the SPECIAL table)."""
    tr = BY_NAME["27-pipelined-command-during-playback"]
    kwargs = fake_kwargs(tr)
    assert kwargs["realtime"] and kwargs["time_scale"] <= 0.1
