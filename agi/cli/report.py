"""``consent-ivr report CAMPAIGN [--from DAY] [--to DAY] [--html FILE] [--json [FILE]]``.

Read-only (works with the ``consent_ivr_readonly`` login). Without ``--html``/``--json``
it prints a short text summary. Exit code 0 when the report finds no breach, 1 when it
does (marketing played without a valid opt-in, a call outside calling hours, or a broken
ledger chain), so it can gate a campaign sign-off script.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import date
from pathlib import Path
from typing import Any

from agi.cli.table import Command

__all__: list[str] = []


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD)") from None


def _args(p: argparse.ArgumentParser) -> None:
    p.description = ("campaign compliance report: funnel per day, refusals, opt-out rate, "
                     "calling hours, the must-be-zero counter, ledger chain status")
    p.add_argument("campaign", help="campaign name (or id)")
    p.add_argument("--from", dest="period_from", type=_day, default=None,
                   help="first day (YYYY-MM-DD, inclusive; default: campaign creation)")
    p.add_argument("--to", dest="period_to", type=_day, default=None,
                   help="last day (YYYY-MM-DD, inclusive; default: today)")
    p.add_argument("--tz", default="UTC", help="time zone of the calendar days (default UTC)")
    p.add_argument("--html", type=Path, default=None, metavar="FILE",
                   help="write the self-contained HTML page here")
    p.add_argument("--json", nargs="?", const="-", default=None, metavar="FILE",
                   help="JSON to FILE, or to stdout without one")


async def cmd_report(settings: Any, args: argparse.Namespace) -> int:
    from zoneinfo import ZoneInfoNotFoundError

    from agi.ledger.database import CommandError, open_pool
    from agi.reports.campaign import ReportError, build_report, render_html

    try:
        async with open_pool(settings) as pool:
            report = await build_report(
                pool, args.campaign, period_from=args.period_from, period_to=args.period_to,
                tz=args.tz,
            )
    except (ReportError, ZoneInfoNotFoundError, ValueError) as exc:
        raise CommandError(str(exc)) from exc
    if args.html is not None:
        await _write(args.html, render_html(report))
        print(f"report written to {args.html}", file=sys.stderr)
    if args.json is not None:
        text = json.dumps(report.to_json(), indent=2, ensure_ascii=False)
        if args.json == "-":
            print(text)
        else:
            await _write(Path(args.json), text + "\n")
    if args.html is None and args.json is None:
        t = report.totals
        print(f"campaign {report.campaign['name']} ({report.campaign['status']}), "
              f"{report.period_from:%Y-%m-%d}..{report.period_to:%Y-%m-%d} {report.tz}")
        print(f"  contacts {t.contacts}  allowed {t.allowed}  dialled {t.dialled}  "
              f"answered {t.answered}  played {t.played}  opted out {t.opted_out}")
        print(f"  played without a valid opt-in: {report.played_without_consent}")
        print(f"  outside calling hours: {report.calling_hours['outside']} of "
              f"{report.calling_hours['dialled']}")
        print(f"  ledger chain: {report.chain.get('status')}")
    return 0 if report.compliant else 1


async def _write(path: Path, text: str) -> None:
    from agi.ledger.database import CommandError

    try:
        await asyncio.to_thread(path.write_text, text, encoding="utf-8")
    except OSError as exc:
        raise CommandError(f"cannot write {path}: {exc.strerror}") from exc


#: what this module adds to ``consent-ivr`` (listed in agi.cli.main.command_table)
COMMANDS = (
    Command("report", _args, cmd_report, help="campaign compliance report (HTML or JSON)"),
)
