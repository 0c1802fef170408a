"""``consent-ivr doctor``: what an admin runs after installing, before pointing Asterisk at it.

Every check prints one line, ``✓`` or ``✗``, and for a ``✗`` the fix. Exit 0 only when
all pass. It only reads: it never creates or migrates a database, and its AMI check is
a Login and a Logoff, never an Originate.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import ipaddress
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agi.cli.table import Command
from agi.ops.config import Settings

__all__ = ["Check", "run_checks"]


@dataclass(frozen=True, slots=True)
class Check:
    ok: bool
    what: str
    fix: str = ""

    def render(self) -> str:
        line = f"{'✓' if self.ok else '✗'} {self.what}"
        return line + (f"\n    fix: {self.fix}" if not self.ok and self.fix else "")


def _args(p: argparse.ArgumentParser) -> None:
    p.description = ("check the installation: configuration, data home, database, migrations, "
                     "prompts, listener, AGI token, AMI login, journal")


async def cmd_doctor(settings: Settings, args: argparse.Namespace) -> int:
    checks = await run_checks(settings)
    for check in checks:
        print(check.render())
    failed = sum(not c.ok for c in checks)
    print(f"{len(checks) - failed} of {len(checks)} checks passed")
    return 0 if failed == 0 else 1


async def run_checks(settings: Settings) -> list[Check]:
    """All the checks, in the order an admin would fix them."""
    checks = [Check(True, "configuration valid")]
    checks.append(_data_home(settings))
    checks.extend(await _database(settings))
    checks.append(await asyncio.to_thread(_prompts, settings))
    checks.append(_listener(settings))
    checks.append(_token(settings))
    checks.append(await _ami(settings))
    checks.append(await asyncio.to_thread(_journal, settings))
    return checks


def _data_home(settings: Settings) -> Check:
    home = settings.data_dir
    existing = next((p for p in (home, *home.parents) if p.exists()), Path("/"))
    if existing == home and not home.is_dir():
        return Check(False, f"data home {home} is not a directory",
                     "set CONSENT_IVR_DATA_DIR to a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        return Check(False, f"data home {home} is not writable by this user",
                     f"run as the service user, or set CONSENT_IVR_DATA_DIR (looked at {existing})")
    where = "exists" if home.is_dir() else "will be created by serve/migrate"
    return Check(True, f"data home {home} ({where})")


_NOT_CHECKED = Check(False, "migrations current: not checked (no database)",
                     "fix the database first")


async def _database(settings: Settings) -> list[Check]:
    import asyncpg

    from agi.ledger.database import CommandError, database_url, masked_url
    from agi.ledger.migrations import pending_migrations
    from agi.ops.datahome import embedded_initialised, live_runtime

    fix_db = ("run `consent-ivr migrate` (or `consent-ivr serve`) on this data home, or point "
              "CONSENT_IVR_DATA_DIR / DATABASE_URL at the right one")
    home = settings.data_dir
    if (not settings.database_url and live_runtime(home) is None
            and not embedded_initialised(home)):
        # said here rather than through database_url()'s error, whose sentence carries
        # its own fix: the fix line below says it once
        return [Check(False, f"database: no consent-ivr database in {home} (looked for "
                             f"{home / 'postgres'})", fix_db),
                _NOT_CHECKED]
    try:
        with database_url(settings) as url:
            try:
                conn = await asyncpg.connect(url, timeout=settings.db_timeout)
            except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
                return [Check(False, f"database {masked_url(url)} unreachable: {exc}",
                              "start PostgreSQL, or fix DATABASE_URL"),
                        _NOT_CHECKED]
            try:
                pending = await pending_migrations(conn)
            finally:
                await conn.close()
    except CommandError as exc:
        return [Check(False, f"database: {exc}", fix_db),
                _NOT_CHECKED]
    reach = Check(True, f"database reachable at {masked_url(url)}")
    if pending:
        return [reach, Check(False, f"migrations pending: {', '.join(pending)}",
                             "run `consent-ivr migrate`")]
    return [reach, Check(True, "migrations current")]


def _prompts(settings: Settings) -> Check:
    from agi.calls.promptkit import required_prompt_ids
    from agi.calls.prompts import PromptCatalogue, PromptError

    where = settings.sounds_dir
    fix = ("regenerate or re-import the prompts (`consent-ivr prompts build|import`) and point "
           "CONSENT_IVR_SOUNDS_DIR at them")
    try:
        catalogue = PromptCatalogue.load(where, prefix=settings.prompt_prefix)
    except PromptError as exc:
        return Check(False, str(exc), fix)
    needed = required_prompt_ids(settings)
    problems: list[str] = []
    for lang in sorted(catalogue.languages()):
        have = {p.id for p in catalogue if p.lang == lang}
        missing = [pid for pid in needed if pid not in have]
        if missing:
            problems.append(f"{lang} lacks {', '.join(missing)}")
    bad: list[str] = []
    for prompt in catalogue:
        path = where / prompt.file
        try:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError:
            bad.append(f"{prompt.file} missing")
            continue
        if digest != prompt.sha256:
            bad.append(f"{prompt.file} does not match its sha256")
    if bad:
        problems.append("; ".join(bad[:5]) + (f" (+{len(bad) - 5} more)" if len(bad) > 5 else ""))
    if catalogue.organisation and catalogue.organisation != settings.organisation:
        problems.append(f"the prompts name {catalogue.organisation!r}, "
                        f"CONSENT_IVR_ORGANISATION is {settings.organisation!r}")
    count = sum(1 for _ in catalogue)
    if problems:
        return Check(False, f"prompt manifest {where / 'manifest.json'}: " + "; ".join(problems),
                     fix)
    langs = ", ".join(sorted(catalogue.languages()))
    return Check(True, f"prompt manifest complete: {count} prompts ({langs}), every sha256 "
                       f"matches ({where})")


def _listener(settings: Settings) -> Check:
    from agi.ops.datahome import live_runtime

    address = f"{settings.host}:{settings.port}"
    runtime = live_runtime(settings.data_dir)
    if runtime is not None and runtime.port == settings.port:
        return Check(True, f"listener {address} is ours: consent-ivr serve (pid {runtime.pid})")
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((settings.host, settings.port))
    except OSError as exc:
        return Check(False, f"listener {address} unavailable: {exc.strerror}",
                     "stop what holds the port (ss -ltnp), or set CONSENT_IVR_PORT / --port")
    return Check(True, f"listener {address} is free")


def _token(settings: Settings) -> Check:
    try:
        loopback = ipaddress.ip_address(settings.host).is_loopback
    except ValueError:  # a host name
        loopback = settings.host == "localhost"
    if loopback:
        state = "set" if settings.agi_token else "not needed on loopback"
        return Check(True, f"CONSENT_IVR_AGI_TOKEN {state} (listening on {settings.host})")
    if settings.agi_token:
        return Check(True, f"CONSENT_IVR_AGI_TOKEN set (listening beyond loopback on "
                           f"{settings.host})")
    return Check(False, f"CONSENT_IVR_AGI_TOKEN unset while listening on {settings.host}",
                 "set CONSENT_IVR_AGI_TOKEN (16+ characters) and put it in the dialplan's AGI "
                 "URL (docs/security.md)")


async def _ami(settings: Settings) -> Check:
    if not settings.ami_secret:
        return Check(True, "AMI: dialer not configured (CONSENT_IVR_AMI_SECRET unset), skipped")
    where = f"{settings.ami_user}@{settings.ami_host}:{settings.ami_port}"
    try:
        async with asyncio.timeout(max(settings.db_timeout, 5.0)):
            await ami_login_logoff(settings.ami_host, settings.ami_port, settings.ami_user,
                                   settings.ami_secret)
    except TimeoutError:
        return Check(False, f"AMI {where}: no answer in time",
                     "check CONSENT_IVR_AMI_HOST/_PORT and that Asterisk's manager is enabled")
    except OSError as exc:
        return Check(False, f"AMI {where}: {exc.strerror or exc}",
                     "check CONSENT_IVR_AMI_HOST/_PORT and that Asterisk's manager is enabled")
    except ValueError as exc:
        return Check(False, f"AMI {where}: {exc}",
                     "check CONSENT_IVR_AMI_USER/_SECRET against manager.conf")
    return Check(True, f"AMI login and logoff as {where}")


async def ami_login_logoff(host: str, port: int, user: str, secret: str) -> None:
    """Log in to AMI and log off again; ``ValueError`` with Asterisk's message if refused."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        banner = await reader.readline()
        if not banner.startswith(b"Asterisk Call Manager/"):
            raise ValueError(f"not an Asterisk manager: {banner[:60]!r}")
        writer.write(f"Action: Login\r\nActionID: doctor-1\r\nUsername: {user}\r\n"
                     f"Secret: {secret}\r\nEvents: off\r\n\r\n".encode())
        reply = await _response(reader)
        if reply.get("response", "").lower() != "success":
            raise ValueError(f"login refused: {reply.get('message', reply)}")
        writer.write(b"Action: Logoff\r\nActionID: doctor-2\r\n\r\n")
        await _response(reader)
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass


