"""What res_agi.c (Asterisk 22.10.1) does with a command line before it runs it.

``parse_args`` splits a line by res_agi's quoting rules, ``find_command`` looks it up in its
command table (longest match, the words Asterisk knows), ``USAGE`` holds the usage text each
command's ``520`` block carries; ``ENV_ORDER`` is the order ``setup_env`` sends ``agi_*``
variables in. Pure functions and tables: :mod:`agi.testing.fakeasterisk` executes the commands.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final

__all__ = [
    "AGI_BUF_LEN",
    "DIGIT_TIMEOUT_MS",
    "DTMF",
    "ENV_ORDER",
    "FLOAT_RE",
    "FRAME",
    "INT_RE",
    "MAX_ARGS",
    "RATE",
    "RESPONSE_TIMEOUT_MS",
    "R_510",
    "R_511",
    "R_520_HEAD",
    "R_520_NODOCS",
    "R_520_TAIL",
    "USAGE",
    "Marker",
    "atoi",
    "decode",
    "encode",
    "find_command",
    "parse_args",
    "parse_command_line",
    "scan_int",
]


class Marker:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


#: Press-script item: the caller presses nothing (prompt plays to the end, waits time out).


#: res_agi.c: ``#define MAX_ARGS 128``; ``parse_args`` keeps at most MAX_ARGS - 1 words.
MAX_ARGS: Final = 128
#: res_agi.c reads a command with fgets() into ``char buf[AGI_BUF_LEN]`` (2048): 2047 bytes.
AGI_BUF_LEN: Final = 2048
#: pbx defaults used by GET OPTION (dtimeoutms) and GET DATA without a timeout.
DIGIT_TIMEOUT_MS: Final = 5000
RESPONSE_TIMEOUT_MS: Final = 10000
#: frames of 20 ms = 160 samples at 8 kHz; endpos moves in whole frames.
FRAME: Final = 160
RATE: Final = 8000
DTMF: Final = "0123456789*#ABCD"

ENV_ORDER: Final = (
    "network",
    "network_script",
    "request",
    "channel",
    "language",
    "type",
    "uniqueid",
    "version",
    "callerid",
    "calleridname",
    "callingpres",
    "callingani2",
    "callington",
    "callingtns",
    "dnid",
    "rdnis",
    "context",
    "extension",
    "priority",
    "enhanced",
    "accountcode",
    "threadid",
)


def parse_args(line: bytes) -> list[bytes]:
    """res_agi.c ``parse_args``: split a command line into words, byte for byte.

    Blanks and tabs separate words; ``"`` toggles quoting (a quote opening on a blank starts a
    new, possibly empty, word; elsewhere it just toggles); ``\\`` makes the next byte literal;
    every other byte (CR and NUL included) is an ordinary character. At most 127 words: once
    that many are open, further words are dropped byte by byte, as Asterisk does.

    >>> parse_args(b'SET VARIABLE V "a \\\\"b\\\\" c\\\\\\\\d" ""')
    [b'SET', b'VARIABLE', b'V', b'a "b" c\\\\d', b'']
    """
    args: list[bytearray] = []
    quoted = escaped = False
    whitespace = True
    for byte in line:
        if byte == 0x22 and not escaped:  # '"'
            quoted = not quoted
            if quoted and whitespace:
                args.append(bytearray())
                whitespace = False
            escaped = False
            continue
        if byte in (0x20, 0x09) and not quoted and not escaped:
            whitespace = True
            continue
        if byte == 0x5C and not escaped:  # '\\'
            escaped = True
            continue
        if whitespace:
            if len(args) >= MAX_ARGS - 1:
                continue  # "Too many arguments, truncating"
            args.append(bytearray())
            whitespace = False
        args[-1].append(byte)
        escaped = False
    return [bytes(a) for a in args]


def decode(raw: bytes) -> str:
    return raw.decode("utf-8", errors="surrogateescape")


def encode(text: str) -> bytes:
    return text.encode("utf-8", errors="surrogateescape")


def parse_command_line(line: bytes) -> list[str]:
    """:func:`parse_args` with each word decoded (UTF-8, undecodable bytes kept as escapes)."""
    return [decode(a) for a in parse_args(line)]


# name words, handler, runs on a dead channel (res_agi's command table, in its order)
_TABLE: Final[tuple[tuple[tuple[str, ...], str, bool], ...]] = (
    (("answer",), "answer", False),
    (("asyncagi", "break"), "asyncagi_break", True),
    (("channel", "status"), "channel_status", False),
    (("database", "del"), "database_del", True),
    (("database", "deltree"), "database_deltree", True),
    (("database", "get"), "database_get", True),
    (("database", "put"), "database_put", True),
    (("exec",), "exec", True),
    (("get", "data"), "get_data", False),
    (("get", "full", "variable"), "get_full_variable", True),
    (("get", "option"), "get_option", False),
    (("get", "variable"), "get_variable", True),
    (("hangup",), "hangup", False),
    (("noop",), "noop", True),
    (("receive", "char"), None, False),
    (("receive", "text"), None, False),
    (("record", "file"), None, False),
    (("say", "alpha"), None, False),
    (("say", "digits"), "say_digits", False),
    (("say", "number"), "say_number", False),
    (("say", "phonetic"), None, False),
    (("say", "date"), None, False),
    (("say", "time"), None, False),
    (("say", "datetime"), None, False),
    (("send", "image"), None, False),
    (("send", "text"), "send_text", False),
    (("set", "autohangup"), "set_autohangup", False),
    (("set", "callerid"), "set_callerid", False),
    (("set", "context"), "set_context", False),
    (("set", "extension"), "set_extension", False),
    (("set", "music"), "set_music", False),
    (("set", "priority"), "set_priority", False),
    (("set", "variable"), "set_variable", True),
    (("stream", "file"), "stream_file", False),
    (("control", "stream", "file"), None, False),
    (("tdd", "mode"), None, False),
    (("verbose",), "verbose", True),
    (("wait", "for", "digit"), "wait_for_digit", False),
    (("speech", "create"), None, False),
    (("speech", "set"), None, False),
    (("speech", "destroy"), None, True),
    (("speech", "load", "grammar"), None, False),
    (("speech", "unload", "grammar"), None, True),
    (("speech", "activate", "grammar"), None, False),
    (("speech", "deactivate", "grammar"), None, False),
    (("speech", "recognize"), None, False),
)  # type: ignore[assignment]


def find_command(words: Sequence[str]) -> tuple[tuple[str, ...], str | None, bool] | None:
    """res_agi ``find_command(argv, 0)``: the first entry whose words all match (any case)
    and that needs no more words than were given; extra words are arguments."""
    for entry in _TABLE:
        names = entry[0]
        if len(words) >= len(names) and all(
            w.lower() == n for w, n in zip(words, names, strict=False)
        ):
            return entry
    return None


#: 520 usage bodies, one string per line Asterisk 22.10.1 sends. The first eight are copied
#: byte for byte from the transcripts (09, 11, 15, 17, 18); the rest are the <para>s of
#: res_agi.c's XML docs joined one per line the same way (not observed on the wire).
USAGE: Final[dict[str, tuple[str, ...]]] = {
    "stream file": (
        "Send the given file, allowing playback to be interrupted by the given digits, if any. "
        "Returns <literal>0</literal> if playback completes without a digit being pressed, or "
        "the ASCII numerical value of the digit if one was pressed, or <literal>-1</literal> on "
        "error or if the channel was disconnected. If musiconhold is playing before calling "
        "stream file it will be automatically stopped and will not be restarted after "
        "completion.",
        "It sets the following channel variables upon completion:",
        "<variable>PLAYBACKSTATUS</variable>: The status of the playback attempt as a text string.",
        "    <value>SUCCESS</value>",
        "    <value>FAILED</value>",
    ),
    "get data": (
        "Stream the given <replaceable>file</replaceable>, and receive DTMF data.",
        "Returns the digits received from the channel at the other end.",
    ),
    "wait for digit": (
        "Waits up to <replaceable>timeout</replaceable> milliseconds for channel to receive a "
        "DTMF digit. Returns <literal>-1</literal> on channel failure, <literal>0</literal> if "
        "no digit is received in the timeout, or the numerical value of the ascii of the digit "
        "if one is received. Use <literal>-1</literal> for the <replaceable>timeout</replaceable>"
        " value if you desire the call to block indefinitely.",
    ),
    "say digits": (
        "Say a given digit string, returning early if any of the given DTMF digits are received "
        "on the channel. Returns <literal>0</literal> if playback completes without a digit "
        "being pressed, or the ASCII numerical value of the digit if one was pressed or "
        "<literal>-1</literal> on error/hangup.",
    ),
    "set variable": ("Sets a variable to the current channel.",),
    "get variable": (
        "Returns <literal>0</literal> if <replaceable>variablename</replaceable> is not set. "
        "Returns <literal>1</literal> if <replaceable>variablename</replaceable> is set and "
        "returns the variable in parentheses.",
        "Example return code: 200 result=1 (testvariable)",
    ),
    "exec": (
        "Executes <replaceable>application</replaceable> with given "
        "<replaceable>options</replaceable>.",
        "Returns whatever the <replaceable>application</replaceable> returns, or "
        "<literal>-2</literal> on failure to find <replaceable>application</replaceable>.",
        "<note>NOTE:</note> exec does not evaluate dialplan functions and variables unless it "
        "is explicitly enabled by setting the <variable>AGIEXECFULL</variable> variable to "
        "<literal>yes</literal>.",
    ),
    "verbose": (
        "Sends <replaceable>message</replaceable> to the console via verbose message system. "
        "<replaceable>level</replaceable> is the verbose level (1-4). Always returns "
        "<literal>1</literal>",
    ),
    # --- from res_agi.c XML docs, not observed on the wire
    "channel status": (
        "Returns the status of the specified <replaceable>channelname</replaceable>. If no "
        "channel name is given then returns the status of the current channel.",
        "Return values:",
    ),
    "database del": (
        "Deletes an entry in the Asterisk database for a given <replaceable>family</replaceable>"
        " and <replaceable>key</replaceable>.",
        "Returns <literal>1</literal> if successful, <literal>0</literal> otherwise.",
    ),
    "database deltree": (
        "Deletes a <replaceable>family</replaceable> or specific "
        "<replaceable>keytree</replaceable> within a <replaceable>family</replaceable> in the "
        "Asterisk database.",
        "Returns <literal>1</literal> if successful, <literal>0</literal> otherwise.",
    ),
    "database get": (
        "Retrieves an entry in the Asterisk database for a given "
        "<replaceable>family</replaceable> and <replaceable>key</replaceable>.",
        "Returns <literal>0</literal> if <replaceable>key</replaceable> is not set. Returns "
        "<literal>1</literal> if <replaceable>key</replaceable> is set and returns the variable "
        "in parenthesis.",
        "Example return code: 200 result=1 (testvariable)",
    ),
    "database put": (
        "Adds or updates an entry in the Asterisk database for a given "
        "<replaceable>family</replaceable>, <replaceable>key</replaceable>, and "
        "<replaceable>value</replaceable>.",
        "Returns <literal>1</literal> if successful, <literal>0</literal> otherwise.",
    ),
    "get full variable": (
        "Returns <literal>0</literal> if <replaceable>variablename</replaceable> is not set or "
        "channel does not exist. Returns <literal>1</literal> if "
        "<replaceable>variablename</replaceable> is set and returns the variable in parenthesis."
        " Understands complex variable names and builtin variables, unlike GET VARIABLE.",
        "Example return code: 200 result=1 (testvariable)",
    ),
    "get option": ("Behaves similar to STREAM FILE but used with a timeout option.",),
    "hangup": (
        "Hangs up the specified channel. If no channel name is given, hangs up the current channel",
    ),
    "say number": (
        "Say a given number, returning early if any of the given DTMF digits are received on "
        "the channel.  Returns <literal>0</literal> if playback completes without a digit being "
        "pressed, or the ASCII numerical value of the digit if one was pressed or "
        "<literal>-1</literal> on error/hangup.",
    ),
    "send text": (
        "Sends the given text on a channel. Most channels do not support the transmission of "
        "text. Returns <literal>0</literal> if text is sent, or if the channel does not support "
        "text transmission. Returns <literal>-1</literal> only on error/hangup.",
    ),
    "set autohangup": (
        "Cause the channel to automatically hangup at <replaceable>time</replaceable> seconds "
        "in the future. Of course it can be hungup before then as well. Setting to "
        "<literal>0</literal> will cause the autohangup feature to be disabled on this channel.",
    ),
    "set callerid": ("Changes the callerid of the current channel.",),
    "set context": ("Sets the context for continuation upon exiting the application.",),
    "set extension": ("Changes the extension for continuation upon exiting the application.",),
    "set music": (
        "Enables/Disables the music on hold generator. If <replaceable>class</replaceable> is "
        "not specified, then the <literal>default</literal> music on hold class will be used. "
        "This generator will be stopped automatically when playing a file.",
        "Always returns <literal>0</literal>.",
    ),
    "set priority": (
        "Changes the priority for continuation upon exiting the application. The priority must "
        "be a valid priority or label.",
    ),
}

R_510: Final = b"510 Invalid or unknown command\n"
R_511: Final = b"511 Command Not Permitted on a dead channel or intercept routine\n"
R_520_HEAD: Final = b"520-Invalid command syntax.  Proper usage follows:\n"
R_520_TAIL: Final = b"520 End of proper usage.\n"
R_520_NODOCS: Final = b"520 Invalid command syntax.  Proper usage not available.\n"

INT_RE = re.compile(r"\s*([+-]?\d+)")
FLOAT_RE = re.compile(r"\s*([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)")


def scan_int(text: str) -> int | None:
    """C ``sscanf("%30d")``: leading blanks, optional sign, digits; None when no number."""
    match = INT_RE.match(text)
    return int(match.group(1)[:31]) if match else None


def atoi(text: str) -> int:
    value = scan_int(text)
    return 0 if value is None else value


