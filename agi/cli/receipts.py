"""``consent-ivr keys …`` and ``consent-ivr receipt …``: signed, offline-checkable receipts.

* ``keys create|rotate|show [--dir DIR]`` — the organisation's Ed25519 signing keys
  (:mod:`agi.reports.keys`; default ``<data home>/keys``).
* ``receipt EVENT_ID|NUMBER [--out FILE]`` — the decision's call as a signed vCon
  (:mod:`agi.reports.receipt`), from the evidence document
  (:func:`agi.ledger.evidence.build_evidence`).
  Read-only: a data home without a database is an error, never a new database.
* ``receipt verify FILE [--public-key K]`` — offline: no database, nothing written.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import socket
import sys
from pathlib import Path
from typing import Any

from agi.cli.table import Command

__all__ = ["keys_dir", "parse_target"]

_EVENT_ID = re.compile(r"#?([1-9][0-9]{0,8})")


def keys_dir(settings: Any, given: Path | None) -> Path:
    from agi.reports.keys import default_keys_dir

    return given if given is not None else default_keys_dir(settings.data_dir)


def parse_target(text: str) -> int | None:
    """An event id (``12`` or ``#12``: up to nine digits, no leading 0), else ``None`` (a number).

    Phone numbers are longer, or start with ``0`` or ``+``.
    """
    match = _EVENT_ID.fullmatch(text.strip())
    return int(match.group(1)) if match else None


# --------------------------------------------------------------------------- keys


def _keys_args(p: argparse.ArgumentParser) -> None:
    p.description = ("the organisation's receipt-signing keys (Ed25519): create the first, rotate "
                     "(old public keys are kept so old receipts verify), show the public keys")
    p.add_argument("action", choices=["create", "rotate", "show"])
    p.add_argument("--dir", type=Path, default=None,
                   help="keys directory (default: <data home>/keys)")
    p.add_argument("--organisation", default=None,
                   help="name in the key's certificate (default: CONSENT_IVR_ORGANISATION)")


async def cmd_keys(settings: Any, args: argparse.Namespace) -> int:
    from agi.ledger.database import CommandError
    from agi.reports.keys import KeyStoreError, create_key, list_keys, rotate_key

    directory = keys_dir(settings, args.dir)
    organisation = args.organisation or settings.organisation
    try:
        if args.action == "create":
            key = await asyncio.to_thread(create_key, directory, organisation)
            print(f"created signing key {key.kid} in {directory} (private key mode 0600)")
        elif args.action == "rotate":
            key, old = await asyncio.to_thread(rotate_key, directory, organisation)
            print(f"new active key {key.kid}; key {old} retired: its private key deleted, its "
                  "public key kept so receipts it signed still verify")
        else:
            infos = await asyncio.to_thread(list_keys, directory)
            if not infos:
                raise CommandError(f"no signing key in {directory}; create one with "
                                   "`consent-ivr keys create`")
            for info in infos:
                state = "active" if info.active else "retired"
                private = "private key present" if info.has_private else "no private key"
                print(f"{state} key {info.kid} (created {info.created_at}; {private})")
                print(info.public_pem, end="")
    except (KeyStoreError, OSError) as exc:
        raise CommandError(str(exc)) from exc
    return 0


# --------------------------------------------------------------------------- receipt


def _receipt_args(p: argparse.ArgumentParser) -> None:
    p.description = ("export a decision's call as a signed vCon consent receipt "
                     "(`receipt EVENT_ID|NUMBER`), or check one offline (`receipt verify FILE`)")
    p.add_argument("target", metavar="EVENT_ID|NUMBER|verify",
                   help="an event id (12 or #12), a phone number (all its decisions), or 'verify'")
    p.add_argument("file", nargs="?", metavar="FILE", help="with verify: the receipt to check")
    p.add_argument("--out", type=Path, default=None, metavar="FILE",
                   help="write the receipt here (default: stdout)")
    p.add_argument("--keys-dir", type=Path, default=None,
                   help="keys directory (default: <data home>/keys)")
    p.add_argument("--profile", default=None,
                   help="policy profile for expiry (default: uk-pecr; see docs/policy.md)")
    p.add_argument("--public-key", type=Path, default=None, metavar="K",
                   help="with verify: the organisation's public key (PEM, certificate or JWK)")
    p.add_argument("--show", action="store_true",
                   help="with verify: print the verified vCon after the report")


async def cmd_receipt(settings: Any, args: argparse.Namespace) -> int:
    from agi.ledger.database import CommandError

    if args.target == "verify":
        if not args.file:
            raise CommandError("receipt verify: name the receipt FILE")
        return await _verify(settings, args)
    if args.file:
        raise CommandError(f"receipt: unexpected {args.file!r} (did you mean `receipt verify`?)")
    return await _export(settings, args)


async def _export(settings: Any, args: argparse.Namespace) -> int:
    from agi.ledger.database import CommandError, open_pool
    from agi.ledger.evidence import build_evidence, number_of_event
    from agi.ledger.numbers import normalise
    from agi.outbound.policy import UnknownProfileError, get_profile
    from agi.reports.keys import KeyStoreError, active_key
    from agi.reports.receipt import ReceiptError, receipt_for

    try:
        profile = get_profile(args.profile)
    except UnknownProfileError as exc:
        raise CommandError(str(exc)) from exc
    event_id = parse_target(args.target)
    number = None if event_id is not None else normalise(args.target, settings.default_region)
    if event_id is None and number is None:
        raise CommandError(f"{args.target!r} is neither an event id nor a valid phone number "
                           f"(region {settings.default_region})")
    async with open_pool(settings) as pool:
        if event_id is not None:
            number = await number_of_event(pool, event_id)
            if number is None:
                raise CommandError(f"no consent event {event_id} in the ledger")
        assert number is not None
        evidence = await build_evidence(pool, number)
    directory = keys_dir(settings, args.keys_dir)
    try:
        key = await asyncio.to_thread(active_key, directory)
        signed = receipt_for(evidence, key, event_id=event_id, profile=profile,
                             fqhn=socket.getfqdn())
    except (KeyStoreError, ReceiptError) as exc:
        raise CommandError(str(exc)) from exc
    text = json.dumps(signed, indent=2) + "\n"
    what = f"event #{event_id}" if event_id is not None else f"every decision of {number}"
    if args.out is None:
        sys.stdout.write(text)
    else:
        try:
            await asyncio.to_thread(args.out.write_text, text, encoding="utf-8")
        except OSError as exc:
            raise CommandError(f"cannot write {args.out}: {exc.strerror}") from exc
        print(f"receipt for {what} written to {args.out} (signed with key {key.kid})",
              file=sys.stderr)
    return 0


async def _verify(settings: Any, args: argparse.Namespace) -> int:
    from agi.ledger.database import CommandError
    from agi.reports.keys import KeyStoreError, kid_of, load_public_key_file, public_keys
    from agi.reports.receipt import render_verify, verify_receipt

    path = Path(args.file)
    try:
        text = await asyncio.to_thread(path.read_text, encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CommandError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from exc
    try:
        if args.public_key is not None:
            public = load_public_key_file(args.public_key)
            known = {kid_of(public): public}
            source = f"--public-key {args.public_key} is key {kid_of(public)}"
        else:
            directory = keys_dir(settings, args.keys_dir)
            known = await asyncio.to_thread(public_keys, directory)
            source = f"keys directory {directory}: {len(known)} key(s)"
    except KeyStoreError as exc:
        raise CommandError(str(exc)) from exc
    report = verify_receipt(text, known, key_source=source)
    print(render_verify(report, str(path)), end="")
    if report.ok and args.show:
        print(json.dumps(report.vcon, indent=2, ensure_ascii=False))
    return 0 if report.ok else 1


#: what this module adds to ``consent-ivr`` (listed in agi.cli.main.command_table)
COMMANDS = (
    Command("keys", _keys_args, cmd_keys,
            help="create, rotate or show the organisation's receipt-signing keys"),
    Command("receipt", _receipt_args, cmd_receipt,
            help="a decision as a signed vCon consent receipt; `receipt verify FILE` offline"),
)
