"""Metrics over real HTTP while real calls run over real TCP into real PostgreSQL.

The AGI side is a small scripted Asterisk stand-in defined here (it answers every
command the consent flow sends and presses the keys it is given). Assertions are made
on what a Prometheus scrape returns and on the ledger, never inside the server.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agi.calls.consent import ConsentFlow
from agi.calls.prompts import PromptCatalogue
from agi.ledger.decisions import LedgerDecisionStore
from agi.ledger.journal import Journal
from agi.ledger.ledger import Ledger
from agi.ledger.migrations import pending_migrations
from agi.ops.config import Settings
from agi.ops.metrics import Metrics, MetricsServer, Readiness, _LabelGuard
from agi.server.fastagi import AGIServer

NUMBER = "+447400123456"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def http_get(port: int, path: str) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, body.decode()


async def scrape(port: int) -> Samples:
    status, body = await http_get(port, "/metrics")
    assert status == 200
    out: Samples = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@dataclass
class CallLog:
    commands: list[str]
    variables: dict[str, str]


async def place_call(
    port: int, script: str, presses: list[str], *, uniqueid: str, callerid: str = NUMBER
) -> CallLog:
    """Play Asterisk for one call: answer each command, press ``presses`` at GET OPTIONs."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    env = {
        "network": "yes",
        "network_script": script,
        "request": f"agi://127.0.0.1:{port}/{script}",
        "channel": f"PJSIP/6001-{uniqueid[-8:]}",
        "language": "en",
        "uniqueid": uniqueid,
        "callerid": callerid,
        "calleridname": "Metrics Test",
        "callingpres": "0",
    }
    writer.write("".join(f"agi_{k}: {v}\n" for k, v in env.items()).encode() + b"\n")
    await writer.drain()
    log = CallLog(commands=[], variables={})
    keys = list(presses)
    while True:
        line = await asyncio.wait_for(reader.readline(), 30)
        if not line:
            break
        command = line.decode().rstrip("\n")
        log.commands.append(command)
        if command.startswith("SET VARIABLE"):
            _, _, rest = command.partition("SET VARIABLE ")
            name, _, val = rest.partition(" ")
            log.variables[name.strip('"')] = val.strip('"')
            reply = "200 result=1"
        elif command.startswith("GET VARIABLE"):
            reply = f"200 result=1 ({uniqueid})"
        elif command.startswith("GET OPTION"):
            key = keys.pop(0) if keys else None
            reply = f"200 result={ord(key)} endpos=800" if key else "200 result=0 endpos=24000"
        elif command.startswith("STREAM FILE"):
            reply = "200 result=0 endpos=24000"
        else:
            reply = "200 result=0"
        writer.write(reply.encode() + b"\n")
        await writer.drain()
    writer.close()
    return log


@pytest.fixture
async def stack(
    settings: Settings, pool: asyncpg.Pool, ledger: Ledger, tmp_path: Path
) -> AsyncIterator[tuple[AGIServer, MetricsServer, Metrics]]:
    metrics = Metrics()
    journal = Journal(tmp_path / "journal")
    store = LedgerDecisionStore(ledger, journal, metrics=metrics)
    prompts = PromptCatalogue.load(settings.sounds_dir, prefix=settings.prompt_prefix)
    routes = {"consent": ConsentFlow(settings, store, prompts)}
    server = AGIServer(settings, routes, metrics=metrics)
    metrics.set_routes(routes)
    metrics.watch_active_calls(lambda: server.active_calls)
    metrics.watch_journal(journal)
    exporter = MetricsServer(
        metrics, "127.0.0.1", 0, Readiness(pool, journal, pending_migrations=pending_migrations,
                  timeout=2.0, metrics=metrics)
    )
    await server.start()
    await exporter.start()
    yield server, exporter, metrics
    await server.drain(timeout=2)
    await exporter.close()


