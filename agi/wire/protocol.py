"""The FastAGI wire format, without any IO (sans-IO, in the manner of h11).

Bytes go in, typed events come out; commands go in, bytes come out. Nothing here
touches a socket, so every rule is testable by feeding bytes, and the same code
serves the real server, the fake Asterisk in ``tests/`` and the benchmarks.

What real Asterisk 22 sends (all recorded in ``shared/asterisk-agi-transcripts``):

Environment block, one ``key: value`` line each, ``\\n`` only, ended by an empty line::

    agi_network: yes
    agi_network_script: consent?purpose=marketing-calls
    agi_request: agi://127.0.0.1:4573/consent?purpose=marketing-calls
    agi_callerid: +447700900123
    agi_calleridname: Jane "JJ" Doe          (raw: quotes are not escaped)
    agi_accountcode:                         (empty value keeps ": ")
    agi_arg_1: arg1
    <empty line>

``agi_network_script`` is absent when the URL has no path. Replies, one per command:

    ``200 result=0``                         ANSWER, NOOP, EXEC ...
    ``200 result=49 endpos=13760``           STREAM FILE interrupted by '1' (ASCII code)
    ``200 result=0 endpos=3520``             STREAM FILE played to the end
    ``200 result=-1 endpos=0``               STREAM FILE of a missing file
    ``200 result=1234``                      GET DATA: the digits themselves ('#' stripped)
    ``200 result= (timeout)``                GET DATA: nothing keyed
    ``200 result=12 (timeout)``              GET DATA: partial digits, then timeout
    ``200 result=1 (hello "x" back\\slash)``  GET VARIABLE: raw value, up to the LAST ')'
    ``200 result=0``                         GET VARIABLE of an unset variable (no parens)
    ``200 result=-2``                        EXEC of an unknown application
    ``100 result=0 Trying...``               intermediate; the real reply follows
    ``510 Invalid or unknown command``
    ``511 Command Not Permitted on a dead channel or intercept routine``
    ``520-Invalid command syntax.  Proper usage follows:``
    ``<documentation lines, no prefix>``
    ``520 End of proper usage.``
    ``520 Invalid command syntax.  Proper usage not available.``   (no XML docs)

and, at any moment, the unsolicited line ``HANGUP``: the channel hung up. It is never a
reply: it can come while idle, right after a reply, or between a command and its reply.

Asterisk parses command lines like a shell-lite: words split on blanks, ``"`` groups,
``\\`` escapes the next character. :func:`encode_command` quotes every string argument,
escapes ``\\`` and ``"``, and refuses CR, LF and NUL outright, so a caller-controlled
value can never end a command or start another.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import parse_qsl

__all__ = [
    "MAX_COMMAND_BYTES",
    "MAX_HEADER_BYTES",
    "MAX_LINE_BYTES",
    "AGIAppError",
    "AGIDeadChannel",
    "AGIEnv",
    "AGIError",
    "AGIHangup",
    "AGIInvalidCommand",
    "AGIUsageError",
    "CommandEncodingError",
    "HangupNotice",
    "HeaderError",
    "HeaderParser",
    "ProtocolError",
    "Reply",
    "ReplyParser",
    "encode_command",
    "parse_env_lines",
    "parse_reply_line",
    "quote_arg",
]

#: Largest environment block accepted (Asterisk's is ~1 KiB; 64 KiB leaves room for args).
MAX_HEADER_BYTES: Final = 64 * 1024
#: Longest reply line accepted. 520 documentation lines run to ~600 bytes.
MAX_LINE_BYTES: Final = 16 * 1024
#: res_agi reads commands into a 2048-byte buffer (AGI_BUF_LEN); longer ones are cut.
MAX_COMMAND_BYTES: Final = 2047
#: res_agi splits at most MAX_ARGS (128) words per command.
MAX_ARGS: Final = 127


# --------------------------------------------------------------------------- errors


class AGIError(Exception):
    """Base of every AGI failure."""


class ProtocolError(AGIError):
    """The peer sent bytes that are not FastAGI (garbage, oversize, truncated)."""


class HeaderError(ProtocolError):
    """The ``agi_*`` environment block is malformed, too large or truncated."""


class CommandEncodingError(AGIError, ValueError):
    """A command argument cannot be sent safely (CR, LF, NUL, or too long)."""


class AGIHangup(AGIError):
    """The channel hung up (``HANGUP`` seen, ``result=-1`` on hangup, or EOF)."""


class AGIDeadChannel(AGIHangup):
    """``511``: the command is not permitted on a dead channel."""


class AGIInvalidCommand(AGIError):
    """``510``: Asterisk does not know the command."""


class AGIUsageError(AGIError):
    """``520``: wrong arguments; carries the usage text Asterisk sent."""

    def __init__(self, message: str, usage: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.usage = usage


class AGIAppError(AGIError):
    """The command ran and failed (``result=-1`` without hangup, ``EXEC`` ``-2``)."""


# --------------------------------------------------------------------------- env block


@dataclass(frozen=True, slots=True)
class AGIEnv:
    """The ``agi_*`` variables Asterisk sends when a FastAGI session starts."""

    values: Mapping[str, str]
    args: tuple[str, ...] = ()

    def get(self, key: str, default: str = "") -> str:
        """Value of ``agi_<key>`` (``key`` without the prefix), or ``default``."""
        return self.values.get(key, default)

    @property
    def network_script(self) -> str:
        """Raw ``agi_network_script`` (path + query string), ``""`` when absent."""
        return self.values.get("network_script", "")

    @property
    def script_path(self) -> str:
        """The route: the path of ``agi_network_script`` without query or slashes."""
        return self.network_script.split("?", 1)[0].strip("/")

    @property
    def params(self) -> dict[str, str]:
        """Query parameters of ``agi_network_script`` (first value wins)."""
        return dict(_query_params(self.network_script.partition("?")[2]))

    @property
    def channel_name(self) -> str:
        """Asterisk's name of the channel (``agi_channel``, e.g. ``PJSIP/6001-00000007``)."""
        return self.get("channel")

    @property
    def uniqueid(self) -> str:
        return self.get("uniqueid")

    @property
    def callerid(self) -> str:
        return self.get("callerid")

    @property
    def calleridname(self) -> str:
        return self.get("calleridname")

    @property
    def language(self) -> str:
        return self.get("language", "en") or "en"


