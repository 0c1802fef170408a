"""Table-driven tests of agi.wire.protocol: every reply shape, env block edge cases, injection."""

from __future__ import annotations

import pytest

from agi.wire.protocol import (
    MAX_COMMAND_BYTES,
    MAX_HEADER_BYTES,
    AGIDeadChannel,
    AGIHangup,
    AGIInvalidCommand,
    AGIUsageError,
    CommandEncodingError,
    HangupNotice,
    HeaderError,
    HeaderParser,
    ProtocolError,
    Reply,
    ReplyParser,
    encode_command,
    parse_reply_line,
    quote_arg,
)
from tests.fakes import parse_args, parse_command_line

# --------------------------------------------------------------------------- reply shapes

# line, code, result, data, endpos, timed_out   (every form real Asterisk sends)
REPLIES = [
    ("200 result=0", 200, "0", None, None, False),  # ANSWER, NOOP, EXEC, WAIT FOR DIGIT timeout
    ("200 result=1", 200, "1", None, None, False),  # SET VARIABLE, VERBOSE, aborted WAIT
    ("200 result=49", 200, "49", None, None, False),  # WAIT FOR DIGIT '1'
    ("200 result=35", 200, "35", None, None, False),  # WAIT FOR DIGIT '#'
    ("200 result=-1", 200, "-1", None, None, False),  # hangup / GET DATA failure
    ("200 result=-2", 200, "-2", None, None, False),  # EXEC of an unknown application
    ("200 result=49 endpos=13760", 200, "49", None, 13760, False),  # STREAM FILE interrupted
    ("200 result=0 endpos=3520", 200, "0", None, 3520, False),  # played to the end
    ("200 result=-1 endpos=0", 200, "-1", None, 0, False),  # missing file
    ("200 result=-1 endpos=12000", 200, "-1", None, 12000, False),  # hangup during playback
    ("200 result=1234", 200, "1234", None, None, False),  # GET DATA digits
    ("200 result=56", 200, "56", None, None, False),  # GET DATA '#'-terminated
    ("200 result=", 200, "", None, None, False),  # GET DATA: '#' alone
    ("200 result= (timeout)", 200, "", "timeout", None, True),  # GET DATA nothing keyed
    ("200 result=12 (timeout)", 200, "12", "timeout", None, True),  # partial then timeout
    ("200 result=1 ()", 200, "1", "", None, False),  # GET VARIABLE empty value
    ("200 result=1 (+447700900123)", 200, "1", "+447700900123", None, False),
    ('200 result=1 (Jane "JJ" Doe)', 200, "1", 'Jane "JJ" Doe', None, False),
    (
        '200 result=1 (hello world "quoted" back\\slash)',
        200,
        "1",
        'hello world "quoted" back\\slash',
        None,
        False,
    ),
    ("200 result=1 (a (b) c)", 200, "1", "a (b) c", None, False),  # up to the LAST ')'
    ("200 result=1 (x) y)", 200, "1", "x) y", None, False),
    ("200 result=1 (a endpos=3)", 200, "1", "a endpos=3", None, False),  # value, not endpos
    ("200 result=0 (timeout) endpos=8000", 200, "0", "timeout", 8000, True),  # RECORD FILE
    ("200 result=-1 (hangup) endpos=0", 200, "-1", "hangup", 0, False),  # RECORD FILE hangup
]


@pytest.mark.parametrize(("line", "code", "result", "data", "endpos", "timed_out"), REPLIES)
def test_reply_shapes(line, code, result, data, endpos, timed_out) -> None:
    reply = parse_reply_line(line)
    assert (reply.code, reply.result, reply.data, reply.endpos) == (code, result, data, endpos)
    assert reply.timed_out is timed_out
    assert reply.raise_for_status() is reply
    # the same line through the incremental parser, with and without CR
    for ending in (b"\n", b"\r\n"):
        (event,) = ReplyParser().feed(line.encode() + ending)
        assert event == reply


# line, code, error raised by raise_for_status
ERROR_REPLIES = [
    ("510 Invalid or unknown command", 510, AGIInvalidCommand),
    ("511 Command Not Permitted on a dead channel or intercept routine", 511, AGIDeadChannel),
    ("520 Invalid command syntax.  Proper usage not available.", 520, AGIUsageError),
]


@pytest.mark.parametrize(("line", "code", "error"), ERROR_REPLIES)
def test_error_replies(line, code, error) -> None:
    reply = parse_reply_line(line)
    assert reply.code == code and reply.text == line
    with pytest.raises(error):
        reply.raise_for_status()


def test_dead_channel_is_a_hangup() -> None:
    assert issubclass(AGIDeadChannel, AGIHangup)


