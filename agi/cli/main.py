"""``consent-ivr`` command line: the parser, the two tables, the core commands and ``serve``.

:func:`command_table` names every command module of :mod:`agi.cli` (``campaign``,
``doctor``, ``receipts``…: each lists its ``COMMANDS``); :func:`route_table` names every AGI
route's factory. ``serve`` runs as a :class:`agi.cli.service.Service`.

``main(argv=None) -> int`` so tests call it directly. Invalid configuration or
input prints one clear line on stderr and returns 2; never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import gc
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import structlog

from agi.cli.service import Service
from agi.cli.table import Command, RouteDeps
from agi.ledger.database import CommandError, database_url, open_database, open_pool
from agi.ops.config import ConfigError, Settings
from agi.ops.logs import configure_logging, flush_logs

__all__ = ["CommandError", "main"]  # CommandError: see agi.ledger.database

log = structlog.get_logger("agi.cli.main")


# --------------------------------------------------------------------------- commands


async def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    from agi.calls.prompts import PromptCatalogue, PromptError
    from agi.ledger.decisions import LedgerDecisionStore
    from agi.ledger.journal import Journal
    from agi.ledger.ledger import Ledger
    from agi.ledger.migrations import pending_migrations
    from agi.ledger.sessions import CallSessions, recover_at_start
    from agi.ops.metrics import Metrics, Readiness, start_exporter
    from agi.outbound.policy import REASONS
    from agi.server.fastagi import AGIServer

    try:
        prompts = PromptCatalogue.load(settings.sounds_dir, prefix=settings.prompt_prefix)
    except PromptError as exc:
        raise CommandError(str(exc)) from exc
    if prompts.organisation and prompts.organisation != settings.organisation:
        raise CommandError(
            f"CONSENT_IVR_ORGANISATION is {settings.organisation!r} but the prompts name "
            f"{prompts.organisation!r}: make the prompts for it (consent-ivr prompts build|import) "
            "or fix the setting — callers must hear who is really asking"
        )
    from agi.calls.promptkit import required_prompt_ids

    try:  # before the database: a bad prompt directory must not create or migrate one
        prompts.require(required_prompt_ids(settings))
    except PromptError as exc:
        raise CommandError(str(exc)) from exc
    async with Service("serve") as service:
        pool, url = await service.enter("database", open_database(settings, migrate=True))
        ledger = Ledger(pool, timeout=settings.db_timeout)
        journal = Journal(settings.journal_dir)
        metrics = Metrics(refusal_reasons=REASONS)
        store = LedgerDecisionStore(ledger, journal, metrics=metrics)
        deps = RouteDeps(pool=pool, store=store, prompts=prompts, metrics=metrics)
        try:
            routes = {name: factory(settings, deps) for name, factory in route_table().items()}
        except PromptError as exc:
            raise CommandError(str(exc)) from exc
        sessions = CallSessions(pool, instance=settings.instance,
                                default_region=settings.default_region,
                                timeout=settings.db_timeout, metrics=metrics)
        await recover_at_start(ledger, journal, sessions, metrics=metrics)
        server = AGIServer(settings, routes, metrics=metrics, sessions=sessions)
        metrics.set_routes(routes)
        metrics.watch_active_calls(lambda: server.active_calls)
        metrics.watch_journal(journal)
        try:
            await server.start()
        except OSError as exc:
            raise CommandError(
                f"cannot listen on {settings.host}:{settings.port}: {exc.strerror}"
            ) from exc
        # a failure from here on cuts any call at once; after a normal drain this is a no-op
        service.on_stop("agi listener", lambda: server.drain(timeout=0))
        # the call bookkeeping stops only after the drain, so the calls it cut get filed
        bookkeeping_stop = asyncio.Event()
        service.background("call bookkeeping", sessions.run(bookkeeping_stop),
                           until=bookkeeping_stop)
        readiness = Readiness(pool, journal, pending_migrations=pending_migrations,
                              timeout=settings.db_timeout, metrics=metrics)
        exporter = await start_exporter(settings.metrics_addr, metrics, readiness)
        if exporter is not None:
            service.on_stop("metrics exporter", exporter.close)
        service.background("journal replay",
                           _replay_forever(ledger, journal, service.stop, metrics))
        service.background("chain verifier", _verify_chain_forever(
            url, metrics, service.stop, settings.chain_verify_interval))
        runtime_file = _write_runtime(settings, server.port, url)
        service.on_stop("runtime file", functools.partial(
            _remove_runtime, runtime_file.parent, os.getpid()))
        print(
            f"consent-ivr listening on agi://{settings.host}:{server.port} "
            f"(routes: {', '.join(sorted(routes))}); Ctrl-C to stop",
            file=sys.stderr,
        )
        # What start-up built lives as long as the process: frozen, it is out of every
        # full collection's walk, which then covers only what calls allocate
        gc.collect()
        gc.freeze()
        await server.serve_until(service.stop, now=service.stop_now)
    return 0


async def _remove_runtime(data_dir: Any, pid: int) -> None:
    from agi.ops.datahome import remove_runtime

    remove_runtime(data_dir, pid)


def _write_runtime(settings: Settings, port: int, url: str) -> Any:
    """Tell the other commands where this service listens and which database it uses."""
    from datetime import UTC, datetime

    from agi.ops.datahome import Runtime, write_runtime

    runtime = Runtime(
        pid=os.getpid(), data_dir=str(settings.data_dir), host=settings.host, port=port,
        database_url=url, metrics_addr=settings.metrics_addr,
        started_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    try:
        path = write_runtime(settings.data_dir, runtime)
    except OSError as exc:
        raise CommandError(
            f"cannot write the runtime file in {settings.data_dir}: {exc.strerror}"
        ) from exc
    log.info("runtime_file_written", path=str(path))
    return path


async def _replay_forever(ledger: Any, journal: Any, stop: asyncio.Event, metrics: Any) -> None:
    """Replay journaled decisions once the database answers again."""
    from agi.ledger.decisions import replay_journal
    from agi.ledger.records import LedgerUnavailable

    while not stop.is_set():
        try:
            # off the event loop: during an outage the journal grows while calls run
            if await asyncio.to_thread(journal.depth):
                counts = await replay_journal(ledger, journal, metrics=metrics)
                log.info("journal_replayed", **counts)
        except LedgerUnavailable:
            pass
        except Exception:
            log.exception("journal_replay_failed")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 2.0)


async def _verify_chain_forever(
    url: str, metrics: Any, stop: asyncio.Event, interval: float
) -> None:
    """Walk the ledger's hash chain now and every ``interval`` seconds (0: never).

    Each walk runs in a child process
    (:func:`agi.ledger.chain.export_chain_status_elsewhere`): it hashes every event, ~15 µs
    each in Python, and on the server's event loop a batch of 2,000
    stalled every call for ~30 ms (benchmark: paced p99 per command 2.4 → 14.5 ms on
    a ledger of ~100,000 events); in its own process it uses another core.
    """
    from agi.ledger.chain import export_chain_status_elsewhere

    if interval <= 0:
        return
    while not stop.is_set():
        try:
            await export_chain_status_elsewhere(url, metrics)
        except Exception:  # a walk that cannot finish says nothing about the chain
            log.exception("ledger_chain_walk_failed")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)


async def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    import asyncpg

    from agi.ledger.ledger import DB_UNAVAILABLE
    from agi.ledger.migrations import migrate

    with database_url(settings, create=True) as url:
        try:
            applied = await migrate(url, timeout=settings.db_timeout)
        except (*DB_UNAVAILABLE, asyncpg.PostgresError) as exc:
            raise CommandError(f"cannot connect to the database: {exc}") from exc
    print("applied: " + ", ".join(applied) if applied else "database is up to date")
    return 0


async def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    from agi.ledger.ledger import Ledger
    from agi.ledger.numbers import normalise

    number = normalise(args.number, settings.default_region)
    if number is None:
        raise CommandError(
            f"{args.number!r} is not a valid phone number (region {settings.default_region})"
        )
    purpose = args.purpose or settings.default_purpose
    async with open_pool(settings) as pool:
        ledger = Ledger(pool, timeout=settings.db_timeout)
        status = await ledger.consent_at(
            number, purpose, organisation=args.organisation, with_history=True
        )
        attempts = await ledger.attempts_for(number)
    if args.json:
        out = status.to_json()
        out["attempts"] = attempts
        print(json.dumps(out, indent=2, ensure_ascii=False))
        return 0
    print(f"{number}  purpose={purpose}  state={status.state}  (as of {status.at.isoformat()})")
    for e in status.history:
        print(
            f"  #{e.id} {e.decided_at.isoformat()} {e.decision:<7} {e.method} "
            f"evidence={e.evidence_strength} org={e.organisation!r} uniqueid={e.uniqueid}"
        )
        if e.decision == "opt_in":
            print(f"      statement heard in full: {e.statement_heard_in_full}")
    if attempts:
        print(f"  {len(attempts)} call(s) without a decision")
    return 0


async def cmd_journal(settings: Settings, args: argparse.Namespace) -> int:
    from agi.ledger.decisions import replay_journal
    from agi.ledger.journal import Journal
    from agi.ledger.ledger import Ledger
    from agi.ledger.records import LedgerUnavailable

    journal = Journal(settings.journal_dir)
    if args.action == "depth":
        print(journal.depth())
        return 0
    async with open_pool(settings, migrate=True) as pool:
        try:
            counts = await replay_journal(Ledger(pool, timeout=settings.db_timeout), journal)
        except LedgerUnavailable as exc:
            raise CommandError(f"database unavailable, journal kept: {exc}") from exc
    print(
        f"replayed {counts['replayed']} new, {counts['duplicates']} already in the ledger, "
        f"from {counts['files']} file(s)"
    )
    return 0


def parse_presses(text: str) -> list[Any]:
    """``1,-,1`` → keys per input prompt; ``-`` silence; ``h`` hang up; ``0740…#`` GET DATA."""
    from agi.testing.fakeasterisk import HANGUP, SILENCE

    out: list[Any] = []
    for item in (p.strip() for p in text.split(",") if p.strip()):
        if item in {"-", "silence"}:
            out.append(SILENCE)
        elif item in {"h", "hangup"}:
            out.append(HANGUP)
        elif all(ch in "0123456789*#ABCD" for ch in item):
            out.append(item)
        else:
            raise ValueError(
                f"--press: {item!r} is not keypad keys, '-' (silence) or 'h' (hang up)"
            )
    return out


