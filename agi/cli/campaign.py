"""``consent-ivr campaign | contacts | suppression | screen | dial | dialer``."""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import sys
import time as clock
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

from agi.cli.table import Command
from agi.ledger.database import CommandError, open_pool
from agi.ops.config import Settings
from agi.outbound import policy
from agi.outbound.gate import JournalUnreadable, journal_opt_outs
from agi.outbound.model import LISTS, Campaign, CampaignError, CampaignSpec, RejectedRow
from agi.outbound.stores import OutboundStores

__all__: list[str] = []


def _window(text: str | None) -> tuple[time, time] | None:
    if not text:
        return None
    try:
        start, end = text.split("-", 1)
        return time.fromisoformat(start.strip()), time.fromisoformat(end.strip())
    except ValueError:
        raise CommandError(f"--window {text!r}: use HH:MM-HH:MM, e.g. 09:00-20:00") from None


def _stores(pool: Any, settings: Settings) -> OutboundStores:
    return OutboundStores.over(pool, timeout=max(settings.db_timeout, 10.0))


def _print_campaign(c: Campaign, stats: dict[str, Any] | None = None) -> None:
    data = c.to_json()
    width = max(len(k) for k in data)
    for key, value in data.items():
        print(f"{key:<{width}}  {value}")
    if stats:
        print(f"{'contacts':<{width}}  {stats['contacts']}")
        print(f"{'marketing plays':<{width}}  {stats['marketing_plays']} "
              f"(refused {stats['marketing_refused']}, blocked {stats['plays_blocked']})")
        print(f"{'unconsented plays':<{width}}  {stats['unconsented_plays']}  (must be 0)")


# --------------------------------------------------------------------------- campaign


def _campaign_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True)
    c = sub.add_parser("create", help="define a campaign")
    c.add_argument("name")
    c.add_argument("--organisation", default=None, help="who is calling (default: settings)")
    c.add_argument("--purpose", default=None, help="consent purpose (default: settings)")
    c.add_argument("--profile", default=policy.DEFAULT_PROFILE, choices=sorted(policy.PROFILES))
    c.add_argument("--audio", default="campaign-demo", help="prompt id of the campaign audio")
    c.add_argument("--window", default=None, help="campaign calling window HH:MM-HH:MM "
                   "(callee's local time, on top of the profile's)")
    c.add_argument("--caller-id", required=True, help="E.164 number to present")
    c.add_argument("--dial", required=True, help="channel template, e.g. PJSIP/{number}@trunk")
    c.add_argument("--region", default=None, help="region for national numbers in imports")
    c.add_argument("--cps", type=float, default=1.0, help="calls per second")
    c.add_argument("--max-concurrent", type=int, default=10)
    c.add_argument("--max-attempts", type=int, default=3)
    c.add_argument("--retry-spacing", type=float, default=240, help="minutes between attempts")
    c.add_argument("--ring", type=int, default=25, help="seconds to ring")
    c.add_argument("--opt-out-key", default="9")
    c.add_argument("--reconfirm", action="store_true",
                   help="before the campaign audio, ask callees to re-confirm their opt-in "
                   "(1 keeps it, recorded anew; the opt-out key stops the calls)")
    s = sub.add_parser("show", help="one campaign with its counters")
    s.add_argument("name")
    s.add_argument("--json", action="store_true")
    sub.add_parser("list", help="every campaign")
    for action, text in (("pause", "stop dialling"), ("resume", "dial again (clears a halt)")):
        a = sub.add_parser(action, help=text)
        a.add_argument("name")


async def _campaign(settings: Settings, args: argparse.Namespace) -> int:
    # only create may set up a database; list/show read, pause/resume need a campaign
    async with open_pool(settings, migrate=args.action == "create") as pool:
        campaigns = _stores(pool, settings).campaigns
        try:
            if args.action == "create":
                spec = CampaignSpec(
                    name=args.name,
                    organisation=args.organisation or settings.organisation,
                    purpose=args.purpose or settings.default_purpose,
                    caller_id=args.caller_id,
                    dial_template=args.dial,
                    profile=args.profile,
                    audio_prompt=args.audio,
                    window=_window(args.window),
                    default_region=args.region or settings.default_region,
                    pacing_cps=args.cps,
                    max_concurrent=args.max_concurrent,
                    max_attempts=args.max_attempts,
                    retry_spacing=timedelta(minutes=args.retry_spacing),
                    ring_seconds=args.ring,
                    opt_out_key=args.opt_out_key,
                    reconfirm=args.reconfirm,
                )
                _print_campaign(await campaigns.create_campaign(spec))
            elif args.action == "list":
                for c in await campaigns.list_campaigns():
                    print(f"{c.id:>4}  {c.name:<24} {c.status:<7} {c.profile:<12} "
                          f"{c.organisation} / {c.purpose}")
            elif args.action == "show":
                c = await campaigns.require_campaign(args.name)
                stats = await campaigns.campaign_stats(c.id)
                if args.json:
                    print(json.dumps({**c.to_json(), **stats}, indent=2, default=str))
                else:
                    _print_campaign(c, stats)
            else:
                c = await campaigns.require_campaign(args.name)
                await campaigns.set_status(c.id, "paused" if args.action == "pause" else "active")
                print(f"campaign {c.name} {'paused' if args.action == 'pause' else 'active'}")
        except CampaignError as exc:
            raise CommandError(str(exc)) from exc
    return 0