async def _response(reader: asyncio.StreamReader) -> dict[str, Any]:
    """The next ``Response:`` block (events in between are skipped)."""
    while True:
        block: dict[str, str] = {}
        while True:
            line = await reader.readline()
            if not line:
                raise ValueError("the manager closed the connection")
            text = line.decode("utf-8", "replace").rstrip("\r\n")
            if not text:
                break
            key, _, value = text.partition(":")
            block[key.strip().lower()] = value.strip()
        if "response" in block:
            return block


def _journal(settings: Settings) -> Check:
    from agi.ledger.journal import Journal, JournalError

    try:
        depth = Journal(settings.journal_dir).depth() if settings.journal_dir.exists() else 0
    except (OSError, JournalError) as exc:
        return Check(False, f"journal {settings.journal_dir} unreadable: {exc}",
                     "check the data home's permissions")
    if depth:
        return Check(False, f"journal {settings.journal_dir} holds {depth} decision(s) not yet "
                            "in the ledger",
                     "let serve replay them once the database answers, or run "
                     "`consent-ivr journal replay`")
    return Check(True, f"journal empty ({settings.journal_dir})")


#: what this module adds to ``consent-ivr`` (listed in agi.cli.main.command_table)
COMMANDS = (
    Command("doctor", _args, cmd_doctor, help="check the installation; ✓/✗ per check with the fix"),
)