_ENV_LINE = re.compile(r"agi_([A-Za-z0-9_]+): ?(.*)")
#: the same grammar over a whole block, one line per match
_ENV_BLOCK = re.compile(r"^agi_([A-Za-z0-9_]+): ?(.*)$", re.MULTILINE)


def parse_env_lines(lines: Iterable[str]) -> AGIEnv:
    """Build an :class:`AGIEnv` from the block's lines (without the final empty line).

    >>> env = parse_env_lines(["agi_network: yes",
    ...                        "agi_network_script: consent?purpose=x&lang=en",
    ...                        "agi_accountcode: ", "agi_arg_2: b", "agi_arg_1: a"])
    >>> env.script_path, env.params, env.args, env.get("accountcode")
    ('consent', {'purpose': 'x', 'lang': 'en'}, ('a', 'b'), '')
    """
    pairs: list[tuple[str, str]] = []
    for line in lines:
        match = _ENV_LINE.fullmatch(line)
        if match is None:
            raise HeaderError(f"not an agi_* line: {line[:80]!r}")
        pairs.append((match.group(1), match.group(2)))
    return _env_from_pairs(pairs)


@functools.lru_cache(maxsize=256)
def _query_params(query: str) -> tuple[tuple[str, str], ...]:
    """A query string's parameters, first value of each key; memoised, because a
    dialplan sends the same few scripts on every call (parse_qsl: ~14,000 instructions)."""
    out: dict[str, str] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        out.setdefault(key, value)
    return tuple(out.items())


def parse_env_block(text: str) -> AGIEnv:
    """:func:`parse_env_lines` of a whole block (lines end in LF or CRLF), in one pass.

    One ``findall`` over the block instead of a match per line; every line must be one
    of the matches, so a block with any other line is refused exactly as line by line.
    """
    text = text.replace("\r\n", "\n").rstrip("\n")
    pairs = _ENV_BLOCK.findall(text)
    if len(pairs) != text.count("\n") + 1:
        return parse_env_lines(text.split("\n"))  # names the offending line
    return _env_from_pairs(pairs)


def _env_from_pairs(pairs: list[tuple[str, str]]) -> AGIEnv:
    """The environment from its (key without ``agi_``, value) pairs, in block order."""
    values = dict(pairs)  # a repeated key: the last one wins
    if "request" not in values and "network" not in values:
        raise HeaderError("environment block has neither agi_network nor agi_request")
    numbered = {int(key[4:]): value for key, value in pairs
                if key.startswith("arg_") and key[4:].isdigit()}
    return AGIEnv(values=values, args=tuple(numbered[i] for i in sorted(numbered)))