# --------------------------------------------------------------------------- lists


def _report_rejected(rows: list[RejectedRow], what: str) -> None:
    for r in rows:
        print(f"line {r.line}: {what}: {r.reason}: {r.raw!r}", file=sys.stderr)


def _contacts_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True)
    i = sub.add_parser("import", help="add numbers from a CSV (column number/phone, or first)")
    i.add_argument("campaign")
    i.add_argument("file", type=Path)


async def _contacts(settings: Settings, args: argparse.Namespace) -> int:
    try:
        text = args.file.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise CommandError(f"cannot read {args.file}: {exc.strerror}") from exc
    async with open_pool(settings, migrate=True) as pool:
        stores = _stores(pool, settings)
        try:
            campaign = await stores.campaigns.require_campaign(args.campaign)
            report = await stores.lists.import_contacts(campaign, text, source=args.file.name)
        except CampaignError as exc:
            raise CommandError(str(exc)) from exc
    _report_rejected(report.rejected, "rejected")
    _report_rejected(report.duplicates, "duplicate")
    print(f"{report.rows} rows: {report.added} added, {report.already_present} already in the "
          f"campaign, {len(report.duplicates)} duplicates in the file, "
          f"{len(report.rejected)} rejected")
    return 1 if report.rejected else 0


def _suppression_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True)
    i = sub.add_parser("import", help="load a full snapshot of one list (COPY)")
    i.add_argument("--list", required=True, choices=LISTS, dest="list_name")
    i.add_argument("--as-of", required=True, type=date.fromisoformat,
                   help="date of the snapshot (YYYY-MM-DD): drives the staleness rule")
    i.add_argument("--region", default=None, help="region for national numbers")
    i.add_argument("file", type=Path)


def _lines(path: Path) -> Iterator[str]:
    with path.open(encoding="utf-8-sig", errors="replace") as fh:
        yield from fh


async def _suppression(settings: Settings, args: argparse.Namespace) -> int:
    if not args.file.is_file():
        raise CommandError(f"cannot read {args.file}")
    started = clock.monotonic()
    async with open_pool(settings) as pool:  # read-only: never creates a database
        stores = _stores(pool, settings)
        try:
            report = await stores.lists.import_suppression(
                args.list_name, args.as_of, _lines(args.file),
                region=args.region or settings.default_region, source=args.file.name,
            )
        except CampaignError as exc:
            raise CommandError(str(exc)) from exc
    _report_rejected(report.rejected, "rejected")
    print(f"{args.list_name} snapshot {report.snapshot_id} as of {args.as_of}: "
          f"{report.numbers} numbers, {len(report.rejected)} rejected, "
          f"{clock.monotonic() - started:.1f}s"
          + (f" (replaced snapshot {report.replaced_snapshot})"
             if report.replaced_snapshot else ""))
    return 0


# --------------------------------------------------------------------------- screen


def _screen_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("campaign")
    p.add_argument("--at", default=None,
                   help="ISO time to screen for (default now), e.g. 2025-03-30T09:00:00+01:00")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="per-number detail as JSON")
    fmt.add_argument("--csv", action="store_true", help="per-number detail as CSV")


async def _screen(settings: Settings, args: argparse.Namespace) -> int:
    at = datetime.now(UTC)
    if args.at:
        try:
            at = datetime.fromisoformat(args.at)
        except ValueError:
            raise CommandError(f"--at {args.at!r} is not an ISO date-time") from None
        if at.tzinfo is None:
            raise CommandError("--at needs a UTC offset (e.g. Z or +01:00)")
    started = clock.monotonic()
    async with open_pool(settings) as pool:  # read-only: never creates a database
        stores = _stores(pool, settings)
        try:
            campaign = await stores.campaigns.require_campaign(args.campaign)
            journal = await asyncio.to_thread(journal_opt_outs, settings.journal_dir,
                                              campaign.organisation)
        except CampaignError as exc:
            raise CommandError(str(exc)) from exc
        except JournalUnreadable as exc:
            raise CommandError(str(exc)) from exc
        counts: dict[str, int] = {}
        if args.json or args.csv:
            writer = csv.writer(sys.stdout) if args.csv else None
            if writer:
                writer.writerow(["number", "outcome", "reason", "consent_event_id", "state"])
            else:
                sys.stdout.write("[")
            first = True
            async for row in stores.screening.screen_rows(campaign, at, sorted(journal)):
                counts[row.reason] = counts.get(row.reason, 0) + 1
                outcome = "allowed" if row.reason == policy.ALLOWED else "refused"
                if writer:
                    writer.writerow([row.number_e164, outcome, row.reason,
                                     row.consent_event_id or "", row.state])
                else:
                    sys.stdout.write(("\n" if first else ",\n") + json.dumps({
                        "number": row.number_e164, "outcome": outcome, "reason": row.reason,
                        "consent_event_id": row.consent_event_id, "state": row.state}))
                    first = False
            if not writer:
                sys.stdout.write("\n]\n")
        else:
            counts = await stores.screening.screen_counts(campaign, at, sorted(journal))
    elapsed = clock.monotonic() - started
    total = sum(counts.values())
    out = sys.stderr if (args.json or args.csv) else sys.stdout
    print(f"campaign {campaign.name} ({campaign.profile}) at {at.isoformat()}: {total} numbers, "
          f"{counts.get(policy.ALLOWED, 0)} could be called lawfully now "
          f"[{elapsed:.2f}s]", file=out)
    for reason, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        print(f"  {reason:<26} {n:>9}", file=out)
    return 0


