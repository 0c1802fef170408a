"""Stopping a long-running command (``serve``, ``dialer``): one signal drains, two stop now.

The first SIGTERM or SIGINT sets :attr:`StopSignals.requested`: ``serve`` stops accepting
calls and lets those in progress finish, up to ``CONSENT_IVR_DRAIN_TIMEOUT``; the dialer stops
originating. A second one during that wait sets :attr:`StopSignals.now`: ``serve`` cuts the
remaining calls at once, exactly as a drain timeout does (each keeps
``CONSENT_RESULT=error``, no consent, an ``interrupted`` attempt is filed). An operator who
presses Ctrl-C twice means it.
"""

from __future__ import annotations

import asyncio
import signal

import structlog

__all__ = ["StopSignals", "wait_any"]

log = structlog.get_logger("agi.ops.signals")


class StopSignals:
    """``requested`` after the first SIGTERM/SIGINT, ``now`` after the second."""

    def __init__(self) -> None:
        self.requested = asyncio.Event()
        self.now = asyncio.Event()

    def install(self, loop: asyncio.AbstractEventLoop | None = None) -> StopSignals:
        loop = loop or asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.received, sig.name)
        return self

    def received(self, name: str = "SIGTERM") -> None:
        """One signal arrived (the handler; tests call it directly)."""
        if not self.requested.is_set():
            log.info("stop_requested", signal=name, again_to="stop at once")
            self.requested.set()
        elif not self.now.is_set():
            log.warning("stop_now", signal=name)
            self.now.set()


async def wait_any(*events: asyncio.Event, timeout: float | None = None) -> None:
    """Wait until one of ``events`` is set, or ``timeout`` seconds have passed.

    What a background loop sleeps on: its stop event and the event that brings it new work
    (the dialer's campaign changes, the call bookkeeping's queue).
    """
    waits = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
