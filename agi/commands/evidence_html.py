"""``consent-ivr evidence-html NUMBER --html FILE``: the evidence export as a readable page.

A separate command because ``evidence`` (:mod:`agi.commands.ledger_tools`) belongs to
the reliability work; it renders the same document (:func:`agi.evidence.build_evidence`)
with :func:`agi.report.render_evidence_html`, a page a caller or a regulator can be given.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from agi.commands import Command

__all__: list[str] = []


def _args(p: argparse.ArgumentParser) -> None:
    p.description = "write the evidence export of one number as a self-contained HTML page"
    p.add_argument("number")
    p.add_argument("--html", type=Path, required=True, metavar="FILE")


async def cmd_evidence_html(settings: Any, args: argparse.Namespace) -> int:
    from agi.database import CommandError, open_pool
    from agi.numbers import normalise
    from agi.report import render_evidence_html

    try:
        from agi.evidence import build_evidence
    except ImportError as exc:
        raise CommandError("the evidence export (agi.evidence) is not installed") from exc
    number = normalise(args.number, settings.default_region)
    if number is None:
        raise CommandError(
            f"{args.number!r} is not a valid phone number (region {settings.default_region})"
        )
    async with open_pool(settings) as pool:
        evidence = await build_evidence(pool, number)
    try:
        await asyncio.to_thread(args.html.write_text, render_evidence_html(evidence),
                                encoding="utf-8")
    except OSError as exc:
        raise CommandError(f"cannot write {args.html}: {exc.strerror}") from exc
    print(f"evidence for {number} written to {args.html}", file=sys.stderr)
    return 0


#: what this module adds to ``consent-ivr`` (listed in agi.cli.command_table)
COMMANDS = (
    Command("evidence-html", _args, cmd_evidence_html,
            help="evidence of one number as a self-contained HTML page"),
)