class HeaderParser:
    """Incremental parser of the environment block; bounded in size.

    Feed bytes as they arrive; :meth:`feed` returns the :class:`AGIEnv` once the empty
    line is seen. Bytes after the block (an early ``HANGUP``) are kept in
    :attr:`remainder` for the reply parser.
    """

    def __init__(self, max_bytes: int = MAX_HEADER_BYTES) -> None:
        self._buf = bytearray()
        self._max = max_bytes
        self._scanned = 0  # bytes already searched for the end: keeps feeding linear
        self.remainder = b""
        self.env: AGIEnv | None = None

    def feed(self, data: bytes) -> AGIEnv | None:
        if self.env is not None:
            self.remainder += data
            return self.env
        self._buf += data
        end = self._find_end()
        if end < 0:
            if len(self._buf) > self._max:
                raise HeaderError(f"environment block larger than {self._max} bytes")
            return None
        block, rest = bytes(self._buf[:end]), bytes(self._buf[end:])
        self._buf.clear()
        if len(block) > self._max:
            raise HeaderError(f"environment block larger than {self._max} bytes")
        try:
            text = block.decode("utf-8")
        except UnicodeDecodeError:
            text = block.decode("latin-1")  # caller-id names are not always UTF-8
        if "\x00" in text:
            raise HeaderError("NUL byte in environment block")
        self.env = parse_env_block(text)
        self.remainder = rest
        return self.env

    def _find_end(self) -> int:
        """Index just past the terminating empty line (the first one), or -1.

        The search resumes where the previous one stopped (less the 2 bytes a
        separator could straddle), so a header fed byte by byte costs linear time.
        """
        if self._buf.startswith(b"\n") or self._buf.startswith(b"\r\n"):
            raise HeaderError("empty environment block")
        start = max(self._scanned - 2, 0)
        ends = [
            pos + len(sep)
            for sep in (b"\n\n", b"\n\r\n")
            if (pos := self._buf.find(sep, start)) >= 0
        ]
        self._scanned = len(self._buf)
        return min(ends) if ends else -1


# --------------------------------------------------------------------------- commands


def quote_arg(value: str | int) -> str:
    """Quote one argument so res_agi's ``parse_args`` yields exactly ``value``.

    >>> quote_arg('hello "x" \\\\ y')
    '"hello \\\\"x\\\\" \\\\\\\\ y"'
    >>> quote_arg(5000)
    '5000'
    """
    if isinstance(value, bool):
        raise CommandEncodingError("booleans are not AGI arguments")
    if isinstance(value, int):
        return str(value)
    if any(ch in value for ch in "\r\n\x00"):
        raise CommandEncodingError("CR, LF and NUL cannot be sent in an AGI argument")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


_VERB = re.compile(r"[A-Z]+(?: [A-Z]+)*")


def encode_command(verb: str, *args: str | int) -> bytes:
    """Encode ``VERB arg...`` as one line; every string argument is quoted.

    >>> encode_command("STREAM FILE", "consent-ivr/identify", "12")
    b'STREAM FILE "consent-ivr/identify" "12"\\n'
    >>> encode_command("WAIT FOR DIGIT", 5000)
    b'WAIT FOR DIGIT 5000\\n'
    """
    return _encode_cached(verb, *args)


# A call sends the same few commands as every other call (the same prompts, keys and
# variables), so encodings are memoised; bounded, and typed so True never passes for 1.
@functools.lru_cache(maxsize=1024, typed=True)
def _encode_cached(verb: str, *args: str | int) -> bytes:
    if not _VERB.fullmatch(verb):
        raise CommandEncodingError(f"not an AGI verb: {verb!r}")
    if len(verb.split()) + len(args) > MAX_ARGS:
        raise CommandEncodingError("too many arguments")
    line = " ".join([verb, *(quote_arg(a) for a in args)])
    data = line.encode("utf-8") + b"\n"
    if len(data) > MAX_COMMAND_BYTES:
        raise CommandEncodingError(f"command longer than {MAX_COMMAND_BYTES} bytes")
    return data


# --------------------------------------------------------------------------- replies


@dataclass(frozen=True, slots=True)
class Reply:
    """One complete reply to one command."""

    code: int
    result: str = ""
    data: str | None = None
    endpos: int | None = None
    text: str = ""
    usage: tuple[str, ...] = field(default=())

    @property
    def result_int(self) -> int:
        """``result`` as an int; raises :class:`ProtocolError` when it is not one."""
        try:
            return int(self.result)
        except ValueError:
            raise ProtocolError(f"result is not a number: {self.result!r}") from None

    @property
    def timed_out(self) -> bool:
        """GET DATA's ``(timeout)`` marker."""
        return self.data == "timeout"

    def raise_for_status(self) -> Reply:
        """Raise the typed error for 510, 511 and 520; return self for 200."""
        if self.code == 200:
            return self
        if self.code == 510:
            raise AGIInvalidCommand(self.text or "510 Invalid or unknown command")
        if self.code == 511:
            raise AGIDeadChannel(self.text or "511 Command Not Permitted on a dead channel")
        if self.code == 520:
            raise AGIUsageError(self.text or "520 Invalid command syntax", self.usage)
        raise ProtocolError(f"unexpected reply code {self.code}")


@dataclass(frozen=True, slots=True)
class HangupNotice:
    """The unsolicited ``HANGUP`` line."""


