"""Tamper evidence: the sha256 hash chain over ``consent_event``, and its verifier.

Migration ``003_hash_chain.sql`` makes PostgreSQL compute, for every inserted event,
``hash = sha256(prev_hash || canonical)`` where ``prev_hash`` is the hash of the event
before it (by id; :data:`GENESIS` for the first). This module computes the same
canonical bytes in Python, independently of the SQL function, and walks the chain:

* an **edited** row no longer matches its own hash;
* a **deleted** row leaves the next row's ``prev_hash`` pointing at nothing
  (a deleted last row leaves ``consent_chain_head`` pointing past the tail);
* a row **inserted** with the triggers bypassed (``session_replication_role =
  replica``, ``ALTER TABLE … DISABLE TRIGGER``) carries a hash that does not fit, or
  leaves the head behind.

A superuser who recomputes every later hash *and* the head can rewrite history
undetectably from inside the database; publishing :attr:`ChainReport.head_hash`
elsewhere now and then (a ticket, an e-mail, a transparency log) anchors it.

The canonical form (``consent_event.v1``), one ``name=<bytes>:<value>`` line per
evidentiary column, ``name=~`` for NULL; timestamps as microseconds since the Unix
epoch; jsonb as PostgreSQL prints it::

    consent_event.v1
    id=1:7
    recorded_at=16:1717171717123456
    ...
    digits=41:[{"step": "question", "digit": "1", ...}]
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import asyncpg
import structlog

log = structlog.get_logger("agi.ledger.chain")

__all__ = [
    "CANONICAL_COLUMNS",
    "CANONICAL_VERSION",
    "GENESIS",
    "SELECT_COLUMNS",
    "ChainBreak",
    "ChainReport",
    "canonical",
    "event_hash",
    "export_chain_status_elsewhere",
    "jsonb_text",
    "publish_chain_status",
    "verify_chain",
]

CANONICAL_VERSION: Final = "consent_event.v1"
GENESIS: Final = bytes(32)

#: Every evidentiary column, in canonical order (the SQL function lists the same).
CANONICAL_COLUMNS: Final = (
    "id",
    "recorded_at",
    "decided_at",
    "number_e164",
    "organisation",
    "purpose",
    "channel",
    "decision",
    "method",
    "captured_by",
    "third_party_name",
    "evidence_strength",
    "digits",
    "prompts",
    "uniqueid",
    "linkedid",
    "channel_name",
    "callerid_num",
    "callerid_name",
    "call_started_at",
    "instance",
    "source",
    "idempotency_key",
)
_TIMESTAMPS: Final = frozenset({"recorded_at", "decided_at", "call_started_at"})
_JSONB: Final = frozenset({"digits", "prompts"})
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)

_JSON_ESCAPES: Final = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n",
                        "\r": "\\r", "\t": "\\t"}


def _json_string(text: str) -> str:
    out = ['"']
    for ch in text:
        if ch in _JSON_ESCAPES:
            out.append(_JSON_ESCAPES[ch])
        elif ord(ch) < 0x20:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def jsonb_text(value: Any) -> str:
    """The text PostgreSQL prints for ``value`` stored as jsonb.

    Object keys ordered by UTF-8 length then bytes, ``", "`` and ``": "`` separators,
    non-ASCII kept, control characters escaped as PostgreSQL's ``escape_json`` does.

    >>> jsonb_text({"step": "q", "digit": "1", "offset_ms": 5})
    '{"step": "q", "digit": "1", "offset_ms": 5}'
    >>> jsonb_text([{"bb": True, "a": None}, "é\\n"])
    '[{"a": null, "bb": true}, "é\\\\n"]'
    """
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        # jsonb keeps numerics exactly as written; our ledger never stores floats
        return repr(value)
    if isinstance(value, str):
        return _json_string(value)
    if isinstance(value, Mapping):
        keys = sorted(value, key=lambda k: (len(k.encode()), k.encode()))
        return "{" + ", ".join(f"{_json_string(k)}: {jsonb_text(value[k])}" for k in keys) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(jsonb_text(v) for v in value) + "]"
    raise TypeError(f"not a JSON value: {type(value).__name__}")


def _micros(value: datetime) -> str:
    if value.tzinfo is None:
        raise ValueError("timestamps in the ledger are timezone-aware")
    return str((value - _EPOCH) // timedelta(microseconds=1))


def _field_text(name: str, value: Any) -> str | None:
    if value is None:
        return None
    if name in _TIMESTAMPS:
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        return _micros(value)
    if name in _JSONB:
        # text straight from PostgreSQL is already canonical; parsed values are encoded
        return value if isinstance(value, str) else jsonb_text(value)
    return str(value)


def canonical(event: Mapping[str, Any]) -> str:
    """The canonical text of one event (a mapping with every :data:`CANONICAL_COLUMNS`).

    Timestamps may be ``datetime`` or ISO strings (as in an evidence export); jsonb
    columns may be PostgreSQL's text or the parsed JSON value.
    """
    lines = [CANONICAL_VERSION]
    for name in CANONICAL_COLUMNS:
        text = _field_text(name, event[name])
        if text is None:
            lines.append(f"{name}=~")
        else:
            lines.append(f"{name}={len(text.encode('utf-8'))}:{text}")
    return "\n".join(lines) + "\n"


def event_hash(prev_hash: bytes, event: Mapping[str, Any]) -> bytes:
    """``sha256(prev_hash || canonical(event))``, as the database computes it."""
    return hashlib.sha256(bytes(prev_hash) + canonical(event).encode("utf-8")).digest()


# --------------------------------------------------------------------------- verify


@dataclass(frozen=True, slots=True)
class ChainBreak:
    """The first place the chain does not hold."""

    id: int | None
    kind: str  # missing_hash | broken_link | content_mismatch | head_mismatch
    detail: str
    expected: str | None = None
    found: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "detail": self.detail,
                "expected": self.expected, "found": self.found}


@dataclass(slots=True)
class ChainReport:
    """Outcome of a walk: how many events held, and the first break if any."""

    checked: int = 0
    last_id: int | None = None
    head_hash: str | None = None
    first_break: ChainBreak | None = None
    #: id → verified for every event checked before the break (evidence uses it)
    verified_ids: set[int] = field(default_factory=set)

    @property
    def ok(self) -> bool:
        return self.first_break is None

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "checked": self.checked,
            "last_id": self.last_id,
            "head_hash": self.head_hash,
            "first_break": self.first_break.to_json() if self.first_break else None,
        }


#: the select list that :func:`canonical` needs (jsonb as PostgreSQL's text), plus hashes
SELECT_COLUMNS: Final = (
    ", ".join(f"{c}::text AS {c}" if c in _JSONB else c for c in CANONICAL_COLUMNS)
    + ", prev_hash, hash"
)
_FIRST: Final = (
    f"SELECT {SELECT_COLUMNS} FROM consent_event "  # noqa: S608 - fixed column names
    "ORDER BY id LIMIT $1"
)
_NEXT: Final = (
    f"SELECT {SELECT_COLUMNS} FROM consent_event "  # noqa: S608 - fixed column names
    "WHERE id > $2 ORDER BY id LIMIT $1"
)


async def verify_chain(conn: asyncpg.Connection | asyncpg.Pool, *, batch: int = 2000,
                       keep_ids: bool = False) -> ChainReport:
    """Walk ``consent_event`` by id, recompute every hash, stop at the first break.

    Reads in keyset-paginated batches, so memory stays flat on a large ledger. With
    ``keep_ids`` the ids of verified events are collected (for an evidence export).
    """
    report = ChainReport()
    expected_prev = GENESIS
    after: int | None = None  # no lower bound: a forged row may carry id 0 or less
    while True:
        rows: Sequence[asyncpg.Record] = (
            await conn.fetch(_FIRST, batch) if after is None
            else await conn.fetch(_NEXT, batch, after)
        )
        if not rows:
            break
        for row in rows:
            brk = _check(row, expected_prev)
            if brk is not None:
                report.first_break = brk
                return report
            expected_prev = bytes(row["hash"])
            report.checked += 1
            report.last_id = row["id"]
            if keep_ids:
                report.verified_ids.add(row["id"])
        after = rows[-1]["id"]
    head = await conn.fetchrow("SELECT last_id, hash FROM consent_chain_head")
    tail_hash = expected_prev
    report.head_hash = tail_hash.hex()
    if head is None:
        report.first_break = ChainBreak(None, "head_mismatch", "consent_chain_head is empty")
    elif head["last_id"] != report.last_id or bytes(head["hash"]) != tail_hash:
        report.first_break = ChainBreak(
            report.last_id,
            "head_mismatch",
            f"the chain head names event {head['last_id']} but the table ends at "
            f"{report.last_id}: the last event(s) were deleted, or appended bypassing the "
            "triggers",
            expected=bytes(head["hash"]).hex(),
            found=tail_hash.hex(),
        )
    return report


def _check(row: Mapping[str, Any], expected_prev: bytes) -> ChainBreak | None:
    ident = int(row["id"])
    if row["hash"] is None or row["prev_hash"] is None:
        return ChainBreak(ident, "missing_hash", f"event {ident} has no hash")
    prev = bytes(row["prev_hash"])
    if prev != expected_prev:
        return ChainBreak(
            ident,
            "broken_link",
            f"event {ident} does not follow the event before it: an event was deleted "
            "or inserted before it",
            expected=expected_prev.hex(),
            found=prev.hex(),
        )
    recomputed = event_hash(prev, row)
    if recomputed != bytes(row["hash"]):
        return ChainBreak(
            ident,
            "content_mismatch",
            f"event {ident} was changed after it was recorded",
            expected=recomputed.hex(),
            found=bytes(row["hash"]).hex(),
        )
    return None


def publish_chain_status(metrics: Any, verdict: dict[str, Any]) -> None:
    """The verdict of a walk as ``consent_ivr_ledger_chain_ok`` (and a log line if broken).

    ``serve`` walks every ``CONSENT_IVR_CHAIN_VERIFY_INTERVAL`` seconds, so a ledger
    edited behind the application's back raises an alert without anyone running
    ``verify-ledger`` by hand.
    """
    metrics.chain_ok.set(1 if verdict["ok"] else 0)
    metrics.chain_events.set(verdict["checked"])
    if not verdict["ok"]:
        log.error("ledger_chain_broken", first_break=verdict.get("first_break"),
                  checked=verdict["checked"])


async def export_chain_status_elsewhere(url: str, metrics: Any) -> dict[str, Any]:
    """Walk the chain in a child process (``python -m agi.ledger.chain``), then publish it.

    The walk is CPU work in Python (a SHA-256 over each event's canonical form); in a
    process of its own it never holds up the calls on the server's event loop. The
    database URL goes through the child's environment, never its command line. The
    child is killed if the walk is cancelled (the server stopping).
    """
    env = {**os.environ, "CONSENT_IVR_CHAIN_URL": url}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agi.ledger.chain", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await proc.communicate()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    if proc.returncode != 0:
        raise RuntimeError(f"chain walk failed (exit {proc.returncode}): "
                           f"{err.decode(errors='replace')[-500:]}")
    verdict: dict[str, Any] = json.loads(out)
    publish_chain_status(metrics, verdict)
    return verdict


async def _walk(url: str) -> dict[str, Any]:
    conn = await asyncpg.connect(url)
    try:
        return (await verify_chain(conn)).to_json()
    finally:
        await conn.close()


if __name__ == "__main__":  # the child of export_chain_status_elsewhere: one JSON line
    from agi.ops.logs import configure_logging

    configure_logging("json", "warning", stream=sys.stderr)  # stdout carries the verdict
    print(json.dumps(asyncio.run(_walk(os.environ["CONSENT_IVR_CHAIN_URL"]))))
