"""One AGI session over asyncio streams: typed verbs on top of :mod:`agi.protocol`.

This is the only module that reads or writes the FastAGI socket. It keeps strictly
one command in flight (real Asterisk aborts a running STREAM FILE / GET DATA when
any byte arrives, and sends no reply for the aborted command), skips ``HANGUP``
notifications wherever they appear, and turns every failure into a typed error.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from agi.protocol import (
    AGIAppError,
    AGIDeadChannel,
    AGIEnv,
    AGIHangup,
    HangupNotice,
    ProtocolError,
    Reply,
    ReplyParser,
    encode_command,
)

__all__ = ["Channel", "GetDataResult", "PlaybackResult", "ReplyTimeout"]

_READ_CHUNK: Final = 4096


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


class Channel:
    """Typed AGI verbs for one call. Verbs map 1:1: ``STREAM FILE`` → :meth:`stream_file`."""

    def __init__(
        self,
        env: AGIEnv,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        parser: ReplyParser | None = None,
        pending: bytes = b"",
        command_timeout: float = 10.0,
        on_command: Callable[[str, float, str], None] | None = None,
    ) -> None:
        self.env = env
        #: observer of each command: (verb, seconds to its reply, ok|hangup|timeout|error)
        self.on_command = on_command
        self._reader = reader
        self._writer = writer
        self._parser = parser or ReplyParser()
        self._events: list[Reply] = []
        self._lock = asyncio.Lock()
        self.command_timeout = command_timeout
        self.hung_up = False
        self.closed = False
        self.commands_sent = 0
        if pending:
            self._accept(self._parser.feed(pending))

    # ----------------------------------------------------------------- plumbing

    def _accept(self, events: list[Reply | HangupNotice]) -> None:
        for event in events:
            if isinstance(event, HangupNotice):
                self.hung_up = True
            else:
                self._events.append(event)

    async def _next_reply(self, timeout: float) -> Reply:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            while self._events:
                reply = self._events.pop(0)
                if reply.code == 100:  # "100 result=0 Trying..." — the real reply follows
                    continue
                return reply
            if self._parser.eof:
                raise AGIHangup("Asterisk closed the AGI connection")
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise ReplyTimeout(f"no reply from Asterisk within {timeout:.1f}s")
            try:
                # asyncio.timeout, not wait_for: wait_for wraps every read in a new Task
                # (3.11); measured ~5 % of the server's CPU per call, 0.9 KiB per waiting call
                async with asyncio.timeout(remaining):
                    data = await self._reader.read(_READ_CHUNK)
            except TimeoutError:
                raise ReplyTimeout(f"no reply from Asterisk within {timeout:.1f}s") from None
            except (ConnectionError, OSError) as exc:
                self._parser.eof = True
                raise AGIHangup(f"AGI connection lost: {exc}") from exc
            if not data:
                self._parser.feed_eof()
                continue
            self._accept(self._parser.feed(data))

    async def command(self, verb: str, *args: str | int, timeout: float | None = None) -> Reply:
        """Send one command and return its reply (510/511/520 raised as typed errors).

        One command at a time: a second caller waits for the first reply. A timeout
        leaves the session in an unknown state, so the connection is closed.
        """
        if self.on_command is None:
            return await self._command(verb, *args, timeout=timeout)
        started = time.monotonic()
        result = "error"
        try:
            reply = await self._command(verb, *args, timeout=timeout)
            result = "ok"
            return reply
        except ReplyTimeout:
            result = "timeout"
            raise
        except AGIHangup:
            result = "hangup"
            raise
        finally:
            self.on_command(verb, time.monotonic() - started, result)

    async def _command(self, verb: str, *args: str | int, timeout: float | None) -> Reply:
        data = encode_command(verb, *args)
        async with self._lock:
            if self.closed or self._parser.eof:
                raise AGIHangup("AGI connection is closed")
            try:
                self._writer.write(data)
                await self._writer.drain()
            except (ConnectionError, OSError) as exc:
                self._parser.eof = True
                raise AGIHangup(f"AGI connection lost: {exc}") from exc
            self.commands_sent += 1
            try:
                reply = await self._next_reply(self.command_timeout if timeout is None else timeout)
            except ReplyTimeout:
                self.close()
                raise
            return reply.raise_for_status()

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
            self._writer.close()

    async def wait_closed(self) -> None:
        try:
            await self._writer.wait_closed()
        except (ConnectionError, OSError):
            pass

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
        self, name: str, escape_digits: str = "", *, max_seconds: float = 600.0
    ) -> PlaybackResult:
        """Play ``name``; return the digit that interrupted it. Missing file → AGIAppError."""
        reply = await self.command(
            "STREAM FILE", name, escape_digits, timeout=max_seconds + self.command_timeout
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
