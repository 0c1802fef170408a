"""A strict fake of Asterisk 22.10.1's side of FastAGI, for tests, tools and benchmarks.

It ships in the package because ``consent-ivr simulate-call`` and ``bench/`` drive the
server with it; ``tests/fakes.py`` re-exports it for the test suite.

:class:`FakeAsterisk` is a TCP *client*: it connects to a FastAGI server (ours or any other),
sends the ``agi_*`` environment block, then answers every command exactly as real Asterisk
22.10.1 does on the wire (``tests/conformance/transcripts`` holds 30 byte-exact recordings, and
``tests/conformance/test_transcripts.py`` replays every one of them against this class). Nothing
is hard-coded per transcript: commands are parsed with res_agi's ``parse_args`` rules, looked up
in res_agi's command table (both in :mod:`agi.testing.res_agi`; the sound lengths in
:mod:`agi.testing.sounds`), and executed against a small channel model (answer state,
variables, a sounds table, a DTMF/hangup timeline, a virtual clock).

The caller is either

* a **press script** (``presses=["1", SILENCE, "1"]``, ``SILENCE``, ``HANGUP``,
  ``hangup_after=N``): each command that waits for input (one with escape digits) consumes
  the next item, which is the simplest way to drive a call flow; or
* a **timeline** (``timeline=[(2.2, "1"), (5.0, "HANGUP")]``): events at seconds after the
  channel was answered, played against the durations of the sound files, as the
  ``[sender]`` contexts of the transcripts do.

Time is virtual by default: playing a 5 s prompt takes no real time, so tests stay fast. With
``realtime=True`` the clock runs at ``time_scale`` (0.05 = twenty times faster than life) and
the fake watches the socket while media commands run, so a command pipelined during STREAM FILE
aborts it exactly as transcripts 27 and 28 show. ``line_delay`` sleeps before each line of a
multi-line burst (Asterisk does not set TCP_NODELAY; replies often arrive ~40 ms apart).

Pure asyncio, no pytest: usable from other processes and the benchmarks::

    fake = FakeAsterisk("127.0.0.1", 4573, network_script="consent?purpose=marketing-calls",
                        callerid="+447700900123", presses=["1", SILENCE, "1"])
    record = await fake.run()
    record.variables["CONSENT_RESULT"], record.agistatus, record.prompts
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from agi.testing.res_agi import (
    AGI_BUF_LEN,
    DIGIT_TIMEOUT_MS,
    DTMF,
    ENV_ORDER,
    FLOAT_RE,
    FRAME,
    R_510,
    R_511,
    R_520_HEAD,
    R_520_NODOCS,
    R_520_TAIL,
    RATE,
    RESPONSE_TIMEOUT_MS,
    USAGE,
    Marker,
    atoi,
    decode,
    encode,
    find_command,
    parse_command_line,
    scan_int,
)
from agi.testing.sounds import (
    DEFAULT,
    DEFAULT_SOUNDS,
    DEFAULT_SOUNDS_DIR,
    SAY_CHAR,
    number_files,
    scan_sounds_dir,
)

__all__ = ["HANGUP", "SILENCE", "CallRecord", "FakeAsterisk", "FakeAsteriskError", "PromptPlay"]


SILENCE: Final = Marker("SILENCE")
#: Press-script item / timeline event: the caller hangs up during that command.
HANGUP: Final = Marker("HANGUP")


class FakeAsteriskError(AssertionError):
    """The fake was asked to do something it does not model (strict: never guess)."""


# --------------------------------------------------------------------------- record


@dataclass(slots=True)
class PromptPlay:
    """One attempt to play a sound file."""

    name: str
    command: str  # "STREAM FILE", "GET OPTION", "GET DATA", "EXEC Playback", "SAY DIGITS"…
    lang: str | None  # language directory the file was found in; None when missing
    found: bool
    interrupted: bool  # stopped by a DTMF digit
    digit: str | None
    endpos: int  # sample position where playback stopped
    samples: int  # length of the file (0 when missing)
    outcome: str  # completed | digit | hangup | aborted | missing | dead
    at: float  # virtual seconds since connect when it started


@dataclass(slots=True)
class CallRecord:
    """What happened on one fake call (inspect it *outside* the server under test)."""

    transcript: list[tuple[str, bytes]] = field(default_factory=list)  # "<" sent, ">" received
    commands: list[str] = field(default_factory=list)
    variables: dict[str, str] = field(default_factory=dict)  # final channel variables
    variables_set: list[tuple[str, str]] = field(default_factory=list)  # in order
    prompts: list[PromptPlay] = field(default_factory=list)
    presses_used: list[tuple[str, Any]] = field(default_factory=list)
    dropped_digits: list[str] = field(default_factory=list)
    answered: bool = False
    hung_up: bool = False
    hangup_by: str | None = None  # "caller" | "server" (HANGUP command / EXEC Hangup)
    agistatus: str = "SUCCESS"
    connected: bool = False
    socket_events: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    virtual_time: float = 0.0

    def sent(self) -> bytes:
        """Every byte the fake wrote, in order."""
        return b"".join(d for k, d in self.transcript if k == "<")

    def received(self) -> bytes:
        return b"".join(d for k, d in self.transcript if k == ">")

    def replies(self) -> list[bytes]:
        return [d for k, d in self.transcript if k == "<"]

    def dialogue(self) -> str:
        """Human-readable dialogue, one line each, in the transcripts' notation."""
        return "\n".join(
            f"{k} {d.decode('utf-8', 'replace').removesuffix(chr(10))}" for k, d in self.transcript
        )

    def prompt_names(self) -> list[str]:
        return [p.name for p in self.prompts]


