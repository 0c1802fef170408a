"""A long-running command (``serve``, ``dialer``) as named phases, stopped in reverse order.

Each phase that holds something (the database pool, the AGI listener, the exporter, a
background loop) is entered through :meth:`Service.enter`, :meth:`Service.on_stop` or
:meth:`Service.background`, and is undone when the ``async with`` block ends, however it
ends: a phase that fails to start unwinds the ones before it, and a stop that fails is
logged and does not keep the others from running. The signals are the service's own
(:class:`agi.ops.signals.StopSignals`): the first SIGTERM/SIGINT sets :attr:`Service.stop`,
a second sets :attr:`Service.stop_now`.

    async with Service("serve") as service:
        pool = await service.enter("database", open_pool(settings))
        service.background("journal replay", replay_forever(pool, service.stop))
        await server.serve_until(service.stop, now=service.stop_now)
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Any, TypeVar

import structlog

from agi.ops.logs import error_summary
from agi.ops.signals import StopSignals

__all__ = ["Service"]

log = structlog.get_logger("agi.cli.service")

_T = TypeVar("_T")


class Service:
    """The phases of one long-running command; see the module docstring."""

    def __init__(self, name: str, signals: StopSignals | None = None) -> None:
        self.name = name
        self.signals = signals if signals is not None else StopSignals()
        self._stack = contextlib.AsyncExitStack()
        self._started = time.monotonic()
        #: phases started so far, in order (what a shutdown will undo, in reverse)
        self.phases: list[str] = []

    @property
    def stop(self) -> asyncio.Event:
        """Set by the first SIGTERM/SIGINT: stop taking work, finish what is in hand."""
        return self.signals.requested

    @property
    def stop_now(self) -> asyncio.Event:
        """Set by a second signal: cut what is still in hand."""
        return self.signals.now

    async def __aenter__(self) -> Service:
        self.signals.install()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        log.info("service_stopping", service=self.name, phases=len(self.phases))
        await self._stack.aclose()
        log.info("service_stopped", service=self.name,
                 uptime_s=round(time.monotonic() - self._started, 1))

    async def enter(self, phase: str, manager: AbstractAsyncContextManager[_T]) -> _T:
        """Start ``phase`` by entering ``manager``; it is exited at shutdown."""
        value = await self._stack.enter_async_context(manager)
        self._began(phase)
        return value

    def on_stop(self, phase: str, stop: Callable[[], Awaitable[Any]]) -> None:
        """``phase`` has started; run ``stop()`` at shutdown (a failure is logged, not raised)."""

        async def undo() -> None:
            try:
                await stop()
            except Exception as exc:  # noqa: BLE001 - one failed stop must not skip the others
                log.error("service_phase_stop_failed", service=self.name, phase=phase,
                          error=error_summary(exc))

        self._stack.push_async_callback(undo)
        self._began(phase)

    def background(self, phase: str, work: Coroutine[Any, Any, None], *,
                   until: asyncio.Event | None = None) -> asyncio.Task[None]:
        """Run ``work`` as a task; at shutdown set ``until`` (when given) and wait for the task
        to finish on its own, else cancel it."""
        task = asyncio.create_task(work, name=f"{self.name}:{phase}")

        async def finish() -> None:
            if until is not None:
                until.set()
                await task
                return
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

        self.on_stop(phase, finish)
        return task

    def _began(self, phase: str) -> None:
        self.phases.append(phase)
        log.debug("service_phase_started", service=self.name, phase=phase)