# --------------------------------------------------------------------------- dialling


def _dial_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("campaign")
    p.add_argument("--worker", default=None, help="worker name (default host-pid)")


def _dialer_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--worker", default=None, help="worker name (default host-pid)")


async def _run_dialer(settings: Settings, args: argparse.Namespace, campaign: str | None) -> int:
    """``dial`` (one campaign to completion) and ``dialer`` (the worker, with its exporter).

    Only the long-running worker listens on ``CONSENT_IVR_METRICS_ADDR``: a one-off ``dial``
    on a host where ``serve`` already holds that address must not fail for it.
    """
    import os
    import socket

    from agi.cli.service import Service
    from agi.ledger.migrations import pending_migrations
    from agi.ops.config import ConfigError
    from agi.ops.metrics import Metrics, Readiness, start_exporter
    from agi.outbound.ami import AmiClient, AmiError
    from agi.outbound.dialer import Dialer, DialerConfig

    if not settings.ami_secret:
        raise CommandError("CONSENT_IVR_AMI_SECRET is not set (AMI login for the dialer)")
    worker = args.worker or f"{socket.gethostname()}-{os.getpid()}"
    metrics = Metrics(refusal_reasons=policy.REASONS)
    async with Service("dialer" if campaign is None else "dial") as service:
        pool = await service.enter("database", open_pool(settings, migrate=True))
        stores = _stores(pool, settings)
        target = None
        if campaign is not None:
            try:
                target = await stores.campaigns.require_campaign(campaign)
            except CampaignError as exc:
                raise CommandError(str(exc)) from exc
        if target is None:
            try:
                exporter = await start_exporter(
                    settings.metrics_addr, metrics,
                    Readiness(pool, None, pending_migrations=pending_migrations,
                              timeout=settings.db_timeout, metrics=metrics))
            except ConfigError as exc:
                hint = (" (if `consent-ivr serve` runs on this host it holds that address: give "
                        "the dialer its own, e.g. CONSENT_IVR_METRICS_ADDR=127.0.0.1:9465)"
                        if "cannot listen" in str(exc) else "")
                raise CommandError(f"{exc}{hint}") from exc
            if exporter is not None:
                service.on_stop("metrics exporter", exporter.close)
        ami = AmiClient(settings.ami_host, settings.ami_port, settings.ami_user,
                        settings.ami_secret)
        try:
            await ami.connect()
        except AmiError as exc:
            raise CommandError(str(exc)) from exc
        service.on_stop("AMI session", ami.close)
        config = DialerConfig(worker=worker, journal_dir=settings.journal_dir,
                              exit_on_block=target is not None,
                              exit_when_done=target is not None)
        dialer = Dialer(stores.campaigns, stores.claims, ami, config, metrics=metrics)
        # the first signal stops originating at once; calls already up end on their own
        if target is not None:
            why = await dialer.run_campaign(target.id, service.stop)
            print(f"campaign {target.name}: {why}")
            return 0 if why in ("done", "stopped") else 3
        await dialer.run_all(service.stop)
        return 0


async def _dial(settings: Settings, args: argparse.Namespace) -> int:
    return await _run_dialer(settings, args, args.campaign)


async def _dialer(settings: Settings, args: argparse.Namespace) -> int:
    return await _run_dialer(settings, args, None)


#: what this module adds to ``consent-ivr`` (listed in agi.cli.main.command_table)
COMMANDS = (
    Command("campaign", _campaign_args, _campaign,
            help="create, show, list, pause or resume a campaign"),
    Command("contacts", _contacts_args, _contacts, help="import a campaign's contact list (CSV)"),
    Command("suppression", _suppression_args, _suppression,
            help="import a TPS/CTPS/US-DNC/internal suppression snapshot"),
    Command("screen", _screen_args, _screen,
            help="dry run: who could we lawfully call now, and why not"),
    Command("dial", _dial_args, _dial, help="run one campaign to completion over AMI"),
    Command("dialer", _dialer_args, _dialer,
            help="long-running dialer worker for every active campaign"),
)
