"""The shapes of the two tables: a :class:`Command`, and the :class:`RouteDeps` of a route factory.

Each command module of :mod:`agi.cli` defines ``COMMANDS``, a tuple of :class:`Command`; a
route is a factory ``(settings, deps) -> handler``. :mod:`agi.cli.main` names every one of
them in its two tables (:func:`agi.cli.main.command_table`, :func:`agi.cli.main.route_table`),
so what the command line and the server offer is read in one place, and nothing registers
itself on import: a module that fails to import stops the command line, it never silently
drops a command.
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["Command", "RouteDeps"]


@dataclass(frozen=True, slots=True)
class Command:
    """``consent-ivr NAME``: ``add_arguments(parser)``; ``handler(settings, args)`` → exit code."""

    name: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    handler: Callable[[Any, argparse.Namespace], Awaitable[int]]
    help: str


@dataclass(frozen=True, slots=True)
class RouteDeps:
    """What ``serve`` hands every route factory: the pool, the decision store, the prompts,
    the process's metrics (passed in, never fetched from a global)."""

    pool: Any
    store: Any
    prompts: Any
    metrics: Any = None
