"""Smoke test of the benchmark's smallest piece: it runs and produces figures.

The real server (in-process, real PostgreSQL) is recorded by the strict fake, then the
load generator — in its own process, as in ``python -m bench`` — replays the dialogues
for two seconds. No figure is compared with a threshold: timings come from the
benchmark only; this proves the machinery works and that the replay checks commands.
"""

from __future__ import annotations

import asyncio
import json
import sys

import asyncpg

from agi.ops.config import Settings, repo_root
from bench.loadgen import SCRIPTS, Template, record
from bench.peers import build_tree
from tests.harness import consent_stack, running_server


async def _loadgen(cfg: dict[str, object]) -> dict[str, object]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.loadgen", json.dumps(cfg), cwd=repo_root(),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()[-2000:]
    return dict(json.loads(out.decode().strip().splitlines()[-1]))


async def test_closed_loop_produces_figures(settings: Settings, pool: asyncpg.Pool) -> None:
    flow, _, _ = consent_stack(settings, pool)
    async with running_server(settings, {"consent": flow}) as srv:
        templates = [await record("127.0.0.1", srv.port, name, presses, weight)
                     for name, (presses, weight) in SCRIPTS.items()]
        result = await _loadgen({
            "mode": "closed_loop", "host": "127.0.0.1", "port": srv.port,
            "templates": [t.to_json() for t in templates], "concurrency": 4,
            "duration_s": 2.0, "warmup_s": 0.5, "ramp_s": 0.1})
    assert result["errors"] == 0, result["error_samples"]
    assert result["calls"] > 0 and result["refused"] == 0
    # every call ended, in the window or in the tail (what part 1b divides by)
    assert result["calls_all"] >= result["calls"]
    for key in ("cmd_latency_ms", "keypress_to_commit_ms", "first_command_ms"):
        figures = result[key]
        assert isinstance(figures, dict) and figures["n"] > 0 and figures["p99"] is not None
    # every decision the load made is in the ledger, once (the server did the work)
    stored = await pool.fetchval("SELECT count(*) FROM consent_event")
    assert stored >= 1
    # the peers walk the same dialogue: one tree, rooted at the flow's first command
    tree = build_tree([t.to_json() for t in templates])
    assert tree[0]["cmd"] == templates[0].commands[0].decode().rstrip("\n")


