"""``consent-ivr verify-ledger`` and ``consent-ivr evidence NUMBER``: read-only audits.

Both work with a ``consent_ivr_readonly`` login. ``verify-ledger`` exits 0 when the
hash chain holds and 1 at the first broken link (printed with the event id and what
is wrong), so a cron job or a monitor can alert on it.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from agi.cli.table import Command

__all__: list[str] = []


def _verify_args(p: argparse.ArgumentParser) -> None:
    p.description = "walk the consent_event hash chain and report the first broken link"
    p.add_argument("--json", action="store_true")


async def cmd_verify_ledger(settings: Any, args: argparse.Namespace) -> int:
    from agi.ledger.chain import verify_chain
    from agi.ledger.database import open_pool

    async with open_pool(settings) as pool:
        report = await verify_chain(pool)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    elif report.ok:
        print(f"ledger OK: {report.checked} event(s) verified; chain head {report.head_hash}")
    else:
        brk = report.first_break
        assert brk is not None
        print(f"ledger BROKEN at event {brk.id} ({brk.kind}): {brk.detail}")
        if brk.expected or brk.found:
            print(f"  expected {brk.expected}\n  found    {brk.found}")
        print(f"  {report.checked} event(s) before it verified")
    return 0 if report.ok else 1


def _evidence_args(p: argparse.ArgumentParser) -> None:
    p.description = ("export everything about one number: events, prompts heard, attempts, "
                     "call ids and the chain proof")
    p.add_argument("number")
    p.add_argument("--json", action="store_true", help="JSON instead of text")


async def cmd_evidence(settings: Any, args: argparse.Namespace) -> int:
    from agi.ledger.database import CommandError, open_pool
    from agi.ledger.evidence import build_evidence, render_text
    from agi.ledger.numbers import normalise

    number = normalise(args.number, settings.default_region)
    if number is None:
        raise CommandError(
            f"{args.number!r} is not a valid phone number (region {settings.default_region})"
        )
    async with open_pool(settings) as pool:
        evidence = await build_evidence(pool, number)
    if args.json:
        print(json.dumps(evidence, indent=2, ensure_ascii=False))
    else:
        print(render_text(evidence), end="")
    return 0


#: what this module adds to ``consent-ivr`` (listed in agi.cli.main.command_table)
COMMANDS = (
    Command("verify-ledger", _verify_args, cmd_verify_ledger,
            help="walk the ledger's hash chain; name the first broken link"),
    Command("evidence", _evidence_args, cmd_evidence,
            help="everything about one number, with the chain proof"),
)