_NEED_MORE: Final = Marker("NEED_MORE")
_IDLE_TIMEOUT: Final = Marker("IDLE_TIMEOUT")
_EXIT: Final = Marker("EXIT")


class _Clock:
    """Virtual seconds since connect; in real-time mode, wall clock / time_scale."""

    def __init__(self, realtime: bool, scale: float) -> None:
        self.realtime = realtime
        self.scale = scale
        self._virtual = 0.0
        self._origin = 0.0

    def start(self) -> None:
        self._origin = asyncio.get_running_loop().time()

    def now(self) -> float:
        if self.realtime:
            return (asyncio.get_running_loop().time() - self._origin) / self.scale
        return self._virtual

    async def until(self, t: float, activity: asyncio.Event | None) -> bool:
        """Let time reach ``t``; True when server bytes (or EOF) came first."""
        if activity is not None and activity.is_set():
            return True
        if not self.realtime:
            if math.isinf(t):
                if activity is None:
                    return False
                await activity.wait()
                return True
            self._virtual = max(self._virtual, t)
            return False
        delay = None if math.isinf(t) else max(0.0, (t - self.now()) * self.scale)
        if activity is None:
            await asyncio.sleep(delay or 0)
            return False
        try:
            await asyncio.wait_for(activity.wait(), delay)
        except TimeoutError:
            return False
        return True


@dataclass(slots=True)
class _Wait:
    outcome: str  # timeout | digit | hangup | socket
    elapsed: float
    digit: str | None = None


def _frames(elapsed: float, limit: int) -> int:
    """Samples played after ``elapsed`` s: whole 20 ms frames, the current one included."""
    return min(limit, max(0, math.ceil(elapsed * RATE / FRAME - 1e-6)) * FRAME)


# --------------------------------------------------------------------------- the fake


