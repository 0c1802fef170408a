"""Hypothesis fuzzing of the sans-IO parsers: never hang, never crash, bounded memory.

Only :class:`agi.wire.protocol.ProtocolError` (HeaderError is one) may escape a parser; after every
successful ``feed`` the parser's internal buffer is within its configured maximum; and reply
lines survive a format -> parse round trip whatever the chunking.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from agi.wire.protocol import (
    _ENV_LINE,
    MAX_COMMAND_BYTES,
    CommandEncodingError,
    HangupNotice,
    HeaderError,
    HeaderParser,
    ProtocolError,
    Reply,
    ReplyParser,
    encode_command,
    parse_env_block,
    parse_env_lines,
)
from tests.fakes import parse_args

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SMALL_HEADER = 512
SMALL_LINE = 256


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)] or [b""]


chunk_cuts = st.lists(st.integers(min_value=0, max_value=10_000), max_size=30)


# --------------------------------------------------------------------------- header parser


def feed_header(parser: HeaderParser, chunks: list[bytes]) -> object:
    env = None
    for chunk in chunks:
        try:
            env = parser.feed(chunk)
        except ProtocolError:
            return "error"
        if env is None:
            assert len(parser._buf) <= parser._max  # bounded while incomplete
    return env


@FUZZ
@given(data=st.binary(max_size=2048), cuts=chunk_cuts)
def test_header_parser_arbitrary_bytes(data: bytes, cuts: list[int]) -> None:
    parser = HeaderParser(max_bytes=SMALL_HEADER)
    feed_header(parser, split(data, cuts))


key = st.sampled_from(
    ["network", "network_script", "request", "channel", "callerid", "calleridname", "accountcode"]
)
value = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r\x00"), max_size=40
)


@st.composite
def env_blocks(draw: st.DrawFn) -> tuple[bytes, dict[str, str], tuple[str, ...]]:
    pairs = draw(st.dictionaries(key, value, max_size=7))
    pairs.setdefault("network", "yes")
    args = draw(st.lists(value, max_size=12))
    eol = draw(st.sampled_from([b"\n", b"\r\n"]))
    lines = [f"agi_{k}: {v}".encode() for k, v in pairs.items()]
    numbered = [f"agi_arg_{i}: {a}".encode() for i, a in enumerate(args, start=1)]
    order = draw(st.permutations(range(len(numbered))))
    lines += [numbered[i] for i in order]
    block = b"".join(ln + eol for ln in lines) + eol
    return block, pairs, tuple(args)


@FUZZ
@given(block=env_blocks(), tail=st.binary(max_size=64), cuts=chunk_cuts)
def test_header_parser_near_valid_blocks(block, tail: bytes, cuts: list[int]) -> None:
    data, pairs, args = block
    # known bug, pinned by test_protocol.test_env_crlf_block_then_blank_line_keeps_remainder
    assume(not (data.endswith(b"\r\n\r\n") and (tail.startswith(b"\n") or b"\n\n" in tail)))
    parser = HeaderParser()
    env = feed_header(parser, split(data + tail, cuts))
    assert env is not None and env != "error"
    for k, v in pairs.items():
        # a value's own trailing CR would be eaten by the CRLF tolerance; none is generated
        assert env.get(k) == v.removesuffix(" ") or env.get(k) == v
    assert env.args == args
    assert parser.remainder == tail


@FUZZ
@given(block=env_blocks(), junk=st.binary(min_size=1, max_size=8), at=st.integers(0, 10_000))
def test_header_parser_corrupted_blocks_only_raise_header_errors(block, junk, at) -> None:
    data, _, _ = block
    pos = at % (len(data) + 1)
    feed_header(HeaderParser(max_bytes=SMALL_HEADER), [data[:pos] + junk + data[pos:]])


# --------------------------------------------------------------------------- reply parser


@FUZZ
@given(data=st.binary(max_size=2048), cuts=chunk_cuts)
def test_reply_parser_arbitrary_bytes(data: bytes, cuts: list[int]) -> None:
    parser = ReplyParser(max_line=SMALL_LINE)
    for chunk in split(data, cuts):
        try:
            events = parser.feed(chunk)
        except ProtocolError:
            return
        assert all(isinstance(e, (Reply, HangupNotice)) for e in events)
        assert len(parser._buf) <= SMALL_LINE
        assert parser._usage is None or len(parser._usage) <= 1000
    try:
        parser.feed_eof()
    except ProtocolError:
        pass


results = st.one_of(
    st.just(""), st.integers(-2, 10**6).map(str), st.text("0123456789*#", min_size=1, max_size=20)
)
payload = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r"), max_size=60
)


@st.composite
def reply_lines(draw: st.DrawFn) -> tuple[bytes, tuple]:
    kind = draw(st.sampled_from(["200", "hangup", "error", "usage"]))
    if kind == "hangup":
        return b"HANGUP\n", ("hangup",)
    if kind == "error":
        code = draw(st.sampled_from([510, 511, 520]))
        text = draw(payload.filter(lambda t: not t.startswith("-")))
        line = f"{code} {text}".rstrip()
        if code == 520 and line.startswith("520-"):
            line = "520 x"
        return (line + "\n").encode(), ("reply", code, "", None, None, line, ())
    if kind == "usage":
        body = draw(st.lists(payload.filter(lambda t: not t.startswith("520 ")), max_size=5))
        data = "520-Invalid command syntax.  Proper usage follows:\n"
        data += "".join(f"{b}\n" for b in body) + "520 End of proper usage.\n"
        head = "Invalid command syntax.  Proper usage follows:"
        return data.encode(), ("reply", 520, "", None, None, head, tuple(body))
    result = draw(results)
    data_part = draw(st.none() | payload)
    endpos = draw(st.none() | st.integers(0, 10**7))
    line = f"200 result={result}"
    if data_part is not None:
        line += f" ({data_part})"
    if endpos is not None:
        line += f" endpos={endpos}"
    return (line + "\n").encode(), ("reply", 200, result, data_part, endpos, "", ())


def as_tuple(event: Reply | HangupNotice) -> tuple:
    if isinstance(event, HangupNotice):
        return ("hangup",)
    return ("reply", event.code, event.result, event.data, event.endpos, event.text, event.usage)


@FUZZ
@given(lines=st.lists(reply_lines(), max_size=12), cuts=chunk_cuts)
def test_reply_format_parse_round_trip(lines, cuts: list[int]) -> None:
    stream = b"".join(data for data, _ in lines)
    parser = ReplyParser()
    events: list[tuple] = []
    for chunk in split(stream, cuts):
        events += [as_tuple(e) for e in parser.feed(chunk)]
    assert events == [expected for _, expected in lines]
    parser.feed_eof()


@FUZZ
@given(lines=st.lists(reply_lines(), max_size=12), max_line=st.integers(8, 200))
def test_one_line_per_read_parses_as_the_general_path(lines, max_line: int) -> None:
    """A read holding exactly one line takes ReplyParser's fast path: the same events, the
    same errors (line limit, 520 blocks, HANGUP) as the same bytes fed as one chunk."""
    stream = b"".join(data for data, _ in lines)
    reads = [ln + b"\n" for ln in stream.split(b"\n")[:-1]]

    def run(chunks: list[bytes]) -> tuple[list[tuple], str | None]:
        parser, out = ReplyParser(max_line=max_line), []
        try:
            for chunk in chunks:
                out += [as_tuple(e) for e in parser.feed(chunk)]
        except ProtocolError as exc:
            return out, str(exc)
        return out, None

    (one_by_one, error), (whole, whole_error) = run(reads), run([stream])
    assert error == whole_error
    if error is None:  # (a feed that raises returns nothing of that read)
        assert one_by_one == whole == [expected for _, expected in lines]


# --------------------------------------------------------------------------- encoder


@FUZZ
@given(value=st.text(st.characters(blacklist_categories=("Cs",)), max_size=300))
def test_encode_command_never_emits_two_commands(value: str) -> None:
    try:
        data = encode_command("SET VARIABLE", "CONSENT_NOTE", value)
    except CommandEncodingError:
        assert any(c in value for c in "\r\n\x00") or len(value.encode()) > MAX_COMMAND_BYTES // 2
        return
    assert data.count(b"\n") == 1 and data.endswith(b"\n") and b"\r" not in data
    assert b"\x00" not in data
    assert parse_args(data[:-1]) == [b"SET", b"VARIABLE", b"CONSENT_NOTE", value.encode()]


# --------------------------------------------------------------------------- cost


def test_header_parser_search_resumes_where_it_stopped() -> None:
    """A header trickled byte by byte must cost linear work, not a rescan per byte.

    Deterministic (no timing): each feed may only search the new bytes plus the two a
    separator could straddle, which the parser records in ``_scanned``.
    """
    parser = HeaderParser(max_bytes=4096)
    searched_from: list[int] = []
    original = bytearray.find

    class Spy(bytearray):
        def find(self, sub, start=0, *args):  # type: ignore[no-untyped-def, override]
            searched_from.append(start)
            return original(self, sub, start, *args)

    parser._buf = Spy()
    with pytest.raises(ProtocolError):
        for _ in range(4097):
            parser.feed(b"x")
    # two separators searched per feed, each from at most 2 bytes before the new byte
    assert len(searched_from) >= 2 * 4000
    for i, start in enumerate(searched_from[::2]):
        assert start >= i - 2, (i, start)


_ENV_LINE_CHARS = st.sampled_from([*"agi_AZaz09:_ -\r\t\x00é?=&/.", "agi_", ": ", "::"])


@settings(max_examples=400, deadline=None)
@given(st.lists(st.lists(_ENV_LINE_CHARS, max_size=12).map("".join).flatmap(
    lambda text: st.sampled_from([text, "agi_" + text, "agi_k: " + text])), min_size=1,
    max_size=6))
def test_env_lines_parse_as_the_documented_grammar(lines: list[str]) -> None:
    """parse_env_lines and parse_env_block accept and split exactly as _ENV_LINE does
    (a block's lines losing one trailing CR, as HeaderParser always did)."""
    lines = ["agi_network: yes", *lines]

    def grammar(lines: list[str]) -> dict[str, str] | None:
        out: dict[str, str] = {}
        for line in lines:
            m = _ENV_LINE.fullmatch(line)
            if m is None:
                return None
            out[m.group(1)] = m.group(2)
        return out

    def agrees(parse: Any, given: Any, lines_seen: list[str]) -> None:
        want = grammar(lines_seen)
        if want is None:
            with pytest.raises(HeaderError):
                parse(given)
        else:
            assert dict(parse(given).values) == want

    agrees(parse_env_lines, lines, lines)
    # a block never holds an empty line (HeaderParser ends it at the first one)
    stripped = [line.removesuffix("\r") for line in lines]
    for block, lines_seen in (("\n".join(lines) + "\n\n", stripped),
                              ("\r\n".join(lines) + "\r\n\r\n", lines)):
        if "" not in stripped and "" not in lines_seen:
            agrees(parse_env_block, block, lines_seen)