async def cmd_simulate(settings: Settings, args: argparse.Namespace) -> int:
    """Play Asterisk (the conformance-proven fake) against a running server."""
    from agi.calls.prompts import PromptCatalogue, PromptError
    from agi.testing.fakeasterisk import FakeAsterisk

    try:
        presses = parse_presses(args.press)
    except ValueError as exc:
        raise CommandError(str(exc)) from exc
    from agi.ops.datahome import live_runtime

    runtime = live_runtime(settings.data_dir)  # the service running on this data home
    listen_host = runtime.host if runtime is not None else settings.host
    host = args.host or ("127.0.0.1" if listen_host in {"0.0.0.0", "::"} else listen_host)  # noqa: S104
    port = args.port or (runtime.port if runtime is not None else settings.port)
    fake = FakeAsterisk(
        host,
        port,
        network_script=args.route,
        callerid=args.caller_id,
        calleridname=args.caller_name,
        language=args.language,
        uniqueid=args.uniqueid or f"{time.time():.0f}.{os.getpid()}",
        presses=presses,
        hangup_after=args.hangup_after,
        sounds_dir=settings.sounds_dir,
    )
    record = await fake.run()
    if not record.connected:
        raise CommandError(f"cannot reach a FastAGI server at {host}:{port}: "
                           + "; ".join(record.errors or ["connection refused"]))
    print(record.dialogue())
    try:
        texts = {p.id: p.text for p in PromptCatalogue.load(settings.sounds_dir)
                 if p.lang == args.language}
    except PromptError:
        texts = {}
    print("-- prompts heard:")
    for play in record.prompts:
        pid = play.name.removeprefix(settings.prompt_prefix)
        how = f"interrupted by {play.digit}" if play.interrupted else play.outcome
        print(f"   {play.name} [{how}] {texts.get(pid, '')}")
    print(f"-- channel variables: {json.dumps(record.variables)}")
    print(f"-- AGISTATUS would be {record.agistatus}")
    return 0


