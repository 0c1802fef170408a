"""Parser for the recorded Asterisk 22.10.1 FastAGI transcripts (``tests/conformance/transcripts``).

File format (see ``00-README.txt`` there): ``< `` a line Asterisk sent, ``> `` a line the
FastAGI server sent, each ending with the two characters ``\\n`` that stand for the 0x0A byte
(nothing else is escaped: a backslash or quote inside a line is the real byte). Lines starting
with ``#`` are annotations: the header (dialplan, the ``[sender]`` DTMF plan, the commands the
server sent, the resulting AGISTATUS), ``# [+t]`` timings, socket events (``server half-closes``,
``server closes socket (full close)``, ``EOF from Asterisk``, ``write error``) and Asterisk log
lines. A file can hold several transcripts (24: extensions 121 and 122).

No pytest here: the benchmarks and the fake's own tools can use it too.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "TRANSCRIPT_DIR",
    "Item",
    "Transcript",
    "load_all",
    "load_file",
    "parse_file",
    "sender_timeline",
]

#: The in-repo copy (CI does not always have ``../shared`` beside the clone).
TRANSCRIPT_DIR = Path(__file__).resolve().parent / "conformance" / "transcripts"

_SECTION = re.compile(rb"^# -{8,} transcript \(extension (?P<ext>[^)]*)\) -{8,}$")
_LOGS = re.compile(rb"^# ---- selected Asterisk log lines")
_TIME = re.compile(rb"^# \[\+(?P<t>\d+(?:\.\d+)?)s\](?: (?P<rest>.*))?$")
_DIALPLAN = re.compile(r"^# Dialplan \((?P<what>[^)]*)\)(?: for extension (?P<ext>\S+?))?:$")

#: annotation text -> socket event name
_EVENTS: tuple[tuple[str, str], ...] = (
    ("server half-closes", "half_close"),
    ("server closes socket (full close)", "full_close"),
    ("EOF from Asterisk", "eof"),
    ("write error", "write_error"),
    ("no line from Asterisk within", "reply_timeout"),
    ("(reader stopped", "reader_stopped"),
)


@dataclass(frozen=True, slots=True)
class Item:
    """One step of a transcript: a line (``<``/``>``) or a socket event (``event``)."""

    kind: str  # "<", ">" or "event"
    data: bytes  # the line's bytes including the final b"\n"; for events, the event name
    t: float | None  # the latest ``# [+t]`` seen at or before this step (seconds since accept)
    text: str = ""  # for events: the full annotation


@dataclass(slots=True)
class Transcript:
    """One recorded FastAGI session."""

    file: str
    extension: str
    case: str = ""
    env_lines: list[bytes] = field(default_factory=list)  # incl. b"\n", without the blank line
    items: list[Item] = field(default_factory=list)  # everything after the env block
    dialplan: list[str] = field(default_factory=list)
    originate: str = ""
    sender: list[str] = field(default_factory=list)  # dialplan apps of the [sender] context
    notes: list[str] = field(default_factory=list)
    commands: list[str] | None = None  # "Commands sent by the FastAGI server", None if absent
    agistatus: str | None = None
    log_lines: list[str] = field(default_factory=list)
    connected: bool = True

    @property
    def name(self) -> str:
        stem = self.file.removesuffix(".txt")
        return stem if self.file_transcript_count == 1 else f"{stem}[{self.extension}]"

    file_transcript_count: int = 1

    @property
    def env(self) -> dict[str, str]:
        """``agi_*`` values without the prefix (decoded UTF-8), in block order."""
        out: dict[str, str] = {}
        for raw in self.env_lines:
            key, _, value = raw.decode("utf-8").removesuffix("\n").partition(": ")
            out[key.removeprefix("agi_")] = value
        return out

    @property
    def env_block(self) -> bytes:
        """The exact env block bytes, terminating blank line included."""
        return b"".join(self.env_lines) + b"\n" if self.connected else b""

    @property
    def exchange(self) -> list[tuple[str, bytes]]:
        """``[(direction, line bytes)]`` after the env block, in recorded order."""
        return [(i.kind, i.data) for i in self.items if i.kind in "<>"]

    @property
    def events(self) -> list[tuple[int, str]]:
        """Socket events as ``(number of exchange lines before it, name)``."""
        out: list[tuple[int, str]] = []
        count = 0
        for item in self.items:
            if item.kind == "event":
                out.append((count, item.data.decode()))
            else:
                count += 1
        return out

    def event_names(self) -> list[str]:
        return [name for _, name in self.events]

    def sent_by_asterisk(self) -> bytes:
        """Every byte Asterisk sent, in order: env block then each ``<`` line."""
        return self.env_block + b"".join(d for k, d in self.exchange if k == "<")

    def sent_by_server(self) -> bytes:
        return b"".join(d for k, d in self.exchange if k == ">")

    def replies(self) -> list[bytes]:
        return [d for k, d in self.exchange if k == "<"]

    def server_lines(self) -> list[bytes]:
        return [d for k, d in self.exchange if k == ">"]


def _line_bytes(raw: bytes, where: str) -> bytes:
    if not raw.endswith(b"\\n"):
        raise ValueError(f"{where}: protocol line does not end with a literal \\n: {raw!r}")
    return raw[2:-2] + b"\n"


def _event_name(text: str) -> str | None:
    for needle, name in _EVENTS:
        if needle in text:
            return name
    return None


@dataclass(slots=True)
class _Header:
    ext: str | None
    dialplan: list[str] = field(default_factory=list)
    originate: str = ""
    sender: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    commands: list[str] | None = None
    agistatus: str | None = None


_APP = re.compile(r"^#\s+(?:exten => [^,]+,\d+|same => n),(?P<app>.*?)(?:\s{2,}\(.*\))?$")


def _parse_header(lines: Sequence[bytes]) -> tuple[str, list[_Header]]:
    case = ""
    blocks: list[_Header] = []
    mode = ""
    for raw in lines:
        text = raw.decode("utf-8")
        if text.startswith("# Case: "):
            case = text[len("# Case: ") :]
            continue
        match = _DIALPLAN.match(text)
        if match:
            blocks.append(_Header(ext=match.group("ext")))
            mode = "dialplan"
            continue
        if not blocks:
            continue
        block = blocks[-1]
        if text.startswith("# Call originated with: ") or text.startswith("# Call placed by: "):
            block.originate = text.split(": ", 1)[1]
            mode = ""
        elif "runs context [sender]" in text:
            mode = "sender"
        elif text.startswith("# Commands sent by the FastAGI server: "):
            rest = text[len("# Commands sent by the FastAGI server: ") :]
            block.commands = [] if rest == "(none)" else rest.split(" | ")
            mode = ""
        elif text.startswith("# AGISTATUS seen by the dialplan afterwards: "):
            block.agistatus = text.rsplit(": ", 1)[1].strip()
            mode = ""
        elif text.startswith("# ~") or text.startswith("#   ("):
            block.notes.append(text[2:].strip())
        else:
            app = _APP.match(text)
            if app and mode == "dialplan":
                block.dialplan.append(app.group("app"))
            elif app and mode == "sender":
                block.sender.append(app.group("app"))
            elif text.startswith("# Format:"):
                mode = ""
    return case, blocks


def parse_file(path: Path) -> list[Transcript]:
    """Parse one transcript file into its transcripts (usually one, 24 has two)."""
    data = path.read_bytes()
    if b"\r" in data:
        raise ValueError(f"{path.name}: CR byte in a transcript file")
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    first_section = next((i for i, ln in enumerate(lines) if _SECTION.match(ln)), len(lines))
    case, headers = _parse_header(lines[:first_section])

    transcripts: list[Transcript] = []
    current: Transcript | None = None
    in_env = False
    in_logs = False
    t: float | None = None
    for lineno, raw in enumerate(lines[first_section:], start=first_section + 1):
        where = f"{path.name}:{lineno}"
        section = _SECTION.match(raw)
        if section:
            current = Transcript(file=path.name, extension=section.group("ext").decode(), case=case)
            transcripts.append(current)
            in_env, in_logs, t = True, False, None
            continue
        if current is None:
            continue
        if _LOGS.match(raw):
            in_logs = True
            continue
        if in_logs:
            if raw.startswith(b"#   "):
                current.log_lines.append(raw[4:].decode("utf-8"))
            continue
        if raw.startswith(b"< ") or raw.startswith(b"> "):
            line = _line_bytes(raw, where)
            kind = raw[:1].decode()
            if in_env:
                if kind != "<":
                    raise ValueError(f"{where}: server line inside the env block")
                if line == b"\n":
                    in_env = False
                else:
                    current.env_lines.append(line)
                continue
            current.items.append(Item(kind, line, t))
            continue
        if not raw.startswith(b"#") and raw.strip():
            raise ValueError(f"{where}: unexpected line {raw[:60]!r}")
        text = raw.decode("utf-8")
        timing = _TIME.match(raw)
        rest = text
        if timing:
            t = float(timing.group("t"))
            rest = (timing.group("rest") or b"").decode("utf-8")
        if "no TCP connection reached the FastAGI server" in text:
            current.connected = False
            in_env = False
            current.items.append(Item("event", b"no_connection", t, text[2:]))
            continue
        name = _event_name(rest)
        if name is not None:
            if in_env:
                raise ValueError(f"{where}: socket event inside the env block")
            current.items.append(Item("event", name.encode(), t, rest))

    for tr in transcripts:
        tr.file_transcript_count = len(transcripts)
        header = _match_header(tr, headers)
        if header is not None:
            tr.dialplan = header.dialplan
            tr.originate = header.originate
            tr.sender = header.sender
            tr.notes = header.notes
            tr.commands = header.commands
            tr.agistatus = header.agistatus
        if tr.connected and not tr.env_lines:
            raise ValueError(f"{path.name}: transcript {tr.extension} has no env block")
    return transcripts


def _match_header(tr: Transcript, headers: list[_Header]) -> _Header | None:
    for header in headers:
        if header.ext == tr.extension:
            return header
    return headers[0] if len(headers) == 1 else None


def load_file(name: str, directory: Path = TRANSCRIPT_DIR) -> list[Transcript]:
    return parse_file(directory / name)


def transcript_files(directory: Path = TRANSCRIPT_DIR) -> list[Path]:
    """The numbered transcript files (``01-…`` to ``30-…``), not ``00-README.txt``."""
    return sorted(p for p in directory.glob("[0-9][0-9]-*.txt") if not p.name.startswith("00-"))


def load_all(directory: Path = TRANSCRIPT_DIR) -> list[Transcript]:
    out: list[Transcript] = []
    for path in transcript_files(directory):
        out.extend(parse_file(path))
    return out


# --------------------------------------------------------------------------- sender model

#: SendDTMF as measured in the transcripts (01-30): a digit is reported to the AGI channel
#: ~0.205 s after SendDTMF starts, digits follow every 0.35 s (100 ms tone + 250 ms gap), and
#: the application returns 0.1 + 0.35 * n s after it started. (06: '4' of "1234" sent at 1.5 s
#: arrives at 2.755 s; 29: "1" at 1.0 s -> 1.204 s, "2" after Wait(2) -> 3.657 s.)
DTMF_FIRST = 0.205
DTMF_STEP = 0.35
DTMF_OVERHEAD = 0.1

_CALL = re.compile(r"^(?P<app>\w+)\((?P<arg>[^)]*)\)$")


def _originate_plan(originate: str) -> list[str]:
    """``channel originate X application SendDTMF 1`` → ``["SendDTMF(1)"]``."""
    match = re.search(r"application (\w+) ([^\"]*)\"?$", originate)
    return [f"{match.group(1)}({match.group(2).strip()})"] if match else []


def sender_timeline(tr: Transcript) -> list[tuple[float, str]]:
    """The caller's DTMF/hangup timeline implied by the ``[sender]`` plan.

    Times are seconds after the AGI channel was answered; events are ``"1"``-style digits and
    ``"HANGUP"`` (the ;1 half hangs up when its dialplan ends, which hangs up the AGI half).
    """
    plan = tr.sender or _originate_plan(tr.originate)
    now = 0.0
    out: list[tuple[float, str]] = []
    for step in plan:
        match = _CALL.match(step.strip())
        if match is None:
            continue
        app, arg = match.group("app").lower(), match.group("arg")
        if app == "wait":
            now += float(arg)
        elif app == "senddtmf":
            digits = arg.split(",")[0]
            for i, digit in enumerate(digits):
                out.append((round(now + DTMF_FIRST + DTMF_STEP * i, 6), digit))
            now += DTMF_OVERHEAD + DTMF_STEP * len(digits)
        elif app == "hangup":
            break
    if plan:
        out.append((round(now, 6), "HANGUP"))
    return out


def iter_lines(tr: Transcript) -> Iterator[tuple[str, bytes]]:
    """Env lines (``<``) then the exchange, as recorded."""
    for line in tr.env_lines:
        yield "<", line
    if tr.connected:
        yield "<", b"\n"
    yield from tr.exchange
