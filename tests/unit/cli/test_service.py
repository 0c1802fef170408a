"""The Service of ``serve`` and ``dialer``: phases start in order and stop in reverse, always."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from agi.cli.service import Service
from agi.ops.signals import StopSignals


class Quiet(StopSignals):
    """Signals a test sets by hand (installing real handlers would catch pytest's Ctrl-C)."""

    def install(self, loop: asyncio.AbstractEventLoop | None = None) -> StopSignals:
        return self


def service(name: str = "test") -> Service:
    return Service(name, signals=Quiet())


@contextlib.asynccontextmanager
async def resource(name: str, log: list[str]) -> AsyncIterator[str]:
    log.append(f"open {name}")
    try:
        yield name
    finally:
        log.append(f"close {name}")


async def test_phases_stop_in_reverse_order() -> None:
    log: list[str] = []

    async def stop(what: str) -> None:
        log.append(f"stop {what}")

    async with service() as s:
        assert await s.enter("database", resource("db", log)) == "db"
        s.on_stop("listener", lambda: stop("listener"))
        s.on_stop("exporter", lambda: stop("exporter"))
        assert s.phases == ["database", "listener", "exporter"]
    assert log == ["open db", "stop exporter", "stop listener", "close db"]


async def test_a_failing_stop_is_logged_and_the_rest_still_stop() -> None:
    log: list[str] = []

    async def broken() -> None:
        raise RuntimeError("exporter would not close")

    async with service() as s:
        await s.enter("database", resource("db", log))
        s.on_stop("exporter", broken)
    assert log == ["open db", "close db"]


async def test_a_phase_that_fails_to_start_unwinds_the_ones_before() -> None:
    log: list[str] = []
    with pytest.raises(OSError, match="address in use"):
        async with service() as s:
            await s.enter("database", resource("db", log))
            raise OSError("address in use")  # e.g. the AGI listener cannot bind
    assert log == ["open db", "close db"]


async def test_background_work_is_cancelled_or_stopped_by_its_own_event() -> None:
    cancelled = asyncio.Event()
    flushed: list[str] = []

    async def forever() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def bookkeeping(until: asyncio.Event) -> None:
        await until.wait()
        flushed.append("last flush")  # work a cancel would lose: it must end on its own

    until = asyncio.Event()
    async with service() as s:
        replay = s.background("replay", forever())
        books = s.background("bookkeeping", bookkeeping(until), until=until)
        await asyncio.sleep(0)
    assert cancelled.is_set() and replay.cancelled()
    assert books.done() and not books.cancelled() and flushed == ["last flush"]


async def test_the_stop_events_are_the_signals() -> None:
    async with service() as s:
        s.signals.received("SIGTERM")
        assert s.stop.is_set() and not s.stop_now.is_set()
        s.signals.received("SIGINT")
        assert s.stop_now.is_set()
