"""What a flow gets for one call: the AGI session (``agi``), its environment, timing, a logger."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from agi.wire.channel import AGIChannel
from agi.wire.protocol import AGIEnv

__all__ = ["Call", "HeardPrompt", "PressedKey", "RouteHandler"]


class HeardPrompt(Protocol):
    """What the ``call_finished`` line reads of a prompt played (the ledger's ``PromptHeard``)."""

    @property
    def id(self) -> str: ...


class PressedKey(Protocol):
    """What the ``call_finished`` line reads of a key (the ledger's ``DigitPress``)."""

    @property
    def digit(self) -> str: ...

    @property
    def ignored(self) -> bool: ...


@dataclass(slots=True)
class Call:
    """One FastAGI session, as handed to a route handler."""

    agi: AGIChannel
    route: str
    params: dict[str, str]
    call_id: str
    log: Any
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    started_mono: float = field(default_factory=time.monotonic)
    #: set by the flow for the ``call_finished`` log line (e.g. ``opted_in``)
    outcome: str = "unknown"
    # The rest of the call's one canonical ``call_finished`` line, filled in by the flow
    # as it learns them (the Dialogue hands the call its own lists ``heard`` and ``digits``).
    purpose: str | None = None
    number: str | None = None
    decision: str | None = None
    event_id: int | None = None
    journaled: bool = False
    commit_ms: int | None = None
    heard: Sequence[HeardPrompt] = ()
    digits: Sequence[PressedKey] = ()

    @property
    def env(self) -> AGIEnv:
        return self.agi.env

    def offset_ms(self) -> int:
        """Milliseconds since the call reached the server."""
        return int((time.monotonic() - self.started_mono) * 1000)


RouteHandler = Callable[[Call], Awaitable[None]]