def test_trying_is_parsed_not_raised() -> None:
    reply = parse_reply_line("100 result=0 Trying...")
    assert reply.code == 100
    with pytest.raises(ProtocolError):
        reply.raise_for_status()  # never a final reply


def test_usage_block() -> None:
    block = (
        b"520-Invalid command syntax.  Proper usage follows:\n"
        b"Returns <literal>0</literal> if <replaceable>variablename</replaceable> is not set.\n"
        b"Example return code: 200 result=1 (testvariable)\n"
        b"    <value>SUCCESS</value>\n"
        b"520 End of proper usage.\n"
    )
    parser = ReplyParser()
    events = [e for i in range(len(block)) for e in parser.feed(block[i : i + 1])]
    assert events == [
        Reply(
            code=520,
            text="Invalid command syntax.  Proper usage follows:",
            usage=(
                "Returns <literal>0</literal> if <replaceable>variablename</replaceable>"
                " is not set.",
                "Example return code: 200 result=1 (testvariable)",
                "    <value>SUCCESS</value>",
            ),
        )
    ]
    with pytest.raises(AGIUsageError) as info:
        events[0].raise_for_status()
    assert info.value.usage == events[0].usage


def test_hangup_anywhere_between_replies() -> None:
    data = b"200 result=-1 endpos=12000\nHANGUP\nHANGUP\n200 result=0\n"
    events = ReplyParser().feed(data)
    assert [type(e) for e in events] == [Reply, HangupNotice, HangupNotice, Reply]


def test_hangup_between_command_and_reply() -> None:
    """Transcript 30: "> NOOP", "< HANGUP", "< 200 result=0"."""
    parser = ReplyParser()
    assert parser.feed(b"HANG") == []
    assert parser.feed(b"UP\n200 res") == [HangupNotice()]
    assert parser.feed(b"ult=0\n") == [parse_reply_line("200 result=0")]


MALFORMED = [
    "200",
    "200 result",
    "200 result=0 endpos=abc",
    "200 result=1 (unterminated",
    "200 result=0 garbage",
    "HANGUP",  # a notice, never a reply line
    "20 result=0",
    "garbage",
    "",
]


@pytest.mark.parametrize("line", MALFORMED)
def test_malformed_reply_lines(line: str) -> None:
    with pytest.raises(ProtocolError):
        parse_reply_line(line)


def test_reply_line_too_long() -> None:
    parser = ReplyParser(max_line=100)
    with pytest.raises(ProtocolError):
        parser.feed(b"2" * 101)
    parser = ReplyParser(max_line=100)
    with pytest.raises(ProtocolError):
        parser.feed(b"200 result=1 (" + b"x" * 200 + b")\n")


def test_eof_inside_a_reply_or_block() -> None:
    parser = ReplyParser()
    parser.feed(b"200 resu")
    with pytest.raises(ProtocolError):
        parser.feed_eof()
    parser = ReplyParser()
    parser.feed(b"520-Invalid command syntax.  Proper usage follows:\nbody\n")
    with pytest.raises(ProtocolError):
        parser.feed_eof()
    parser = ReplyParser()
    parser.feed(b"200 result=0\n")
    parser.feed_eof()
    assert parser.eof


# --------------------------------------------------------------------------- env block

BASE = [
    b"agi_network: yes\n",
    b"agi_network_script: consent?purpose=marketing-calls&lang=cy\n",
    b"agi_request: agi://127.0.0.1:4573/consent?purpose=marketing-calls&lang=cy\n",
    b"agi_channel: PJSIP/sipp-00000000\n",
    b"agi_language: en\n",
    b"agi_uniqueid: 1796006865.62\n",
    b"agi_callerid: +447700900123\n",
    b'agi_calleridname: Jane "JJ" Doe\n',
    b"agi_accountcode: \n",
    b"agi_threadid: 140142575412928\n",
]


def parse_block(data: bytes, **kwargs) -> HeaderParser:
    parser = HeaderParser(**kwargs)
    assert parser.feed(data) is not None
    return parser


def test_env_values_and_script() -> None:
    env = parse_block(b"".join(BASE) + b"\n").env
    assert env is not None
    assert env.network_script == "consent?purpose=marketing-calls&lang=cy"
    assert env.script_path == "consent"
    assert env.params == {"purpose": "marketing-calls", "lang": "cy"}
    assert env.calleridname == 'Jane "JJ" Doe'  # raw, quotes unescaped
    assert env.get("accountcode") == ""  # "agi_accountcode: " keeps a trailing space
    assert env.callerid == "+447700900123" and env.uniqueid == "1796006865.62"
    assert env.args == ()


