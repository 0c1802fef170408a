"""The durable journal: where a decision goes when the database cannot take it.

A caller who pressed a key must never lose that decision to a database outage, and
must never hear "recorded" for something that is not durable. So when the ledger
is unreachable the decision is appended to a local JSON-lines file and fsync'd
(file and directory) before the flow goes on; it is replayed into the ledger,
idempotently, once the database is back — by the running server and by
``consent-ivr journal replay``.

Layout of ``journal_dir``::

    active.jsonl               appended to (one JSON object a line)
    pending-<ns>.jsonl         taken out of ``active`` by a replay, being replayed
    done/pending-<ns>.jsonl    fully replayed (kept as evidence of the outage)
    rejected.jsonl             entries the ledger can never take, with the reason

Every step takes an exclusive ``flock`` on ``journal_dir/.lock``, so appends by
several server processes and a CLI replay never interleave. A crash mid-replay
leaves the ``pending-*`` file; the next replay runs it again and the ledger's
idempotency keys make the second pass a no-op.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Journal", "JournalEntry", "JournalError"]


class JournalError(Exception):
    """The journal could not be written durably."""


@dataclass(frozen=True, slots=True)
class JournalEntry:
    kind: str  # 'decision' | 'attempt'
    data: dict[str, Any]
    file: Path
    lineno: int


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Journal:
    """Append-only, fsync'd JSON-lines journal with replay bookkeeping."""

    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)
        self.active = self.dir / "active.jsonl"
        self.done_dir = self.dir / "done"

    def _ensure(self) -> None:
        if not self.done_dir.is_dir():
            self.done_dir.mkdir(parents=True, exist_ok=True)
            _fsync_dir(self.dir)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self._ensure()
        fd = os.open(self.dir / ".lock", os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def append(self, kind: str, data: dict[str, Any]) -> None:
        """Append one entry and make it durable (fsync) before returning."""
        line = json.dumps({"kind": kind, "data": data, "journaled_at": time.time()},
                          ensure_ascii=False, separators=(",", ":"))
        if "\n" in line:  # json.dumps escapes newlines; belt and braces
            raise JournalError("journal line contains a newline")
        try:
            with self._locked():
                new = not self.active.exists()
                fd = os.open(self.active, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
                try:
                    os.write(fd, (line + "\n").encode("utf-8"))
                    os.fsync(fd)
                finally:
                    os.close(fd)
                if new:
                    _fsync_dir(self.dir)
        except OSError as exc:
            raise JournalError(f"journal write failed: {exc}") from exc

    def _pending_files(self) -> list[Path]:
        return sorted(self.dir.glob("pending-*.jsonl"))

    def take_pending(self) -> list[Path]:
        """Move ``active`` aside (atomically) and list every file awaiting replay."""
        with self._locked():
            if self.active.exists() and self.active.stat().st_size > 0:
                os.replace(self.active, self.dir / f"pending-{time.time_ns()}.jsonl")
                _fsync_dir(self.dir)
            return self._pending_files()

    @staticmethod
    def read(path: Path) -> Iterator[JournalEntry]:
        """Entries of one file; a torn last line (crash mid-write) is skipped."""
        with path.open("rb") as fh:
            for lineno, raw in enumerate(fh, start=1):
                if not raw.endswith(b"\n"):
                    break  # torn write: never fsync'd, never acknowledged to a caller
                try:
                    obj = json.loads(raw)
                    kind, data = obj["kind"], obj["data"]
                except (ValueError, KeyError, TypeError, IndexError, RecursionError):
                    continue  # garbage: never an acknowledged decision (those are whole JSON)
                # append() only ever writes a str kind and an object: anything else is
                # not ours (and readers such as the dialer's gate rely on a dict)
                if isinstance(kind, str) and isinstance(data, dict):
                    yield JournalEntry(kind, data, path, lineno)

    def mark_done(self, path: Path) -> None:
        with self._locked():
            try:
                os.replace(path, self.done_dir / path.name)
            except FileNotFoundError:
                return  # another replayer (server or CLI) finished it first
            _fsync_dir(self.dir)
            _fsync_dir(self.done_dir)

    def reject(self, entry: JournalEntry, reason: str) -> None:
        """Set aside an entry the ledger can never take (malformed, or refused as data).

        It goes to ``rejected.jsonl`` with the reason, fsync'd, for a person to look at;
        one poison line must not hold every later decision out of the ledger.
        """
        line = json.dumps({"kind": entry.kind, "data": entry.data, "reason": reason[:500],
                           "from": f"{entry.file.name}:{entry.lineno}",
                           "rejected_at": time.time()},
                          ensure_ascii=False, separators=(",", ":"), default=repr)
        try:
            with self._locked():
                fd = os.open(self.dir / "rejected.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT,
                             0o600)
                try:
                    os.write(fd, (line + "\n").encode("utf-8"))
                    os.fsync(fd)
                finally:
                    os.close(fd)
        except OSError as exc:
            raise JournalError(f"journal write failed: {exc}") from exc

    def entries(self, kind: str | None = None) -> Iterator[JournalEntry]:
        """Every entry not yet replayed (active and pending), oldest first."""
        files = [*self._pending_files()]
        if self.active.exists():
            files.append(self.active)
        for path in files:
            try:
                for entry in self.read(path):
                    if kind is None or entry.kind == kind:
                        yield entry
            except FileNotFoundError:
                continue  # replayed and moved meanwhile

    def depth(self) -> int:
        """Entries awaiting replay."""
        return sum(1 for _ in self.entries())
