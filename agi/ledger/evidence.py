"""Everything the ledger knows about one number, as one self-contained document.

:func:`build_evidence` returns a plain dict (JSON-able; HTML renderers take it as
is): every consent event with the prompts the caller heard (id, language, exact
text, sha256) and the keys pressed, every call that ended without a decision, every
call session, the call ids involved, and for each event its chain proof — its
canonical form, ``prev_hash`` and ``hash`` (so anyone can recompute
``sha256(prev_hash || canonical)`` by hand) and whether the chain verifies from the
first event through it. :func:`render_text` prints the same for a person.

Read-only: works with the ``consent_ivr_readonly`` role.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Final

import asyncpg

from agi.ledger.chain import CANONICAL_COLUMNS, SELECT_COLUMNS, canonical, event_hash, verify_chain
from agi.ledger.records import statement_heard

__all__ = ["EVIDENCE_FORMAT", "build_evidence", "number_of_event", "render_text"]

EVIDENCE_FORMAT: Final = "consent-ivr.evidence.v1"

_EVENT_SQL: Final = (
    f"SELECT {SELECT_COLUMNS} FROM consent_event "  # noqa: S608 - fixed column names
    "WHERE number_e164 = $1 ORDER BY id"
)
_ATTEMPT_SQL = """
    SELECT id, recorded_at, route, outcome, reason, organisation, purpose, digits::text AS digits,
           prompts::text AS prompts, uniqueid, linkedid, channel_name, callerid_num,
           callerid_name, call_started_at, ended_at, instance
    FROM consent_attempt WHERE number_e164 = $1 ORDER BY id"""
_SESSION_SQL = """
    SELECT call_id, instance, route, state, outcome, uniqueid, channel_name, peer,
           started_at, ended_at
    FROM call_session WHERE number_e164 = $1 ORDER BY started_at, id"""


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes | memoryview):
        return bytes(value).hex()
    return value


async def build_evidence(conn: asyncpg.Connection | asyncpg.Pool, number_e164: str,
                         *, generated_at: datetime | None = None) -> dict[str, Any]:
    """The evidence document for ``number_e164`` (already normalised to E.164)."""
    report = await verify_chain(conn, keep_ids=True)
    now = generated_at or await conn.fetchval("SELECT clock_timestamp()")
    events = []
    for row in await conn.fetch(_EVENT_SQL, number_e164):
        canon = canonical(row)
        prev = bytes(row["prev_hash"]) if row["prev_hash"] is not None else None
        stored = bytes(row["hash"]).hex() if row["hash"] is not None else None
        self_ok = prev is not None and event_hash(prev, row).hex() == stored
        item = {c: _plain(row[c]) for c in CANONICAL_COLUMNS}
        item["digits"] = json.loads(row["digits"])
        item["prompts"] = json.loads(row["prompts"])
        item["statement_heard_in_full"] = statement_heard(item["prompts"], row["purpose"])
        item["chain"] = {
            "prev_hash": prev.hex() if prev is not None else None,
            "hash": stored,
            "canonical": canon,
            "hash_recomputes": self_ok,
            "status": "verified" if row["id"] in report.verified_ids else "broken",
        }
        events.append(item)
    attempts = []
    for row in await conn.fetch(_ATTEMPT_SQL, number_e164):
        item = {k: _plain(v) for k, v in dict(row).items()}
        item["digits"] = json.loads(row["digits"])
        item["prompts"] = json.loads(row["prompts"])
        attempts.append(item)
    sessions = [{k: _plain(v) for k, v in dict(r).items()}
                for r in await conn.fetch(_SESSION_SQL, number_e164)]
    return {
        "format": EVIDENCE_FORMAT,
        "number": number_e164,
        "generated_at": _plain(now),
        "state": _latest_states(events),
        "events": events,
        "attempts": attempts,
        "call_sessions": sessions,
        "call_ids": _call_ids(events, attempts, sessions),
        "chain": report.to_json(),
    }


def _latest_states(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Latest decision per (organisation, purpose, channel): latest decided_at, then id."""
    latest: dict[tuple[str, str, str], dict[str, Any]] = {}
    for e in events:
        key = (e["organisation"], e["purpose"], e["channel"])
        best = latest.get(key)
        if best is None or (datetime.fromisoformat(e["decided_at"]), e["id"]) > (
            datetime.fromisoformat(best["decided_at"]), best["id"]
        ):
            latest[key] = e
    return [
        {"organisation": k[0], "purpose": k[1], "channel": k[2],
         "state": "opted_in" if e["decision"] == "opt_in" else "opted_out",
         "event_id": e["id"], "decided_at": e["decided_at"]}
        for k, e in sorted(latest.items())
    ]


