"""One AGI session over an asyncio Protocol: typed verbs on top of :mod:`agi.wire.protocol`.

This is the only module that reads or writes the FastAGI socket. It keeps strictly
one command in flight (real Asterisk aborts a running STREAM FILE / GET DATA when
any byte arrives, and sends no reply for the aborted command), skips ``HANGUP``
notifications wherever they appear, and turns every failure into a typed error.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, cast

from agi.wire.protocol import (
    MAX_HEADER_BYTES,
    AGIAppError,
    AGIDeadChannel,
    AGIEnv,
    AGIHangup,
    HangupNotice,
    HeaderError,
    HeaderParser,
    ProtocolError,
    Reply,
    ReplyParser,
    encode_command,
)

__all__ = ["AGIChannel", "AGIStream", "GetDataResult", "PlaybackResult", "ReplyTimeout"]


class ReplyTimeout(AGIHangup):
    """Asterisk did not answer within the allowed time; the session is unusable."""


@dataclass(frozen=True, slots=True)
class PlaybackResult:
    """Outcome of STREAM FILE / GET OPTION: the digit that interrupted it, if any."""

    digit: str | None
    endpos: int


@dataclass(frozen=True, slots=True)
class GetDataResult:
    """Outcome of GET DATA: the digits keyed ('#' stripped) and whether it timed out."""

    digits: str
    timed_out: bool


def _digit(code: int) -> str | None:
    """ASCII code from WAIT FOR DIGIT / STREAM FILE → the digit; 0 → None."""
    if code == 0:
        return None
    if 0 < code < 128 and chr(code) in "0123456789*#ABCD":
        return chr(code)
    raise ProtocolError(f"result {code} is not a DTMF digit")


class AGIStream(asyncio.Protocol):
    """The socket of one FastAGI session: bytes in, parsed replies out, one waiter.

    An ``asyncio.Protocol`` rather than ``StreamReader``/``StreamWriter``: the bytes go
    straight from ``data_received`` into the incremental parsers and wake the one
    coroutine waiting, with no stream buffer, no read() call and no timeout context per
    command in between (the read path was ~10 % of the server's CPU per call). Phase 1
    parses the environment block (:meth:`read_env`); phase 2 queues replies for
    :class:`AGIChannel`. Reply deadlines share one lazily re-armed timer per connection.
    """

    #: complete replies nobody has asked for yet; real Asterisk sends one per command
    #: (HANGUP notices only set a flag), so a peer that floods is cut off
    MAX_QUEUED: Final = 64

    def __init__(
        self,
        on_connect: Callable[[AGIStream], None] | None = None,
        *,
        max_header: int = MAX_HEADER_BYTES,
    ) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: Any = None
        self._on_connect = on_connect
        self._header: HeaderParser | None = HeaderParser(max_header)
        self._env: asyncio.Future[AGIEnv] | None = None
        self.parser = ReplyParser()
        self.events: deque[Reply] = deque()
        self.hung_up = False  # a HANGUP notice arrived
        self.eof = False
        self.error: BaseException | None = None  # why reading stopped early
        self._waiter: asyncio.Future[None] | None = None
        self._closed: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0

    # ----------------------------------------------------------------- transport side

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a stream transport (uvloop's is not registered as an asyncio.Transport subclass)
        self.transport = cast(asyncio.Transport, transport)
        self._loop = asyncio.get_running_loop()
        self._closed = self._loop.create_future()
        self.peer = transport.get_extra_info("peername")
        if self._on_connect is not None:
            try:
                self._on_connect(self)
            except BaseException:
                transport.close()  # never a connection left open with nobody serving it
                raise

    def data_received(self, data: bytes) -> None:
        try:
            if self._header is not None:
                env = self._header.feed(data)
                if env is None:
                    return
                data = self._header.remainder
                self._header = None
                if self._env is None:
                    assert self._loop is not None
                    self._env = self._loop.create_future()
                if not self._env.done():  # (done: the header timed out)
                    self._env.set_result(env)
                if not data:
                    return
            for event in self.parser.feed(data):
                if isinstance(event, HangupNotice):
                    self.hung_up = True
                else:
                    self.events.append(event)
            if len(self.events) > self.MAX_QUEUED:
                raise ProtocolError("the peer sent replies to commands never sent")
        except (HeaderError, ProtocolError) as exc:
            self.events.clear()  # nothing read from a peer that broke the protocol counts
            self._stop(exc)
            if self.transport is not None:
                self.transport.close()
            return
        self._wake()

    def eof_received(self) -> bool:
        try:
            self.parser.feed_eof()
        except ProtocolError as exc:
            self._stop(exc)
        self._stop(None)
        return True  # keep the socket writable; AGIChannel.close() closes it

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop(AGIHangup(f"AGI connection lost: {exc}") if exc is not None else None)
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)
        self._cancel_timer()

    def _stop(self, exc: BaseException | None) -> None:
        self.eof = True
        if exc is not None and self.error is None:
            self.error = exc
        if self._env is not None and not self._env.done():
            self._env.set_exception(
                self.error if isinstance(self.error, HeaderError)
                else HeaderError("connection closed before the environment block ended")
            )
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    # ----------------------------------------------------------------- session side

    async def read_env(self, timeout: float) -> AGIEnv:
        """The environment block; :class:`HeaderError` or ``TimeoutError`` otherwise."""
        loop = self._loop
        assert loop is not None
        if self._env is None:
            self._env = loop.create_future()
            if self.eof:
                self._stop(None)
        env = self._env
        if env.done():
            return env.result()
        # a plain timer, not asyncio.timeout (a context object and a task lookup per call)
        late = loop.call_later(timeout, self._header_late)
        try:
            return await env
        finally:
            late.cancel()

    def _header_late(self) -> None:
        if self._env is not None and not self._env.done():
            self._env.set_exception(TimeoutError("no environment block in time"))

    def write(self, data: bytes) -> None:
        if self.eof or self.transport is None or self.transport.is_closing():
            if isinstance(self.error, ProtocolError):
                raise self.error
            raise AGIHangup("AGI connection is closed")
        self.transport.write(data)

    def waiter(self, timeout: float) -> asyncio.Future[None]:
        """A future the next reply, the end of the connection or the deadline completes.

        Not a coroutine: :meth:`AGIChannel.command` awaits the future itself, so waiting
        for a reply creates no coroutine of its own (one per command, ~10 a call).
        Raises at once when the connection has ended or the deadline has passed.
        """
        if self.eof:
            if isinstance(self.error, Exception):
                raise self.error
            raise AGIHangup("Asterisk closed the AGI connection")
        loop = self._loop
        assert loop is not None
        if loop.time() >= self.deadline:
            raise ReplyTimeout(f"no reply from Asterisk within {timeout:.1f}s")
        if self._timer is None or self._timer_at > self.deadline:
            self._arm(self.deadline)
        self._waiter = waiter = loop.create_future()
        return waiter

    def start_deadline(self, timeout: float) -> None:
        """The reply to the command just sent is due within ``timeout`` seconds."""
        assert self._loop is not None
        self.deadline = self._loop.time() + timeout

    def forget_waiter(self) -> None:
        """The waiting coroutine is gone (cancelled): nothing is to be woken."""
        self._waiter = None

    def _arm(self, at: float) -> None:
        assert self._loop is not None
        self._cancel_timer()
        self._timer_at = at
        self._timer = self._loop.call_at(at, self._on_timer)

    def _on_timer(self) -> None:
        # one timer per connection: re-armed lazily, since each command pushes the
        # deadline later (arming and cancelling a timer per command cost more)
        self._timer = None
        if self._waiter is None or self.eof:
            return
        assert self._loop is not None
        if self._loop.time() >= self.deadline:
            self._wake()  # the next waiter() call sees the deadline passed
        else:
            self._arm(self.deadline)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        self._cancel_timer()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def wait_closed(self) -> None:
        if self._closed is not None:
            await self._closed


class AGIChannel:
    """Typed AGI verbs for one call. Verbs map 1:1: ``STREAM FILE`` → :meth:`stream_file`."""

    def __init__(
        self,
        env: AGIEnv,
        stream: AGIStream,
        *,
        command_timeout: float = 10.0,
        on_command: Callable[[str, float, str], None] | None = None,
    ) -> None:
        self.env = env
        #: observer of each command: (verb, seconds to its reply, ok|hangup|timeout|error)
        self.on_command = on_command
        self._stream = stream
        self._lock = asyncio.Lock()  # one command in flight
        self.command_timeout = command_timeout
        self.closed = False
        self.commands_sent = 0

    @property
    def hung_up(self) -> bool:
        """Asterisk sent a ``HANGUP`` notice (the caller is gone)."""
        return self._stream.hung_up

    @hung_up.setter
    def hung_up(self, value: bool) -> None:
        self._stream.hung_up = value

    # ----------------------------------------------------------------- plumbing

    async def command(self, verb: str, *args: str | int, timeout: float | None = None) -> Reply:
        """Send one command and return its reply (510/511/520 raised as typed errors).

        One command at a time: a second caller waits for the first reply. A timeout
        leaves the session in an unknown state, so the connection is closed.

        One coroutine per command: ten a call, so the lock is taken and released
        without ``async with`` (two more coroutines) and the reply is awaited as the
        stream's future (:meth:`AGIStream.waiter`), not through a coroutine of its own.
        """
        data = encode_command(verb, *args)
        on_command = self.on_command
        started = time.monotonic() if on_command is not None else 0.0
        result = "error"
        lock = self._lock
        await lock.acquire()  # another coroutine's command in flight: wait for its reply
        try:
            if self.closed:
                raise AGIHangup("AGI connection is closed")
            stream = self._stream
            stream.write(data)
            self.commands_sent += 1
            limit = self.command_timeout if timeout is None else timeout
            stream.start_deadline(limit)
            events = stream.events
            while True:
                if not events:
                    try:
                        await stream.waiter(limit)
                    except BaseException:
                        stream.forget_waiter()
                        raise
                    continue
                reply = events.popleft()
                if reply.code != 100:  # "100 result=0 Trying..." — the real reply follows
                    reply = reply.raise_for_status()
                    result = "ok"
                    return reply
        except ReplyTimeout:
            result = "timeout"
            self.close()
            raise
        except AGIHangup:
            result = "hangup"
            raise
        finally:
            lock.release()
            if on_command is not None:
                on_command(verb, time.monotonic() - started, result)

    async def _failed(self, what: str) -> AGIAppError | AGIHangup:
        """``result=-1``: a hangup, or a failure on a live channel (e.g. missing file)?

        Asterisk sends ``HANGUP`` after the ``-1`` result, sometimes only once the next
        command arrives (transcripts 12 and 30). A NOOP settles it: it still works on a
        dead channel, and any pending ``HANGUP`` arrives before its reply.
        """
        if not self.hung_up:
            try:
                await self.command("NOOP")
            except AGIHangup as exc:
                return exc
        if self.hung_up:
            return AGIHangup(f"{what}: channel hung up")
        return AGIAppError(f"{what} failed (result=-1)")

    def close(self) -> None:
        """Close the socket; Asterisk then ends the AGI with AGISTATUS=SUCCESS."""
        if not self.closed:
            self.closed = True
            self._stream.close()

    async def wait_closed(self) -> None:
        await self._stream.wait_closed()

    # ----------------------------------------------------------------- verbs

    async def answer(self) -> None:
        reply = await self.command("ANSWER")
        if reply.result_int < 0:
            raise await self._failed("ANSWER")

    async def noop(self, message: str = "") -> None:
        if message:
            await self.command("NOOP", message)
        else:
            await self.command("NOOP")

    async def verbose(self, message: str, level: int = 1) -> None:
        await self.command("VERBOSE", message, level)

    async def stream_file(
        self, name: str, escape_digits: str = "", *, offset: int = 0, max_seconds: float = 600.0
    ) -> PlaybackResult:
        """Play ``name`` (from ``offset``, in samples); return the digit that interrupted it.

        A missing file raises AGIAppError. ``endpos`` is where playing stopped: resuming
        from it (``offset=endpos``) plays the rest, as res_agi seeks the stream there.
        """
        args: tuple[str | int, ...] = (name, escape_digits, offset) if offset else (
            name, escape_digits)
        reply = await self.command(
            "STREAM FILE", *args, timeout=max_seconds + self.command_timeout
        )
        code = reply.result_int
        if code < 0:
            raise await self._failed(f"STREAM FILE {name}")
        return PlaybackResult(digit=_digit(code), endpos=reply.endpos or 0)

    async def get_option(
        self, name: str, escape_digits: str, timeout_ms: int, *, max_seconds: float = 600.0
    ) -> PlaybackResult:
        reply = await self.command(
            "GET OPTION",
            name,
            escape_digits,
            timeout_ms,
            timeout=max_seconds + timeout_ms / 1000 + self.command_timeout,
        )
        code = reply.result_int
        if code < 0:
            raise await self._failed(f"GET OPTION {name}")
        return PlaybackResult(digit=_digit(code), endpos=reply.endpos or 0)

    async def get_data(
        self, name: str, timeout_ms: int, max_digits: int, *, max_seconds: float = 600.0
    ) -> GetDataResult:
        """Play ``name`` and collect up to ``max_digits`` (``#`` ends early)."""
        reply = await self.command(
            "GET DATA",
            name,
            timeout_ms,
            max_digits,
            timeout=max_seconds + (max_digits + 1) * timeout_ms / 1000 + self.command_timeout,
        )
        if reply.result == "-1":
            raise await self._failed(f"GET DATA {name}")
        digits = reply.result
        if digits and not all(ch in "0123456789*#ABCD" for ch in digits):
            raise ProtocolError(f"GET DATA result is not digits: {digits!r}")
        return GetDataResult(digits=digits, timed_out=reply.timed_out)

    async def wait_for_digit(self, timeout_ms: int) -> str | None:
        """Wait for one digit; ``None`` on timeout."""
        wait = 24 * 3600.0 if timeout_ms < 0 else timeout_ms / 1000
        reply = await self.command(
            "WAIT FOR DIGIT", timeout_ms, timeout=wait + self.command_timeout
        )
        code = reply.result_int
        if code < 0:
            raise await self._failed("WAIT FOR DIGIT")
        return _digit(code)

    async def say_digits(self, digits: str, escape_digits: str = "") -> str | None:
        if not digits or not (digits.isascii() and digits.isdigit()):
            raise ValueError("SAY DIGITS takes a non-empty string of 0-9")
        reply = await self.command(
            "SAY DIGITS", digits, escape_digits, timeout=len(digits) * 2.0 + self.command_timeout
        )
        code = reply.result_int
        if code < 0:
            raise await self._failed("SAY DIGITS")
        return _digit(code)

    async def set_variable(self, name: str, value: str) -> None:
        await self.command("SET VARIABLE", name, value)

    async def get_variable(self, name: str) -> str | None:
        """Value of a channel variable or function, ``None`` when unset."""
        reply = await self.command("GET VARIABLE", name)
        if reply.result == "0":
            return None
        return reply.data if reply.data is not None else ""

    async def get_full_variable(self, expression: str) -> str:
        reply = await self.command("GET FULL VARIABLE", expression)
        return reply.data or ""

    async def exec(self, application: str, options: str = "") -> int:
        """Run a dialplan application; ``-2`` (unknown application) → AGIAppError."""
        args = (application, options) if options else (application,)
        reply = await self.command("EXEC", *args, timeout=3600.0)
        code = reply.result_int
        if code == -2:
            raise AGIAppError(f"EXEC {application}: no such application")
        return code

    async def hangup(self) -> None:
        try:
            await self.command("HANGUP")
        except AGIDeadChannel:
            self.hung_up = True

    async def channel_status(self) -> int:
        return (await self.command("CHANNEL STATUS")).result_int