async def test_replay_rejects_a_server_that_skips_a_command() -> None:
    """A server that does less than recorded is an error, never a faster figure."""
    tpl = Template(name="t", env=b"agi_network: yes\nagi_uniqueid: UNIQUEID\n\n",
                   commands=[b"ANSWER\n", b'SET VARIABLE "A" "1"\n'],
                   replies=[b"200 result=0\n", b"200 result=1\n"], keypress=-1, commit=-1)

    async def lazy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (await reader.readline()) not in (b"\n", b""):
            pass
        writer.write(b'SET VARIABLE "A" "1"\n')  # skipped ANSWER
        await writer.drain()
        await reader.read(100)
        writer.close()

    server = await asyncio.start_server(lazy, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        result = await _loadgen({
            "mode": "storm", "host": "127.0.0.1", "port": port, "templates": [tpl.to_json()],
            "calls": 3, "spread_s": 0.0})
    assert result["errors"] == 3 and result["completed"] == 0


def test_callgrind_total_reads_the_summary(tmp_path: object) -> None:
    from pathlib import Path

    from bench.run import _callgrind_total

    dump = Path(str(tmp_path)) / "callgrind.out.1"
    dump.write_text("# callgrind format\nversion: 1\nevents: Ir\nsummary: 1834741315\n"
                    "fl=(1) x.c\nfn=(1) f\n16 5\ntotals: 1834741315\n")
    assert _callgrind_total(dump) == 1834741315


def test_ablation_launcher_refuses_unknown_parts() -> None:
    import subprocess

    out = subprocess.run([sys.executable, "-m", "bench.ablate", "logs"], cwd=repo_root(),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "usage" in out.stderr


def test_pbx_part_prices_real_calls(pg_root_url: str, tmp_path: object) -> None:
    """Part 6 at its smallest: two real opt-out calls through Asterisk, every figure out.

    Opt-outs only (the shortest call the kit has, about 23 s of audio) to stay near
    half a minute; the figures are printed, never compared with a threshold.
    """
    from pathlib import Path

    import pytest

    from bench import pbx, procs
    from bench.run import pbx_rows
    from tests.asterisk.pbx import Unavailable, find_asterisk

    try:
        binary = find_asterisk()
    except Unavailable as exc:
        pytest.skip(f"real-Asterisk tier: {exc}")
    db = procs.Database()
    db.root_url = pg_root_url
    ctx = {"quick": True, "workdir": Path(str(tmp_path)), "db": db}
    [res] = pbx.level(ctx, binary, 2, 99, mix=("opt_out",))  # one batch
    print("\n".join(" | ".join(row) for row in pbx_rows({"levels": [res]})))
    assert res["failed"] == 0, res["failures"]
    assert res["peak_live_calls"] == 2
    for key in ("asterisk_ms_per_call", "server_ms_per_call", "server_share_pct",
                "asterisk_rss_peak_kib", "server_rss_peak_kib", "asterisk_hwm_kib"):
        assert res[key] is not None and res[key] > 0, key


def test_pbx_part_names_every_call_not_as_scripted() -> None:
    """A wrong result, a missing ledger row or a call that never ended is a failure."""
    from bench.pbx import _failures
    from tests.asterisk.pbx import CallRecord

    def record(result: str, event_id: str) -> CallRecord:
        rec = CallRecord("L1", channels={"Local/x@test-line-1;1", "Local/x@test-line-1;2"})
        line = "Local/x@test-line-1;2"
        rec.variables = [(line, "CONSENT_RESULT", result), (line, "AGISTATUS", "SUCCESS"),
                         (line, "CONSENT_EVENT_ID", event_id)]
        return rec

    calls = [("+1", "opt_in"), ("+2", "opt_in"), ("+3", "opt_out"), ("+4", "opt_out")]
    records = [record("opted_in", "7"), record("opted_out", "8"), record("opted_out", "9"),
               AssertionError("call L4 did not end within 240 s")]
    ledger = {"+1": [(7, "opt_in")], "+2": [(8, "opt_out")], "+3": [], "+4": []}
    failed = _failures(calls, records, ledger)
    assert [f["caller"] for f in failed] == ["+2", "+3", "+4"]
    assert failed[0]["why"] == ["CONSENT_RESULT='opted_out'", "ledger holds ['opt_out']"]
    assert failed[1]["why"] == ["ledger holds []"]
    assert "did not end" in failed[2]["why"][0]


def test_spyreport_puts_each_sample_in_the_component_that_owns_it() -> None:
    from bench.spyreport import itemise

    root = "_run_code (<frozen runpy>:88);Runner.run (asyncio/runners.py:118)"
    lines = [
        f"{root} 40",  # the loop itself, no Python frame under it
        "AGIChannel.command (agi/wire/channel.py:332);AGIStream.write (agi/wire/channel.py:204) 30",
        "AGIChannel.command (agi/wire/channel.py:332) 5",
        # bookkeeping owns its database writes; elsewhere asyncpg's own frames count as asyncpg
        f"{root};CallSessions._write (agi/ledger/sessions.py:90);"
        "Pool.execute (asyncpg/pool.py:1) 7",
        f"{root};Ledger._decision_group (agi/ledger/ledger.py:285);"
        "Pool.fetch (asyncpg/pool.py:746) 9",
        "AGIServer._session (agi/server/fastagi.py:250);meth (structlog/_native.py:171) 6",
        "garbage line without a count",
        "",
    ]
    total, parts = itemise(lines)
    assert total == 97
    got = {name.split(":")[0].split(",")[0]: n for name, n in parts}
    assert got == {"event loop": 40, "write system call": 30, "AGI channel": 5,
                   "call bookkeeping (call_session rows)": 7, "asyncpg": 9,
                   "the call_finished log line": 6}
