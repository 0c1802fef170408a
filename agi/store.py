"""The decision store the flows use: the ledger first, the durable journal on outage."""

from __future__ import annotations

import asyncio
from dataclasses import asdict

import structlog

from agi.flows.base import CommitResult, StorageUnavailable
from agi.journal import Journal, JournalError
from agi.ledger import AttemptRecord, ConsentDecision, Ledger, LedgerUnavailable

__all__ = ["LedgerStore", "replay_journal"]

log = structlog.get_logger("agi.store")


class LedgerStore:
    """``DecisionStore`` over :class:`Ledger`, falling back to :class:`Journal`."""

    def __init__(self, ledger: Ledger, journal: Journal | None = None) -> None:
        self.ledger = ledger
        self.journal = journal
        self.journaled_total = 0

    async def commit_decision(self, decision: ConsentDecision) -> CommitResult:
        try:
            event_id, created = await self.ledger.record_decision(decision)
            return CommitResult(event_id=event_id, created=created)
        except LedgerUnavailable as exc:
            log.warning("ledger_unavailable", error=str(exc)[:200], step="commit_decision")
            if self.journal is None:
                raise StorageUnavailable(str(exc)) from exc
        try:
            data = decision.to_json()
            data["source"] = "journal"
            await asyncio.to_thread(self.journal.append, "decision", data)
        except JournalError as exc:
            log.error("journal_unavailable", error=str(exc)[:200])
            raise StorageUnavailable(str(exc)) from exc
        self.journaled_total += 1
        log.warning("decision_journaled", idempotency_key=decision.idempotency_key)
        return CommitResult(event_id=None, created=True, journaled=True)

    async def record_attempt(self, attempt: AttemptRecord) -> None:
        try:
            await self.ledger.record_attempt(attempt)
            return
        except LedgerUnavailable as exc:
            log.warning("ledger_unavailable", error=str(exc)[:200], step="record_attempt")
        if self.journal is None:
            return
        data = asdict(attempt)
        for key in ("call_started_at", "ended_at"):
            if data[key] is not None:
                data[key] = data[key].isoformat()
        try:
            await asyncio.to_thread(self.journal.append, "attempt", data)
        except JournalError as exc:
            log.error("journal_unavailable", error=str(exc)[:200])


async def replay_journal(ledger: Ledger, journal: Journal) -> dict[str, int]:
    """Replay every pending journal entry into the ledger, idempotently.

    Returns counts: ``replayed`` (newly stored), ``duplicates`` (already there),
    ``files``. Stops at the first database error, leaving the rest for later.
    """
    from datetime import datetime

    from agi.ledger import DigitPress, PromptHeard

    counts = {"replayed": 0, "duplicates": 0, "files": 0}
    for path in await asyncio.to_thread(journal.take_pending):
        entries = await asyncio.to_thread(lambda p=path: list(journal.read(p)))
        for entry in entries:
            if entry.kind == "decision":
                decision = ConsentDecision.from_json(entry.data)
                _, created = await ledger.record_decision(decision)
            elif entry.kind == "attempt":
                data = dict(entry.data)
                for key in ("call_started_at", "ended_at"):
                    if data.get(key):
                        data[key] = datetime.fromisoformat(data[key])
                data["digits"] = tuple(DigitPress(**d) for d in data.get("digits", ()))
                data["prompts"] = tuple(PromptHeard(**p) for p in data.get("prompts", ()))
                created = await ledger.record_attempt(AttemptRecord(**data)) is not None
            else:
                continue
            counts["replayed" if created else "duplicates"] += 1
        await asyncio.to_thread(journal.mark_done, path)
        counts["files"] += 1
    return counts