def test_env_without_network_script() -> None:
    """agi://host:port and agi://host:port/ send no agi_network_script line at all (24)."""
    lines = [ln for ln in BASE if not ln.startswith(b"agi_network_script")]
    env = parse_block(b"".join(lines) + b"\n").env
    assert env is not None
    assert env.network_script == "" and env.script_path == "" and env.params == {}


def test_env_args_in_numeric_order() -> None:
    args = [b"agi_arg_%d: a%d\n" % (i, i) for i in range(1, 12)]
    shuffled = [args[10], args[1], args[0], *args[2:10]]  # agi_arg_11 first
    env = parse_block(b"".join(BASE + shuffled) + b"\n").env
    assert env is not None
    assert env.args == tuple(f"a{i}" for i in range(1, 12))  # agi_arg_10 after agi_arg_9


def test_env_crlf_tolerated() -> None:
    data = b"".join(ln.replace(b"\n", b"\r\n") for ln in BASE) + b"\r\n"
    env = parse_block(data).env
    assert env is not None
    assert env.get("threadid") == "140142575412928"
    assert env.get("accountcode") == ""


def test_env_crlf_block_then_blank_line_keeps_remainder() -> None:
    data = b"".join(ln.replace(b"\n", b"\r\n") for ln in BASE) + b"\r\n"
    parser = parse_block(data + b"\nHANGUP\n")
    assert parser.remainder == b"\nHANGUP\n"


def test_env_remainder_keeps_early_hangup() -> None:
    parser = parse_block(b"".join(BASE) + b"\nHANGUP\n200 res")
    assert parser.remainder == b"HANGUP\n200 res"
    assert parser.feed(b"ult=0\n") is parser.env
    assert parser.remainder == b"HANGUP\n200 result=0\n"


def test_env_truncated_is_incomplete_not_an_env() -> None:
    data = b"".join(BASE)
    parser = HeaderParser()
    for i in range(len(data)):
        assert parser.feed(data[i : i + 1]) is None
    assert parser.env is None


def test_env_latin1_caller_name() -> None:
    data = b"".join(BASE[:7]) + b"agi_calleridname: Jos\xe9\n\n"
    env = parse_block(data).env
    assert env is not None and env.calleridname == "José"