Handler = Callable[[Settings, argparse.Namespace], Awaitable[int]]


def command_table() -> tuple[Command, ...]:
    """Every feature subcommand, by module: the one table ``build_parser`` reads.

    Imported here, when the command line starts, never guarded: a module that fails to
    import stops the command line with its traceback instead of dropping commands.
    """
    from agi.cli import (
        campaign,
        doctor,
        evidence_html,
        ledger_tools,
        prompts,
        receipts,
        report,
    )

    return (*campaign.COMMANDS, *doctor.COMMANDS, *evidence_html.COMMANDS,
            *ledger_tools.COMMANDS, *prompts.COMMANDS, *receipts.COMMANDS, *report.COMMANDS)


def route_table() -> dict[str, Callable[[Settings, RouteDeps], Any]]:
    """Every AGI route ``serve`` offers: name → ``factory(settings, deps)`` → handler."""
    from agi.cli.marketing import marketing_route

    return {"consent": consent_route, "marketing": marketing_route}


def consent_route(settings: Settings, deps: RouteDeps) -> Any:
    """Route ``consent``: inbound (and agent-transferred) consent capture."""
    from agi.calls.consent import ConsentFlow

    return ConsentFlow(settings, deps.store, deps.prompts)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="consent-ivr",
        description="Consent-first IVR for Asterisk: FastAGI consent capture and a "
        "fail-closed marketing gate.",
    )
    parser.add_argument("--log-format", choices=["auto", "json", "console"], default=None)
    parser.add_argument("--log-level", default=None)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("serve", help="run the FastAGI server (migrates first)")
    p.add_argument("--host", default=None, help="listen address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="listen port (default 4573)")
    p.set_defaults(handler=cmd_serve)

    p = sub.add_parser("migrate", help="apply pending database migrations")
    p.set_defaults(handler=cmd_migrate)

    p = sub.add_parser("status", help="consent state and evidence of one number")
    p.add_argument("number")
    p.add_argument("--purpose", default=None)
    p.add_argument("--organisation", default=None, help="only this organisation's events")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_status)

    p = sub.add_parser("journal", help="inspect or replay the durable journal")
    p.add_argument("action", choices=["replay", "depth"])
    p.set_defaults(handler=cmd_journal)

    p = sub.add_parser(
        "simulate-call", help="play Asterisk against a running server and print the dialogue"
    )
    p.add_argument("--host", default=None)
    p.add_argument("--port", type=int, default=None)
    p.add_argument("--route", default="consent?purpose=marketing-calls",
                   help="path and query of the AGI URL")
    p.add_argument("--press", default="", help="keys, one entry per prompt that listens: "
                   "1,-,1 opts in (1 at the question, silent through the statement, 1 to "
                   "confirm); '-' is silence, 'h' a hang-up; GET DATA entries take several "
                   "digits (07400123456#)")
    p.add_argument("--caller-id", default="+447400123456")
    p.add_argument("--caller-name", default="Simulated Caller")
    p.add_argument("--language", default="en")
    p.add_argument("--hangup-after", type=int, default=None,
                   help="hang up after N commands")
    p.add_argument("--uniqueid", default=None, help="Asterisk uniqueid (default: time.pid)")
    p.set_defaults(handler=cmd_simulate)

    for command in sorted(command_table(), key=lambda c: c.name):
        p = sub.add_parser(command.name, help=command.help)
        command.add_arguments(p)
        p.set_defaults(handler=command.handler)
    return parser


_FLAG_SETTINGS = ("host", "port", "log_format", "log_level")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    overrides = {k: getattr(args, k, None) for k in _FLAG_SETTINGS}
    if args.command == "simulate-call":
        overrides.pop("host")
        overrides.pop("port")
    try:
        settings = Settings.from_env(**overrides)
    except ConfigError as exc:
        if args.command == "doctor":  # the first of its checks, in its format
            print(f"✗ configuration invalid: {exc}\n    fix: correct that setting "
                  "(.env.example lists them all)")
            return 1
        print(f"consent-ivr: configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_format, settings.log_level)
    try:
        with asyncio.Runner(loop_factory=settings.loop_factory()) as runner:
            code: int = runner.run(args.handler(settings, args))
        return code
    except (CommandError, ConfigError) as exc:
        print(f"consent-ivr: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    finally:
        flush_logs()


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
