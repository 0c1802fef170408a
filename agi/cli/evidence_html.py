"""``consent-ivr evidence-html NUMBER --html FILE``: the evidence export as a readable page.

A separate command because ``evidence`` (:mod:`agi.cli.ledger_tools`) belongs to
the reliability work; it renders the same document (:func:`agi.ledger.evidence.build_evidence`)
with :func:`agi.reports.evidence_page.render_evidence_html`, a page a caller or a regulator
can be given.

The page also carries the signed consent receipt of the number's decisions
(:mod:`agi.reports.receipt`, signed with the active key of the keys directory) and the result of
verifying it, so what is handed over can be checked offline with ``consent-ivr receipt
verify``. Without a signing key the page says so and carries no receipt.
"""

from __future__ import annotations

import argparse
import asyncio
import html
import json
import socket
import sys
from pathlib import Path
from typing import Any

from agi.cli.table import Command

__all__: list[str] = []


def _args(p: argparse.ArgumentParser) -> None:
    p.description = "write the evidence export of one number as a self-contained HTML page"
    p.add_argument("number")
    p.add_argument("--html", type=Path, required=True, metavar="FILE")
    p.add_argument("--keys-dir", type=Path, default=None,
                   help="signing keys for the embedded receipt (default: <data home>/keys)")
    p.add_argument("--receipt", type=Path, default=None, metavar="FILE",
                   help="also write the embedded signed receipt to FILE")


async def cmd_evidence_html(settings: Any, args: argparse.Namespace) -> int:
    from agi.ledger.database import CommandError, open_pool
    from agi.ledger.numbers import normalise
    from agi.reports.evidence_page import render_evidence_html

    try:
        from agi.ledger.evidence import build_evidence
    except ImportError as exc:
        raise CommandError("the evidence export (agi.ledger.evidence) is not installed") from exc
    number = normalise(args.number, settings.default_region)
    if number is None:
        raise CommandError(
            f"{args.number!r} is not a valid phone number (region {settings.default_region})"
        )
    async with open_pool(settings) as pool:
        evidence = await build_evidence(pool, number)
    signed, section = await asyncio.to_thread(_receipt_section, settings, args, evidence)
    page = render_evidence_html(evidence).replace("<footer>", section + "\n<footer>", 1)
    try:
        await asyncio.to_thread(args.html.write_text, page, encoding="utf-8")
        if args.receipt is not None and signed is not None:
            await asyncio.to_thread(args.receipt.write_text, signed, encoding="utf-8")
    except OSError as exc:
        raise CommandError(f"cannot write {exc.filename}: {exc.strerror}") from exc
    print(f"evidence for {number} written to {args.html}", file=sys.stderr)
    return 0


def _receipt_section(settings: Any, args: argparse.Namespace,
                     evidence: dict[str, Any]) -> tuple[str | None, str]:
    """The signed receipt (JSON text, or None) and the page's section showing it, verified."""
    from agi.cli.receipts import keys_dir
    from agi.reports.keys import KeyStoreError, active_key, public_keys
    from agi.reports.receipt import ReceiptError, receipt_for, render_verify, verify_receipt

    title = "<h2>Signed consent receipt (vCon)</h2>"
    directory = keys_dir(settings, args.keys_dir)
    try:
        key = active_key(directory)
        signed = json.dumps(receipt_for(evidence, key, fqhn=socket.getfqdn()), indent=2) + "\n"
        known = public_keys(directory)
    except (KeyStoreError, ReceiptError) as exc:
        return None, f'{title}<p class="sub">No receipt: {html.escape(str(exc))}</p>'
    report = verify_receipt(signed, known, key_source=f"keys directory {directory}")
    status = ('<span class="card-inline ok">verifies</span>' if report.ok else
              f'<span class="card-inline bad">FAILS</span> {html.escape(report.failure or "")}')
    return signed, f"""{title}
<p>Every decision above as one vCon with a consent attachment per decision, signed by
{html.escape(settings.organisation)} with key <span class="mono">{html.escape(key.kid)}</span>:
{status}. Save the block below as a file and check it anywhere, without the database, with
<span class="mono">consent-ivr receipt verify FILE --public-key KEY</span>.</p>
<pre class="mono">{html.escape(render_verify(report, "(embedded)"))}</pre>
<details><summary>The signed receipt (JWS JSON)</summary>
<pre class="mono">{html.escape(signed)}</pre></details>"""


#: what this module adds to ``consent-ivr`` (listed in agi.cli.main.command_table)
COMMANDS = (
    Command("evidence-html", _args, cmd_evidence_html,
            help="evidence of one number as a self-contained HTML page"),
)