class FakeAsterisk:
    """Asterisk's end of one FastAGI session. See the module docstring; call :meth:`run`.

    Env (``agi_*`` in Asterisk's order): ``host``/``port`` to connect to; ``network_script``
    (``None`` → no ``agi_network_script`` line, like ``agi://host:port``); ``request``
    (default ``agi://host:port/<script>``); ``channel``, ``channel_type``, ``uniqueid``,
    ``language``, ``callerid``, ``calleridname`` (raw, quotes unescaped; empty is sent as
    ``unknown``, as Asterisk does), ``dnid``, ``rdnis``,
    ``context``, ``extension``, ``priority``, ``accountcode``, ``args`` (agi_arg_1..N); ``env``
    replaces the whole block with the given values (keys without ``agi_``, in ENV_ORDER).

    Caller: ``presses`` (list of digit strings / SILENCE / HANGUP) and ``hangup_after=N``, or
    ``timeline`` ([(seconds after answer, "1" | "HANGUP")]). ``on_presses_exhausted``:
    "silence" (default) or "hangup".

    Channel: ``answered`` (already up when the AGI starts), ``answer_delay`` (ANSWER waits for
    media, 0.5 s in the transcripts), ``variables`` (pre-set channel variables), ``sounds``
    ({name: samples}, added to DEFAULT_SOUNDS), ``sounds_dir`` (``<dir>/<lang>/…wav``, default
    the repo's ``sounds/``; None to disable), ``missing_sounds`` (names that must not exist),
    ``hangup_notice`` ("immediate" like 12/14, "on_next_command" like 30), ``exit_on_hangup``
    (AGIEXITONHANGUP=yes, 13), ``usage_docs`` (True: 520 blocks with docs; False: the one-line
    "Proper usage not available" form).

    Wire: ``realtime``/``time_scale`` (see module docstring), ``line_delay`` (real seconds before
    each further line of a burst), ``idle_timeout`` (real seconds to wait for a command before
    giving up, recorded as an error), ``connect_timeout`` (Asterisk's MAX_AGI_CONNECT, 2 s).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 4573,
        *,
        network_script: str | None = "consent?purpose=marketing-calls",
        request: str | None = None,
        channel: str = "PJSIP/caller-00000001",
        channel_type: str | None = None,
        uniqueid: str = "1700000000.1",
        language: str = "en",
        callerid: str = "+447700900123",
        calleridname: str = "Jane Doe",
        dnid: str = "unknown",
        rdnis: str = "unknown",
        context: str = "consent-ivr",
        extension: str = "s",
        priority: int = 1,
        accountcode: str = "",
        version: str = "22.10.1",
        threadid: int = 140142575412928,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        presses: Sequence[str | Marker] | None = None,
        hangup_after: int | None = None,
        timeline: Iterable[tuple[float, str | Marker]] | None = None,
        on_presses_exhausted: str = "silence",
        answered: bool = False,
        answer_delay: float = 0.5,
        variables: Mapping[str, str] | None = None,
        sounds: Mapping[str, int] | None = None,
        sounds_dir: Path | str | Marker | None = DEFAULT,
        missing_sounds: Iterable[str] = (),
        hangup_notice: str = "immediate",
        exit_on_hangup: bool = False,
        usage_docs: bool = True,
        realtime: bool = False,
        time_scale: float = 1.0,
        line_delay: float = 0.0,
        idle_timeout: float = 10.0,
        connect_timeout: float = 2.0,
    ) -> None:
        if hangup_notice not in ("immediate", "on_next_command"):
            raise ValueError(f"hangup_notice must be immediate or on_next_command: {hangup_notice}")
        if on_presses_exhausted not in ("silence", "hangup"):
            raise ValueError("on_presses_exhausted must be silence or hangup")
        if presses is not None and timeline is not None:
            raise ValueError("use either presses (script) or timeline, not both")
        self.host = host
        self.port = port
        if env is None:
            script = network_script or ""
            env = {
                "network": "yes",
                **({"network_script": script} if script else {}),
                "request": request
                or (f"agi://{host}:{port}/{script}" if script else f"agi://{host}:{port}"),
                "channel": channel,
                "language": language,
                "type": channel_type or channel.split("/", 1)[0],
                "uniqueid": uniqueid,
                "version": version,
                # res_agi: S_COR(valid, str, "unknown") -- an absent one is never empty
                "callerid": callerid or "unknown",
                "calleridname": calleridname or "unknown",
                "callingpres": "0",
                "callingani2": "0",
                "callington": "0",
                "callingtns": "0",
                "dnid": dnid,
                "rdnis": rdnis,
                "context": context,
                "extension": extension,
                "priority": str(priority),
                "enhanced": "0.0",
                "accountcode": accountcode,
                "threadid": str(threadid),
                **{f"arg_{i}": a for i, a in enumerate(args, start=1)},
            }
        self.env: dict[str, str] = dict(env)
        self.language = self.env.get("language", "en") or "en"
        self.channel_name = self.env.get("channel", "")
        cid = self.env.get("callerid", "unknown")
        cidname = self.env.get("calleridname", "unknown")
        self._cid_num = "" if cid == "unknown" else cid
        self._cid_name = "" if cidname == "unknown" else cidname

        self._presses: list[str | Marker] | None = list(presses) if presses is not None else None
        self.hangup_after = hangup_after
        self._timeline = sorted(
            (float(t), "HANGUP" if ev is HANGUP else str(ev)) for t, ev in (timeline or ())
        )
        for _, ev in self._timeline:
            if ev != "HANGUP" and (len(ev) != 1 or ev not in DTMF):
                raise ValueError(f"timeline events are single DTMF digits or HANGUP: {ev!r}")
        self.on_presses_exhausted = on_presses_exhausted
        self.answer_delay = answer_delay
        self.hangup_notice = hangup_notice
        self.exit_on_hangup = exit_on_hangup
        self.usage_docs = usage_docs
        self.line_delay = line_delay
        self.idle_timeout = idle_timeout
        self.connect_timeout = connect_timeout

        self._sounds: dict[str, int] = {**DEFAULT_SOUNDS, **(sounds or {})}
        directory = DEFAULT_SOUNDS_DIR if sounds_dir is DEFAULT else sounds_dir
        self._localized: dict[tuple[str, str], int] = (
            dict(scan_sounds_dir(str(directory))) if isinstance(directory, (str, Path)) else {}
        )
        self._missing = set(missing_sounds)

        self.clock = _Clock(realtime, time_scale)
        self.record = CallRecord(answered=answered)
        self.record.variables.update(variables or {})
        self._db: dict[tuple[str, str], str] = {}

        # channel / session state (res_agi's run_agi locals)
        self.answered = answered
        self.hung_up = False  # ast_check_hangup(chan)
        self.dead = False  # run_agi's "dead": HANGUP notice sent, only dead commands allowed
        self._notice: str | None = None  # "due" (send after this reply) | "pending" (next command)
        self._exit = False
        self._closed = False
        self._events: list[tuple[float, int, str, bool]] = []  # (t, seq, event, scoped)
        self._seq = itertools.count()
        self._deferred: list[str] = []
        self._replies = 0
        self._burst = 0

        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._buf = bytearray()
        self._acc = b""
        self._eof = False
        self._activity = asyncio.Event()  # unread server bytes or EOF: aborts media commands
        self._arrival = asyncio.Event()  # new bytes arrived (line reader wake-up)

    @classmethod
    def from_env(
        cls, env: Mapping[str, str], host: str = "127.0.0.1", port: int = 4573, **kwargs: Any
    ) -> FakeAsterisk:
        """A fake sending exactly this env block (keys without ``agi_``, e.g. from a transcript)."""
        return cls(host, port, env=env, **kwargs)

    # ------------------------------------------------------------------ public

    async def run(self) -> CallRecord:
        """Connect, play the whole session, return the record (never raises on wire errors)."""
        rec = self.record
        try:
            self._reader, self._writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port), self.connect_timeout
            )
        except (OSError, TimeoutError) as exc:
            rec.errors.append(f"connect failed: {exc!r}")
            rec.agistatus = "FAILURE"  # launch_netscript: "Couldn't connect to any host"
            return rec
        rec.connected = True
        self.clock.start()
        pump = asyncio.create_task(self._pump())
        try:
            if self.answered:
                self._start_timeline()
            for line in self._env_lines():
                await self._send(line)
            self._burst = 0
            if self.hangup_after == 0:
                self._hang_up("caller")
            await self._session()
        except FakeAsteriskError as exc:
            rec.errors.append(str(exc))
        finally:
            if not self._closed:
                # run_agi always ends with one more "HANGUP" for a FastAGI (send_sighup)
                await self._send(b"HANGUP\n")
            await self._close()
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump
            rec.answered = self.answered
            rec.hung_up = self.hung_up
            rec.virtual_time = self.clock.now()
        return rec

    # ------------------------------------------------------------------ session loop

    async def _session(self) -> None:
        rec = self.record
        while not self._exit:
            await self._deliver_notice()
            if self._exit:
                return
            line = await self._next_command()
            if line is None:
                rec.socket_events.append("server_eof")
                return
            if line is _IDLE_TIMEOUT:
                rec.errors.append(f"no command from the server within {self.idle_timeout}s")
                return
            if line is _EXIT:
                return
            assert isinstance(line, bytes)
            self._burst = 0
            rec.transcript.append((">", line))
            body = line.removesuffix(b"\n")
            rec.commands.append(decode(body))
            if self._notice == "pending":
                # the hangup is noticed once the next command wakes the AGI loop up (30)
                self._notice = None
                await self._needhup()
                if self._exit:
                    return
            if body[:7].lower() == b"failure":
                rec.agistatus = "FAILURE"  # run_agi: "inability to execute child process"
                return
            answered = await self._dispatch(body)
            self._clear_scoped()
            if answered:
                self._replies += 1
                if self.hangup_after is not None and self._replies == self.hangup_after:
                    self._hang_up("caller")

    async def _dispatch(self, body: bytes) -> bool:
        """Run one command; True when a reply was sent (False: aborted, no reply line)."""
        words = parse_command_line(body)
        entry = find_command(words)
        if entry is None:
            await self._send(R_510)
            return True
        names, handler, dead_ok = entry
        if self.dead and not dead_ok:
            await self._send(R_511)
            return True
        if handler is None:
            raise FakeAsteriskError(f"FakeAsterisk does not model {' '.join(names).upper()}")
        result = await getattr(self, f"_cmd_{handler}")(words)
        if result is None:
            return False
        lines, failed = result
        if lines is USAGE_ERROR:
            await self._send_usage(" ".join(names))
        else:
            for line in lines:
                await self._send(line)
        if failed and (self.dead or not self.hung_up):
            self.record.agistatus = "FAILURE"  # "The failure was not because of a hangup."
        return True

    async def _send_usage(self, name: str) -> None:
        docs = USAGE.get(name) if self.usage_docs else None
        if not docs:
            await self._send(R_520_NODOCS)
            return
        await self._send(R_520_HEAD)
        # one ast_agi_send("%s", usage) for the whole body, as res_agi does
        await self._send(encode("".join(f"{ln}\n" for ln in docs)))
        await self._send(R_520_TAIL)

    # ------------------------------------------------------------------ hangup

    def _hang_up(self, by: str) -> None:
        if self.hung_up:
            return
        self.hung_up = True
        self.record.hangup_by = by
        self._notice = "due" if (self.hangup_notice == "immediate" or by == "server") else "pending"

    async def _deliver_notice(self) -> None:
        if self._notice == "due":
            self._notice = None
            await self._needhup()

    async def _needhup(self) -> None:
        """run_agi's ``needhup``: dead from now on, tell the server, maybe exit."""
        self.dead = True
        if self.record.agistatus == "SUCCESS":
            self.record.agistatus = "HANGUP"
        await self._send(b"HANGUP\n")
        if self.exit_on_hangup:
            self._exit = True

    # ------------------------------------------------------------------ timeline / waits

    def _start_timeline(self) -> None:
        t0 = self.clock.now()
        for t, ev in self._timeline:
            self._push(t0 + t, ev, scoped=False)
        self._timeline = []

    def _mark_answered(self) -> None:
        if not self.answered:
            self._start_timeline()
            self.answered = True

    def _push(self, t: float, ev: str, *, scoped: bool) -> None:
        heapq.heappush(self._events, (t, next(self._seq), ev, scoped))

    def _clear_scoped(self) -> None:
        if any(e[3] for e in self._events):
            self._events = [e for e in self._events if not e[3]]
            heapq.heapify(self._events)

    async def _wait(
        self, duration: float | None, digits: str = "", *, watch: bool = False, defer: bool = False
    ) -> _Wait:
        """Let up to ``duration`` s pass (None: forever) while the caller acts.

        A digit in ``digits`` ends the wait; other digits are dropped (or, with ``defer``,
        kept for the next command, as ast_answer does). A hangup ends it. With ``watch``,
        server bytes or EOF end it too (res_agi passes the AGI socket to the media waits).
        """
        start = self.clock.now()
        end = math.inf if duration is None else start + max(0.0, duration)
        if self.hung_up:
            return _Wait("hangup", 0.0)
        activity = self._activity if watch else None
        if activity is not None and activity.is_set():
            return _Wait("socket", 0.0)
        if digits:
            while self._deferred:
                digit = self._deferred.pop(0)
                if digit in digits:
                    return _Wait("digit", 0.0, digit)
                self.record.dropped_digits.append(digit)
        while True:
            t_ev = self._events[0][0] if self._events else math.inf
            target = min(t_ev, end)
            if math.isinf(target) and activity is None:
                return _Wait("timeout", 0.0)
            if await self.clock.until(target, activity):
                return _Wait("socket", max(0.0, self.clock.now() - start))
            if t_ev > end:
                return _Wait("timeout", end - start)
            t, _, ev, _ = heapq.heappop(self._events)
            elapsed = max(0.0, t - start)
            if ev == "HANGUP":
                self._hang_up("caller")
                return _Wait("hangup", elapsed)
            if ev in digits:
                return _Wait("digit", elapsed, ev)
            if defer:
                self._deferred.append(ev)
            else:
                self.record.dropped_digits.append(ev)

    def _take_press(self, command: str) -> str | Marker | None:
        """Next press-script item for an input-waiting command (None in timeline mode)."""
        if self._presses is None:
            return None
        if self._presses:
            press = self._presses.pop(0)
        else:
            press = HANGUP if self.on_presses_exhausted == "hangup" else SILENCE
        if isinstance(press, str) and press == "":
            press = SILENCE
        self.record.presses_used.append((command, press))
        return press

    def _inject_press(self, press: str | Marker | None, at: float) -> None:
        """Turn a one-key press (or HANGUP) into a scoped event ``at`` s from now."""
        if press is None or press is SILENCE:
            return
        now = self.clock.now()
        if press is HANGUP:
            self._push(now + at, "HANGUP", scoped=True)
        elif isinstance(press, str):
            self._push(now + at, press[0], scoped=True)

    # ------------------------------------------------------------------ sounds

    def _lookup(self, name: str) -> tuple[int | None, str | None]:
        """ast_openstream: ``<lang>/name``, then ``en/name``, then language-less stock sounds."""
        if name in self._missing:
            return None, None
        for lang in dict.fromkeys((self.language, "en")):
            samples = self._localized.get((lang, name))
            if samples is not None:
                return samples, lang
        if name in self._sounds:
            return self._sounds[name], "en"
        return None, None

    def _prompt(self, name: str, command: str, samples: int | None, lang: str | None) -> PromptPlay:
        play = PromptPlay(
            name=name,
            command=command,
            lang=lang,
            found=samples is not None,
            interrupted=False,
            digit=None,
            endpos=0,
            samples=samples or 0,
            outcome="missing" if samples is None else "completed",
            at=self.clock.now(),
        )
        self.record.prompts.append(play)
        return play

    async def _play(
        self, play: PromptPlay, offset: int, digits: str, *, watch: bool
    ) -> tuple[_Wait, int]:
        """Play from ``offset``; returns the wait outcome and endpos (``ast_tellstream``)."""
        remaining = max(play.samples - offset, 0)
        waited = await self._wait(remaining / RATE, digits, watch=watch)
        if waited.outcome == "timeout":
            endpos = play.samples  # the stream closed itself: max_length
        else:
            endpos = offset + _frames(waited.elapsed, remaining)
        play.endpos = endpos
        play.outcome = {"timeout": "completed", "socket": "aborted"}.get(
            waited.outcome, waited.outcome
        )
        play.interrupted = waited.outcome == "digit"
        play.digit = waited.digit
        return waited, endpos

    # ------------------------------------------------------------------ verbs

    async def _cmd_answer(self, argv: list[str]) -> _Result:
        res = 0
        if not self.answered:
            self._start_timeline()
            waited = await self._wait(self.answer_delay, defer=True)
            if waited.outcome == "hangup":
                res = -1
            else:
                self.answered = True
        return [b"200 result=%d\n" % res], res < 0

    async def _cmd_asyncagi_break(self, argv: list[str]) -> _Result:
        return [b"200 result=0\n"], False

    async def _cmd_noop(self, argv: list[str]) -> _Result:
        return [b"200 result=0\n"], False

    async def _cmd_verbose(self, argv: list[str]) -> _Result:
        if len(argv) < 2:
            return USAGE_ERROR, False
        return [b"200 result=1\n"], False

    async def _cmd_channel_status(self, argv: list[str]) -> _Result:
        state = 6 if self.answered else 4  # AST_STATE_UP / AST_STATE_RING
        if len(argv) == 2:
            return [b"200 result=%d\n" % state], False
        if len(argv) == 3:
            return [b"200 result=%d\n" % (state if argv[2] == self.channel_name else -1)], False
        return USAGE_ERROR, False

    async def _cmd_hangup(self, argv: list[str]) -> _Result:
        if len(argv) > 3:
            return USAGE_ERROR, False
        if len(argv) == 3 and argv[2] != self.channel_name:
            return [b"200 result=-1\n"], False
        self._hang_up("server")
        return [b"200 result=1\n"], False

    async def _cmd_set_variable(self, argv: list[str]) -> _Result:
        if len(argv) != 4:
            return USAGE_ERROR, False
        self._setvar(argv[2], argv[3])
        return [b"200 result=1\n"], False

    def _setvar(self, name: str, value: str) -> None:
        self.record.variables[name] = value
        self.record.variables_set.append((name, value))

    def _read(self, name: str) -> str | None:
        """Variable or function value; None when unset / unknown function."""
        if name.endswith(")"):
            func, _, arg = name[:-1].partition("(")
            func, arg = func.upper(), arg.lower()
            if func == "CALLERID":
                if arg in ("num", "number"):
                    return self._cid_num
                if arg == "name":
                    return self._cid_name
                if arg == "all":
                    return f'"{self._cid_name}" <{self._cid_num}>'
            return None
        builtins = {
            "CHANNEL": self.channel_name,
            "UNIQUEID": self.env.get("uniqueid", ""),
            "CONTEXT": self.env.get("context", ""),
            "EXTEN": self.env.get("extension", ""),
            "PRIORITY": self.env.get("priority", ""),
        }
        if name in self.record.variables:
            return self.record.variables[name]
        return builtins.get(name)

    def _substitute(self, text: str) -> str:
        """``ast_str_substitute_variables`` for ``${VAR}`` / ``${FUNC(arg)}`` (nesting ok)."""
        out: list[str] = []
        i = 0
        while i < len(text):
            if text.startswith("${", i):
                depth, j = 1, i + 2
                while j < len(text) and depth:
                    if text.startswith("${", j):
                        depth += 1
                        j += 2
                        continue
                    if text[j] == "}":
                        depth -= 1
                    j += 1
                if depth:
                    out.append(text[i:])
                    break
                inner = self._substitute(text[i + 2 : j - 1])
                out.append(self._read(inner) or "")
                i = j
            else:
                out.append(text[i])
                i += 1
        return "".join(out)

    async def _cmd_get_variable(self, argv: list[str]) -> _Result:
        if len(argv) != 3:
            return USAGE_ERROR, False
        value = self._read(argv[2])
        if value is None:
            return [b"200 result=0\n"], False
        return [b"200 result=1 (" + encode(value) + b")\n"], False

    async def _cmd_get_full_variable(self, argv: list[str]) -> _Result:
        if len(argv) not in (4, 5):
            return USAGE_ERROR, False
        if len(argv) == 5 and argv[4] != self.channel_name:
            return [b"200 result=0\n"], False
        return [b"200 result=1 (" + encode(self._substitute(argv[3])) + b")\n"], False

    async def _cmd_exec(self, argv: list[str]) -> _Result:
        if len(argv) < 2:
            return USAGE_ERROR, False
        app = argv[1].lower()
        options = argv[2] if len(argv) >= 3 else ""
        res: int
        if app == "playback":
            res = await self._app_playback(options)
        elif app == "set":
            name, sep, value = options.partition("=")
            if sep:
                self._setvar(name.strip(), value)
            res = 0
        elif app in ("verbose", "noop", "log"):
            res = 0
        elif app == "wait":
            match = FLOAT_RE.match(options)
            waited = await self._wait(float(match.group(1)) if match else 0.0)
            res = -1 if waited.outcome == "hangup" else 0
        elif app == "answer":
            self._mark_answered()
            res = 0
        elif app == "hangup":
            self._hang_up("server")
            res = -1
        else:
            res = -2  # "Could not find application"
        # handle_exec returns the application's result as the command status; 0/-1/-2 are
        # all plain successes for agi_handle_command.
        return [b"200 result=%d\n" % res], False

    async def _app_playback(self, options: str) -> int:
        files, _, opts = options.partition(",")
        if not self.answered and "noanswer" not in opts:
            self._mark_answered()
        for name in files.split("&"):
            samples, lang = self._lookup(name)
            play = self._prompt(name, "EXEC Playback", samples, lang)
            if samples is None:
                self._setvar_quiet("PLAYBACKSTATUS", "FAILED")
                return 0  # Playback logs the failure and returns 0 (15)
            if self.hung_up:
                play.outcome = "dead"
                continue
            waited, _ = await self._play(play, 0, "", watch=False)
            if waited.outcome == "hangup":
                return -1
        self._setvar_quiet("PLAYBACKSTATUS", "SUCCESS")
        return 0

    def _setvar_quiet(self, name: str, value: str) -> None:
        self.record.variables[name] = value

    async def _cmd_stream_file(self, argv: list[str]) -> _Result:
        if not 4 <= len(argv) <= 5:
            return USAGE_ERROR, False
        name, digits = argv[2], argv[3]
        offset = 0
        if len(argv) == 5:
            scanned = scan_int(argv[4])
            if scanned is None:
                return USAGE_ERROR, False
            offset = scanned
        samples, lang = self._lookup(name)
        play = self._prompt(name, "STREAM FILE", samples, lang)
        press = self._take_press("STREAM FILE") if digits else None
        if samples is None:
            return [b"200 result=-1 endpos=%d\n" % offset], True
        self._inject_press(press, max(samples - offset, 0) / RATE / 2)
        waited, endpos = await self._play(play, offset, digits, watch=True)
        if waited.outcome == "socket":
            return None  # "Stop this command, don't print a result line"
        res = {"digit": ord(waited.digit or "\0"), "hangup": -1}.get(waited.outcome, 0)
        return [b"200 result=%d endpos=%d\n" % (res, endpos)], res < 0

    async def _cmd_get_option(self, argv: list[str]) -> _Result:
        if not 4 <= len(argv) <= 5:
            return USAGE_ERROR, False
        name, digits = argv[2], argv[3]
        timeout = atoi(argv[4]) if len(argv) == 5 else DIGIT_TIMEOUT_MS
        samples, lang = self._lookup(name)
        play = self._prompt(name, "GET OPTION", samples, lang)
        press = self._take_press("GET OPTION") if digits else None
        if samples is None:
            return [b"200 result=-1 endpos=0\n"], True
        self._inject_press(press, samples / RATE / 2)
        waited, endpos = await self._play(play, 0, digits, watch=True)
        if waited.outcome == "socket":
            return None
        res = {"digit": ord(waited.digit or "\0"), "hangup": -1}.get(waited.outcome, 0)
        if res == 0:
            after = await self._wait(None if timeout < 0 else timeout / 1000, DTMF, watch=True)
            # res = ast_waitfordigit_full(...); if (!strchr(edigits, res)) res = 0;
            # -1 (hangup) and 1 (socket) are never in the escape digits: both become 0.
            if after.outcome == "digit" and after.digit is not None and after.digit in digits:
                res = ord(after.digit or "\0")
                play.digit = after.digit
        return [b"200 result=%d endpos=%d\n" % (res, endpos)], res < 0

    async def _cmd_get_data(self, argv: list[str]) -> _Result:
        if len(argv) < 3:
            return USAGE_ERROR, False
        timeout = atoi(argv[3]) if len(argv) >= 4 else 0
        maxlen = atoi(argv[4]) if len(argv) >= 5 else 1024
        press = self._take_press("GET DATA")
        fronts = argv[2].split("&")
        plan: list[tuple[str, int | None, str | None]] = [(f, *self._lookup(f)) for f in fronts]
        if press is not None and press is not SILENCE:
            total = sum((s or 0) for _, s, _ in plan) / RATE
            if press is HANGUP:
                self._inject_press(HANGUP, total / 2 + 0.01)
            elif isinstance(press, str):
                first = min(0.3, timeout / 2000) if timeout > 0 else 0.3
                for i, digit in enumerate(press):
                    self._push(self.clock.now() + total + first + 0.25 * i, digit, scoped=True)
        res = -1
        data = ""
        for i, (front, samples, lang) in enumerate(plan):
            play: PromptPlay | None = None
            if front:
                play = self._prompt(front, "GET DATA", samples, lang)
                if samples is None:
                    continue  # ast_streamfile failed: res = -1, next prompt
            if i == len(plan) - 1:
                fto, to = RESPONSE_TIMEOUT_MS, DIGIT_TIMEOUT_MS
                if timeout > 0:
                    fto = to = timeout
                elif timeout < 0:
                    fto = to = 1_000_000_000
            else:
                fto, to = 50, DIGIT_TIMEOUT_MS
            res, data = await self._readstring(play, maxlen, to, fto)
            if res == 3 or data:
                break
        if res == 2:
            return None  # new command arrived: no result line
        if res == 1:
            return [b"200 result=" + encode(data) + b" (timeout)\n"], False
        if res < 0:
            return [b"200 result=-1\n"], False
        return [b"200 result=" + encode(data) + b"\n"], False

    async def _readstring(
        self, play: PromptPlay | None, maxlen: int, to: int, fto: int
    ) -> tuple[int, str]:
        """app.c ``ast_readstring_full`` with enders "#": (AST_GETDATA_* code, digits)."""
        digits = ""
        wait_ms = fto
        while True:
            if play is not None:
                waited, _ = await self._play(play, 0, DTMF, watch=True)
                play = None
                if waited.outcome == "timeout":
                    waited = await self._wait(wait_ms / 1000, DTMF, watch=True)
            else:
                waited = await self._wait(wait_ms / 1000, DTMF, watch=True)
            if waited.outcome == "socket":
                return 2, digits  # AST_GETDATA_INTERRUPTED
            if waited.outcome == "hangup":
                return -1, digits  # AST_GETDATA_FAILED
            if waited.outcome == "timeout":
                return 1, digits  # AST_GETDATA_TIMEOUT
            digit = waited.digit or ""
            if digit == "#":
                return (3 if not digits else 0), digits  # EMPTY_END_TERMINATED / COMPLETE
            digits += digit
            if len(digits) >= maxlen:
                return 0, digits
            wait_ms = to

    async def _cmd_wait_for_digit(self, argv: list[str]) -> _Result:
        if len(argv) != 4:
            return USAGE_ERROR, False
        to = scan_int(argv[3])
        if to is None:
            return USAGE_ERROR, False
        press = self._take_press("WAIT FOR DIGIT")
        self._inject_press(press, min(0.5, to / 2000) if to >= 0 else 0.5)
        waited = await self._wait(None if to < 0 else to / 1000, DTMF, watch=True)
        res = {"digit": ord(waited.digit or "\0"), "hangup": -1, "socket": 1}.get(waited.outcome, 0)
        return [b"200 result=%d\n" % res], res < 0

    async def _say(self, files: list[str], digits: str, command: str) -> int:
        """ast_say_*_full: each file in turn; an escape digit stops it. Not socket-aborted (28)."""
        for name in files:
            samples, lang = self._lookup(name)
            if samples is None:
                continue
            play = self._prompt(name, command, samples, lang)
            waited, _ = await self._play(play, 0, digits, watch=False)
            if waited.outcome == "digit":
                return ord(waited.digit or "\0")
            if waited.outcome == "hangup":
                return -1
        return 0

    async def _cmd_say_digits(self, argv: list[str]) -> _Result:
        if len(argv) != 4 or scan_int(argv[2]) is None:
            return USAGE_ERROR, False
        files = [
            f"digits/{ch}" if ch.isdigit() and ch.isascii() else SAY_CHAR.get(ch, "")
            for ch in argv[2]
        ]
        res = await self._say([f for f in files if f], argv[3], "SAY DIGITS")
        return [b"200 result=%d\n" % res], res < 0

    async def _cmd_say_number(self, argv: list[str]) -> _Result:
        if not 4 <= len(argv) <= 5:
            return USAGE_ERROR, False
        num = scan_int(argv[2])
        if num is None:
            return USAGE_ERROR, False
        res = await self._say(number_files(num), argv[3], "SAY NUMBER")
        return [b"200 result=%d\n" % res], res < 0

    async def _cmd_send_text(self, argv: list[str]) -> _Result:
        if len(argv) != 3:
            return USAGE_ERROR, False
        return [b"200 result=0\n"], False

    async def _cmd_set_autohangup(self, argv: list[str]) -> _Result:
        if len(argv) != 3 or FLOAT_RE.match(argv[2]) is None:
            return USAGE_ERROR, False
        return [b"200 result=0\n"], False

    async def _cmd_set_callerid(self, argv: list[str]) -> _Result:
        if len(argv) >= 3:
            match = re.fullmatch(r'\s*"?([^"<]*?)"?\s*<([^>]*)>\s*', argv[2])
            if match:
                self._cid_name, self._cid_num = match.group(1), match.group(2)
            else:
                self._cid_num = argv[2]
        return [b"200 result=1\n"], False

    async def _cmd_set_context(self, argv: list[str]) -> _Result:
        if len(argv) != 3:
            return USAGE_ERROR, False
        self.env["context"] = argv[2]
        return [b"200 result=0\n"], False

    async def _cmd_set_extension(self, argv: list[str]) -> _Result:
        if len(argv) != 3:
            return USAGE_ERROR, False
        self.env["extension"] = argv[2]
        return [b"200 result=0\n"], False

    async def _cmd_set_priority(self, argv: list[str]) -> _Result:
        if len(argv) != 3:
            return USAGE_ERROR, False
        return [b"200 result=0\n"], False

    async def _cmd_set_music(self, argv: list[str]) -> _Result:
        if len(argv) < 3:
            return USAGE_ERROR, False
        return [b"200 result=0\n"], False

    async def _cmd_database_get(self, argv: list[str]) -> _Result:
        if len(argv) != 4:
            return USAGE_ERROR, False
        value = self._db.get((argv[2], argv[3]))
        if value is None:
            return [b"200 result=0\n"], False
        return [b"200 result=1 (" + encode(value) + b")\n"], False

    async def _cmd_database_put(self, argv: list[str]) -> _Result:
        if len(argv) != 5:
            return USAGE_ERROR, False
        self._db[(argv[2], argv[3])] = argv[4]
        return [b"200 result=1\n"], False

    async def _cmd_database_del(self, argv: list[str]) -> _Result:
        if len(argv) != 4:
            return USAGE_ERROR, False
        found = self._db.pop((argv[2], argv[3]), None) is not None
        return [b"200 result=%d\n" % (1 if found else 0)], False

    async def _cmd_database_deltree(self, argv: list[str]) -> _Result:
        if not 3 <= len(argv) <= 4:
            return USAGE_ERROR, False
        keys = [
            k for k in self._db if k[0] == argv[2] and (len(argv) == 3 or k[1].startswith(argv[3]))
        ]
        for key in keys:
            del self._db[key]
        # res_agi: result=%c, num_deleted > 0 ? '0' : '1' (sic)
        return [b"200 result=%d\n" % (0 if keys else 1)], False

    # ------------------------------------------------------------------ wire

    def _env_lines(self) -> list[bytes]:
        keys = [k for k in ENV_ORDER if k in self.env]
        extra = [k for k in self.env if k not in ENV_ORDER and not re.fullmatch(r"arg_\d+", k)]
        args = sorted(
            (k for k in self.env if re.fullmatch(r"arg_\d+", k)), key=lambda k: int(k[4:])
        )
        lines = [encode(f"agi_{k}: {self.env[k]}\n") for k in (*keys, *extra, *args)]
        return [*lines, b"\n"]

    async def _send(self, data: bytes) -> None:
        """One write() per line, like ast_agi_send; optional Nagle-like gap within a burst."""
        if self._closed or self._writer is None:
            return
        if self.line_delay and self._burst:
            await asyncio.sleep(self.line_delay)
        self._burst += 1
        # recorded line by line (a 520 body is one write but several lines)
        self.record.transcript.extend(("<", ln) for ln in re.findall(rb"[^\n]*\n|[^\n]+", data))
        try:
            self._writer.write(data)
            await self._writer.drain()
        except (ConnectionError, OSError) as exc:
            self.record.socket_events.append(f"write_error: {exc!r}")
            self._exit = True
            self._closed = True
            with contextlib.suppress(Exception):
                self._writer.close()

    async def _close(self) -> None:
        if self._writer is None:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            self._writer.close()
        with contextlib.suppress(Exception):
            await self._writer.wait_closed()

    async def _pump(self) -> None:
        assert self._reader is not None
        try:
            while True:
                data = await self._reader.read(65536)
                if not data:
                    break
                self._buf += data
                self._activity.set()
                self._arrival.set()
        except (ConnectionError, OSError) as exc:
            self.record.socket_events.append(f"read_error: {exc!r}")
        finally:
            self._eof = True
            self._activity.set()
            self._arrival.set()

    def _take_line(self) -> bytes | Marker | None:
        """run_agi's fgets loop: a line, 2047 bytes max, NUL truncates and the next line is
        appended (strlen), a partial line before EOF still runs. None: EOF, no command."""
        try:
            while True:
                room = AGI_BUF_LEN - 1 - len(self._acc)
                if room <= 0:
                    line, self._acc = self._acc, b""
                    return line
                newline = self._buf.find(b"\n", 0, room)
                if newline >= 0:
                    chunk = bytes(self._buf[: newline + 1])
                elif len(self._buf) >= room:
                    chunk = bytes(self._buf[:room])
                elif self._eof:
                    chunk = bytes(self._buf)
                    self._buf.clear()
                    line = (self._acc + chunk).split(b"\0", 1)[0]
                    self._acc = b""
                    return line or None
                else:
                    return _NEED_MORE
                del self._buf[: len(chunk)]
                acc = self._acc + chunk
                if b"\0" in acc:
                    self._acc = acc.split(b"\0", 1)[0]
                    continue
                if acc.endswith(b"\n"):
                    self._acc = b""
                    return acc
                self._acc = acc
        finally:
            if not self._buf and not self._eof:
                self._activity.clear()

    async def _next_command(self) -> bytes | Marker | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.idle_timeout
        while True:
            line = self._take_line()
            if line is not _NEED_MORE:
                return line
            self._arrival.clear()
            timeout = deadline - loop.time()
            if timeout <= 0:
                return _IDLE_TIMEOUT
            if self.clock.realtime and self._events:
                # idle between commands: time passes for the caller too
                t_ev = self._events[0][0]
                delay = (t_ev - self.clock.now()) * self.clock.scale
                if delay <= 0:
                    _, _, ev, _ = heapq.heappop(self._events)
                    if ev == "HANGUP":
                        self._hang_up("caller")
                        await self._deliver_notice()
                        if self._exit:
                            return _EXIT
                    else:
                        self.record.dropped_digits.append(ev)  # nobody listening: lost (29)
                    continue
                timeout = min(timeout, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrival.wait(), timeout)


_Result = tuple[Any, bool] | None
#: handler result meaning "RESULT_SHOWUSAGE"
USAGE_ERROR: Final = Marker("USAGE_ERROR")