async def test_metrics_move_as_calls_happen(
    stack: tuple[AGIServer, MetricsServer, Metrics], pool: asyncpg.Pool
) -> None:
    server, exporter, _ = stack
    before = await scrape(exporter.port)
    assert value(before, "consent_ivr_calls_total", route="consent", outcome="opted_in") == 0
    assert ("consent_ivr_marketing_played_without_consent_total", frozenset()) in before
    assert value(before, "consent_ivr_marketing_played_without_consent_total") == 0

    first = await place_call(server.port, "consent?purpose=marketing-calls", ["1", "1"],
                             uniqueid="1700000001.1")
    assert first.variables["CONSENT_RESULT"] == "opted_in"
    mid = await scrape(exporter.port)
    assert value(mid, "consent_ivr_calls_total", route="consent", outcome="opted_in") == 1
    assert value(mid, "consent_ivr_consent_decisions_total",
                 purpose="marketing-calls", decision="opt_in") == 1
    assert value(mid, "consent_ivr_call_duration_seconds_count", route="consent") == 1
    # every AGI command the call sent was timed, by command
    get_options = sum(1 for c in first.commands if c.startswith("GET OPTION"))
    assert get_options == 2
    assert value(mid, "consent_ivr_agi_command_duration_seconds_count",
                 command="get_option") == get_options
    assert value(mid, "consent_ivr_agi_commands_total", command="set_variable",
                 result="ok") == sum(1 for c in first.commands if c.startswith("SET VARIABLE"))
    assert value(mid, "consent_ivr_db_query_duration_seconds_count",
                 operation="record_decision") == 1

    second = await place_call(server.port, "consent?purpose=marketing-calls", ["2"],
                              uniqueid="1700000002.1", callerid="+447400123457")
    assert second.variables["CONSENT_RESULT"] == "opted_out"
    await place_call(server.port, "consent?purpose=marketing-calls", [],
                     uniqueid="1700000003.1")  # three timeouts: no decision
    await place_call(server.port, "no-such-route", [], uniqueid="1700000004.1")
    after = await scrape(exporter.port)
    assert value(after, "consent_ivr_calls_total", route="consent", outcome="opted_in") == 1
    assert value(after, "consent_ivr_calls_total", route="consent", outcome="opted_out") == 1
    assert value(after, "consent_ivr_calls_total", route="consent", outcome="no_decision") == 1
    assert value(after, "consent_ivr_calls_total", route="unknown",
                 outcome="unknown_route") == 1
    assert value(after, "consent_ivr_consent_decisions_total",
                 purpose="marketing-calls", decision="opt_out") == 1
    assert value(after, "consent_ivr_db_query_duration_seconds_count",
                 operation="record_attempt") == 1
    assert value(after, "consent_ivr_active_calls") == 0
    assert value(after, "consent_ivr_journal_depth") == 0
    assert value(after, "consent_ivr_marketing_played_without_consent_total") == 0

    # the metrics agree with the ledger
    counts = dict(await pool.fetch(
        "SELECT decision, count(*) FROM consent_event GROUP BY decision"))
    assert counts == {"opt_in": 1, "opt_out": 1}
    assert await pool.fetchval("SELECT count(*) FROM consent_attempt") == 1

    # no phone number and no call id ever becomes a label
    _, body = await http_get(exporter.port, "/metrics")
    for secret in ("7400123456", "7400123457", "1700000001", "no-such-route"):
        assert secret not in body


async def test_health_and_readiness_endpoints(
    stack: tuple[AGIServer, MetricsServer, Metrics],
) -> None:
    _, exporter, _ = stack
    assert await http_get(exporter.port, "/healthz") == (200, "ok\n")
    status, body = await http_get(exporter.port, "/readyz")
    assert status == 200, body
    assert '"ready": true' in body
    status, _ = await http_get(exporter.port, "/nope")
    assert status == 404
    samples = await scrape(exporter.port)
    assert value(samples, "consent_ivr_ready") == 1
    assert value(samples, "consent_ivr_db_up") == 1


async def test_bounded_labels() -> None:
    guard = _LabelGuard(limit=3)
    assert guard("m", "reason", "+447400123456") == "other"
    assert guard("m", "reason", "1700000001.1") == "other"
    assert guard("m", "reason", "No Consent") == "no_consent"
    assert guard("m", "reason", "a") == "a"
    assert guard("m", "reason", "b") == "b"
    assert guard("m", "reason", "c") == "other"  # limit reached: folded
    assert guard("m", "reason", "a") == "a"
    metrics = Metrics()
    for n in range(200):
        metrics.marketing_refused(f"reason_{chr(97 + n % 26)}{n}")
    refusals = [
        s for fam in text_string_to_metric_families(metrics.render().decode())
        for s in fam.samples if s.name == "consent_ivr_marketing_refusals_total"
    ]
    assert len(refusals) <= 65
