"""The durable journal's file format: what is acknowledged is read back; garbage never crashes.

The line reader is fuzzed (hypothesis): whatever bytes a crash, a full disk or a
careless editor leave in a journal file, reading it yields only well-formed entries,
never raises, and an appended entry always reads back identical.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agi.ledger.journal import Journal, JournalError

_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=15,
)


def test_append_then_read(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j")
    j.append("decision", {"idempotency_key": "a", "name": 'Zoë\n"x"'})
    j.append("attempt", {"idempotency_key": "b"})
    entries = list(j.entries())
    assert [(e.kind, e.data["idempotency_key"]) for e in entries] == [
        ("decision", "a"),
        ("attempt", "b"),
    ]
    assert entries[0].data["name"] == 'Zoë\n"x"'
    assert j.depth() == 2
    # one line per entry: an embedded newline can never split an entry
    assert j.active.read_bytes().count(b"\n") == 2
    assert oct(j.active.stat().st_mode & 0o777) == "0o600"


def test_torn_last_line_is_ignored(tmp_path: Path) -> None:
    """A crash mid-write leaves a line without its newline: never fsync'd, never acked."""
    j = Journal(tmp_path)
    j.append("decision", {"idempotency_key": "a"})
    with j.active.open("ab") as fh:
        fh.write(b'{"kind":"decision","data":{"idempotency_key":"torn"')
    assert [e.data["idempotency_key"] for e in j.entries()] == ["a"]


def test_take_pending_and_mark_done(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    j.append("decision", {"idempotency_key": "a"})
    files = j.take_pending()
    assert len(files) == 1 and not j.active.exists()
    j.append("decision", {"idempotency_key": "b"})  # new appends go to a new active file
    assert j.depth() == 2
    j.mark_done(files[0])
    j.mark_done(files[0])  # a second replayer finishing the same file is harmless
    assert j.depth() == 1
    assert (tmp_path / "done" / files[0].name).exists()


def test_reject_sets_entry_aside(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    j.append("decision", {"bad": True})
    entry = next(j.entries())
    j.reject(entry, "malformed: KeyError")
    line = json.loads((tmp_path / "rejected.jsonl").read_text())
    assert line["data"] == {"bad": True} and line["reason"].startswith("malformed")


def test_unwritable_directory_raises_journal_error(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("not a directory")
    with pytest.raises((JournalError, OSError)):
        Journal(target / "j").append("decision", {"a": 1})


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_disk_full_raises_journal_error(tmp_path: Path) -> None:
    """ENOSPC: the flow then says "error" to the caller, never "recorded"."""
    j = Journal(tmp_path)
    j._ensure()
    j.active.symlink_to("/dev/full")
    with pytest.raises(JournalError):
        j.append("decision", {"idempotency_key": "a"})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.binary(max_size=2000)
    | st.lists(
        st.sampled_from(
            [
                b'{"kind":"decision","data":{}}\n',
                b'{"kind":1,"data":2}\n',
                b"[1,2]\n",
                b'"x"\n',
                b"\xff\xfe\n",
                b"{\n",
                b"null\n",
                b'{"kind":"attempt"}\n',
                b"\n",
                b"[" * 5000 + b"\n",
                b'{"kind":"decision","data":[]}\n',
            ]
        ),
        max_size=20,
    ).map(b"".join)
)
def test_reader_never_crashes_on_garbage(raw: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "pending-1.jsonl"
        path.write_bytes(raw)
        for entry in Journal.read(path):
            assert isinstance(entry.kind, str) and isinstance(entry.data, dict)
            assert entry.lineno >= 1


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(["decision", "attempt"]),
                         st.dictionaries(st.text(), _json, max_size=5)), max_size=8))
def test_every_appended_entry_reads_back_identical(items: list[tuple[str, Any]]) -> None:
    with tempfile.TemporaryDirectory() as d:
        j = Journal(Path(d))
        for kind, data in items:
            j.append(kind, data)
        got = [(e.kind, e.data) for e in j.entries()]
        assert got == items