def _call_ids(*groups: list[dict[str, Any]]) -> dict[str, list[str]]:
    out: dict[str, set[str]] = {"uniqueid": set(), "linkedid": set(), "channel_name": set()}
    for group in groups:
        for item in group:
            for key, seen in out.items():
                if item.get(key):
                    seen.add(str(item[key]))
    return {k: sorted(v) for k, v in out.items()}


def render_text(ev: dict[str, Any]) -> str:
    """A readable rendering of :func:`build_evidence`'s document."""
    lines = [f"Evidence for {ev['number']}  (generated {ev['generated_at']}, {ev['format']})"]
    chain = ev["chain"]
    if chain["ok"]:
        lines.append(
            f"Ledger chain: intact, {chain['checked']} event(s), head {chain['head_hash']}"
        )
    else:
        brk = chain["first_break"]
        lines.append(f"Ledger chain: BROKEN at event {brk['id']} ({brk['kind']}): {brk['detail']}")
    lines.append("")
    lines.append("Current state:")
    if not ev["state"]:
        lines.append("  no consent event recorded")
    for s in ev["state"]:
        lines.append(f"  {s['purpose']} ({s['organisation']}, {s['channel']}): {s['state']} "
                     f"since event #{s['event_id']} at {s['decided_at']}")
    for e in ev["events"]:
        lines.append("")
        lines.append(f"Event #{e['id']}: {e['decision']} for {e['purpose']} by {e['method']}")
        lines.append(f"  decided {e['decided_at']}, recorded {e['recorded_at']} "
                     f"(source {e['source']}, instance {e['instance']})")
        lines.append(f"  organisation {e['organisation']!r}; evidence {e['evidence_strength']}; "
                     f"caller id {e['callerid_num']!r} name {e['callerid_name']!r}")
        lines.append(f"  call uniqueid={e['uniqueid']} linkedid={e['linkedid']} "
                     f"channel={e['channel_name']}")
        lines.append(f"  statement heard in full: {e['statement_heard_in_full']}")
        for p in e["prompts"]:
            cut = " (interrupted)" if p.get("interrupted") else ""
            lines.append(f"  heard {p.get('id')} [{p.get('lang')}] sha256={p.get('sha256')}{cut}"
                         f"{_heard_ms(p)}")
            lines.append(f"        \"{p.get('text')}\"")
        for d in e["digits"]:
            ignored = " (ignored: during a statement)" if d.get("ignored") else ""
            lines.append(f"  pressed {d.get('digit')!r} at {d.get('step')} "
                         f"+{d.get('offset_ms')} ms{ignored}")
        c = e["chain"]
        lines.append(f"  chain: {c['status']}; hash {c['hash']}")
        lines.append(f"         prev {c['prev_hash']}")
    if ev["attempts"]:
        lines.append("")
        lines.append("Calls without a decision (never consent):")
        for a in ev["attempts"]:
            lines.append(f"  #{a['id']} {a['recorded_at']} {a['outcome']} ({a['reason']}) "
                         f"route={a['route']} uniqueid={a['uniqueid']}")
    if ev["call_sessions"]:
        lines.append("")
        lines.append("Call sessions:")
        for s in ev["call_sessions"]:
            lines.append(f"  {s['started_at']} {s['state']} outcome={s['outcome']} "
                         f"route={s['route']} uniqueid={s['uniqueid']} instance={s['instance']}")
    return "\n".join(lines) + "\n"


def _heard_ms(p: dict[str, Any]) -> str:
    """`` heard 3000/25138 ms`` where the lengths were recorded, else nothing."""
    if p.get("heard_ms") is None or p.get("length_ms") is None:
        return ""
    return f" heard {p['heard_ms']}/{p['length_ms']} ms"


async def number_of_event(conn: asyncpg.Connection | asyncpg.Pool, event_id: int) -> str | None:
    """The number a consent event is about (``None``: no such event), to export its evidence."""
    value = await conn.fetchval("SELECT number_e164 FROM consent_event WHERE id = $1", event_id)
    return None if value is None else str(value)