_RESULT = re.compile(r"200 result=(\S*)(?: (.*))?")
_ENDPOS = re.compile(r"(.*?) ?endpos=(-?\d+)")


def parse_reply_line(line: str) -> Reply:
    """Parse one single-line reply (not ``HANGUP``, not a ``520-`` block).

    >>> parse_reply_line("200 result=49 endpos=13760")
    Reply(code=200, result='49', data=None, endpos=13760, text='', usage=())
    >>> parse_reply_line("200 result= (timeout)")
    Reply(code=200, result='', data='timeout', endpos=None, text='', usage=())
    >>> parse_reply_line("200 result=1 (a (b) c)").data
    'a (b) c'
    >>> parse_reply_line("511 Command Not Permitted on a dead channel or intercept routine").code
    511
    """
    if line.startswith("200 "):
        match = _RESULT.fullmatch(line)
        if match is None:
            raise ProtocolError(f"malformed 200 reply: {line[:120]!r}")
        result, rest = match.group(1), match.group(2) or ""
        endpos: int | None = None
        data: str | None = None
        if rest and not rest.endswith(")"):
            ep = _ENDPOS.fullmatch(rest)
            if ep is None:
                raise ProtocolError(f"malformed 200 reply: {line[:120]!r}")
            rest, endpos = ep.group(1), int(ep.group(2))
        if rest:
            if not (rest.startswith("(") and rest.endswith(")")):
                raise ProtocolError(f"malformed 200 reply: {line[:120]!r}")
            data = rest[1:-1]
        return Reply(code=200, result=result, data=data, endpos=endpos)
    head = line.partition(" ")[0]
    if len(head) == 3 and head.isdigit() and head != "200":
        return Reply(code=int(head), text=line)
    raise ProtocolError(f"not an AGI reply: {line[:120]!r}")


#: Replies repeat too (``200 result=1``, ``200 result=0 endpos=N`` per prompt); a
#: :class:`Reply` is immutable, so short lines are parsed once. Long lines (variable
#: values) are not kept: the cache stays small whatever the peer sends.
_parse_short_reply = functools.lru_cache(maxsize=1024)(parse_reply_line)
_SHORT_REPLY: Final = 64


class ReplyParser:
    """Incremental reply parser: bytes in, :class:`Reply` / :class:`HangupNotice` out.

    Handles replies split over several reads, several replies in one read, ``HANGUP``
    anywhere between replies, the multi-line ``520-`` block, and ``100 Trying``
    intermediates (returned so the caller can keep waiting). Lines are bounded by
    ``max_line`` bytes; the unfinished tail is bounded too, so memory stays flat
    whatever the peer sends.
    """

    def __init__(self, max_line: int = MAX_LINE_BYTES) -> None:
        self._buf = bytearray()
        self._max = max_line
        self._usage: list[str] | None = None
        self._usage_head = ""
        self.eof = False

    def feed(self, data: bytes) -> list[Reply | HangupNotice]:
        """Add bytes; return every complete event they finish, in order."""
        if (data and not self._buf and self._usage is None and data.find(b"\n") == len(data) - 1
                and len(data) <= self._max):
            # the common read: one whole line (Asterisk writes a reply in one go), parsed
            # without the buffer copy and the generator of the general path
            event = self._line(data[:-1].decode("utf-8", errors="replace").removesuffix("\r"))
            return [] if event is None else [event]
        self._buf += data
        return list(self._drain())

    def feed_eof(self) -> None:
        """The peer closed. A partial line or an open 520 block is a protocol error."""
        self.eof = True
        if self._buf or self._usage is not None:
            raise ProtocolError("connection closed in the middle of a reply")

    def _drain(self) -> Iterator[Reply | HangupNotice]:
        while True:
            pos = self._buf.find(b"\n")
            if pos < 0:
                if len(self._buf) > self._max:
                    raise ProtocolError(f"reply line longer than {self._max} bytes")
                return
            if pos > self._max:
                raise ProtocolError(f"reply line longer than {self._max} bytes")
            raw = bytes(self._buf[:pos])
            del self._buf[: pos + 1]
            line = raw.decode("utf-8", errors="replace").removesuffix("\r")
            event = self._line(line)
            if event is not None:
                yield event

    def _line(self, line: str) -> Reply | HangupNotice | None:
        if self._usage is not None:
            if line.startswith("520 "):
                usage = tuple(self._usage)
                self._usage = None
                return Reply(code=520, text=self._usage_head, usage=usage)
            if len(self._usage) >= 1000:
                raise ProtocolError("520 usage block longer than 1000 lines")
            self._usage.append(line)
            return None
        if line == "HANGUP":
            return HangupNotice()
        if line.startswith("520-"):
            self._usage = []
            self._usage_head = line[4:]
            return None
        if len(line) <= _SHORT_REPLY:
            return _parse_short_reply(line)
        return parse_reply_line(line)