BAD_HEADERS = [
    pytest.param(b"\n", id="empty"),
    pytest.param(b"\r\n", id="empty-crlf"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", id="http"),
    pytest.param(b"agi_network: yes\nnot a header\n\n", id="garbage-line"),
    pytest.param(b"agi_network: yes\nagi_request: a\x00b\n\n", id="nul"),
    pytest.param(b"agi_channel: x\n\n", id="no-network-no-request"),
    pytest.param(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\n\n", id="tls-hello"),
]


@pytest.mark.parametrize("data", BAD_HEADERS)
def test_bad_headers(data: bytes) -> None:
    with pytest.raises(HeaderError):
        HeaderParser().feed(data)


def test_oversize_header_without_end() -> None:
    parser = HeaderParser()
    line = b"agi_arg_1: " + b"x" * 1000 + b"\n"
    with pytest.raises(HeaderError):
        for _ in range(MAX_HEADER_BYTES // len(line) + 2):
            parser.feed(line)


def test_oversize_header_with_end() -> None:
    data = b"".join(BASE) + b"agi_arg_1: " + b"x" * 200 + b"\n\n"
    with pytest.raises(HeaderError):
        HeaderParser(max_bytes=128).feed(data)


def test_header_error_is_a_protocol_error() -> None:
    assert issubclass(HeaderError, ProtocolError)


# --------------------------------------------------------------------------- commands

PAYLOADS = [
    pytest.param('"', id="quote"),
    pytest.param("\\", id="backslash"),
    pytest.param('\\"', id="backslash-quote"),
    pytest.param('a"b\\c', id="mixed"),
    pytest.param('" ; EXEC System "rm -rf /', id="quote-escape-attempt"),
    pytest.param('"\\', id="quote-trailing-backslash"),
    pytest.param("abc\\", id="trailing-backslash"),
    pytest.param("", id="empty"),
    pytest.param('""', id="two-quotes"),
    pytest.param("  leading and trailing  ", id="blanks"),
    pytest.param("tab\there", id="tab"),
    pytest.param("\t", id="tab-only"),
    pytest.param("Jöhn Dœ ☎ 日本語", id="unicode"),
    pytest.param("${CALLERID(num)}", id="dialplan-expression"),
    pytest.param("\x0b\x0c\x7f\x1b[2J", id="other-control"),
    pytest.param("x" * 1800, id="long-but-allowed"),
]

INJECTIONS = [
    pytest.param("\r", id="cr"),
    pytest.param("\n", id="lf"),
    pytest.param("\x00", id="nul"),
    pytest.param("\r\nEXEC System rm -rf /", id="crlf-exec"),
    pytest.param("ok\nEXEC System rm -rf /\n", id="lf-exec"),
    pytest.param('x"\nEXEC System "rm', id="quote-lf-exec"),
    pytest.param("a\x00\nEXEC System rm", id="nul-lf"),
    pytest.param("x" * 3000, id="too-long"),
]


@pytest.mark.parametrize("value", PAYLOADS)
def test_encoded_argument_round_trips_through_res_agi_parse_args(value: str) -> None:
    data = encode_command("SET VARIABLE", "CONSENT_NOTE", value)
    assert data.endswith(b"\n") and data.count(b"\n") == 1  # exactly one command line
    assert len(data) <= MAX_COMMAND_BYTES
    assert parse_args(data[:-1]) == [b"SET", b"VARIABLE", b"CONSENT_NOTE", value.encode()]
    assert parse_command_line(data[:-1])[3] == value


@pytest.mark.parametrize("value", INJECTIONS)
def test_injection_payloads_are_refused(value: str) -> None:
    with pytest.raises(CommandEncodingError):
        encode_command("SET VARIABLE", "CONSENT_NOTE", value)


@pytest.mark.parametrize("value", ["\r", "\n", "\x00"])
def test_quote_arg_refuses_line_breaks_and_nul(value: str) -> None:
    with pytest.raises(CommandEncodingError):
        quote_arg(value)


def test_encode_command_examples() -> None:
    assert encode_command("ANSWER") == b"ANSWER\n"
    assert encode_command("WAIT FOR DIGIT", -1) == b"WAIT FOR DIGIT -1\n"
    assert encode_command("STREAM FILE", "consent-ivr/identify", "12") == (
        b'STREAM FILE "consent-ivr/identify" "12"\n'
    )
    assert encode_command("STREAM FILE", "beep", "") == b'STREAM FILE "beep" ""\n'
    assert encode_command("GET DATA", "beep", 5000, 4) == b'GET DATA "beep" 5000 4\n'


@pytest.mark.parametrize(
    "verb", ["", "noop", "NOOP\nEXEC", "NOOP ", " NOOP", "STREAM  FILE", "EXEC\tSystem", "NOOP1"]
)
def test_bad_verbs(verb: str) -> None:
    with pytest.raises(CommandEncodingError):
        encode_command(verb)


def test_bad_argument_types_and_counts() -> None:
    with pytest.raises(CommandEncodingError):
        encode_command("NOOP", True)  # type: ignore[arg-type]
    with pytest.raises(CommandEncodingError):
        encode_command("NOOP", *(["x"] * 200))


def test_encoded_words_match_res_agi_for_every_verb() -> None:
    """The fake splits what we send exactly into verb words + arguments."""
    data = encode_command("GET FULL VARIABLE", "${CALLERID(num)}")
    assert parse_command_line(data[:-1]) == ["GET", "FULL", "VARIABLE", "${CALLERID(num)}"]


# --------------------------------------------------------------------------- fake parse_args

# res_agi's own quirks, so the round-trip oracle above is itself trustworthy
PARSE_ARGS = [
    (
        b'SET VARIABLE MYVAR "hello world \\"quoted\\" back\\\\slash"',
        [b"SET", b"VARIABLE", b"MYVAR", b'hello world "quoted" back\\slash'],
    ),
    (b"SET VARIABLE V3 back\\\\slash", [b"SET", b"VARIABLE", b"V3", b"back\\slash"]),
    (b'SET VARIABLE V4 ""', [b"SET", b"VARIABLE", b"V4", b""]),
    (b"SET VARIABLE V2 two words", [b"SET", b"VARIABLE", b"V2", b"two", b"words"]),
    (b'ab"c d"e', [b"abc de"]),  # a quote inside a word only toggles
    (b"a\\ b", [b"a b"]),  # escaped blank
    (b"  \t NOOP \t ", [b"NOOP"]),
    (b"", []),
    (b"NOOP\r", [b"NOOP\r"]),  # CR is an ordinary byte (hence 510 for "NOOP\r\n")
    (b'"unterminated', [b"unterminated"]),
]


@pytest.mark.parametrize(("line", "words"), PARSE_ARGS)
def test_fake_parse_args(line: bytes, words: list[bytes]) -> None:
    assert parse_args(line) == words


def test_fake_parse_args_truncates_at_127_words() -> None:
    assert len(parse_args(b" ".join([b"w"] * 200))) == 127
