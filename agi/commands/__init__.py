"""Feature subcommands and routes, registered with the CLI.

Each module here calls :func:`register_command` and/or :func:`register_route` at
import time; :func:`agi.cli.main` imports them all (``pkgutil``), so adding a feature
never means editing the CLI core.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
from collections.abc import Awaitable, Callable
from typing import Any

from agi import cli

__all__ = ["register_command", "register_route"]


def register_command(
    name: str,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    handler: Callable[[Any, argparse.Namespace], Awaitable[int]],
    help: str | None = None,
) -> None:
    """Add ``consent-ivr NAME``; ``handler(settings, args)`` returns the exit code."""
    cli.EXTRA_COMMANDS[name] = (add_arguments, handler)
    if help:
        cli.COMMAND_HELP[name] = help


def register_route(name: str, factory: Callable[..., Any]) -> None:
    """Add an AGI route; ``factory(settings, pool, store, prompts)`` returns the handler."""
    cli.ROUTE_FACTORIES[name] = factory


for _info in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_info.name}")
