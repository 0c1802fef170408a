"""The outbound chain end to end: dialer → AMI → dialplan → FastAGI marketing route → ledger.

Real: the dialer (:mod:`agi.outbound.dialer`, panoramisk), the FastAGI server with the routes
``consent-ivr serve`` mounts (the consent flow and every registered route factory, the marketing
route among them), PostgreSQL, the metrics exporter.  Fake only at the edges: the fake AMI
(``agi/testing/fake_ami.py``) answers each Originate and plays the ``consent-outbound`` dialplan
context (:class:`agi.testing.fake_ami.OutboundDialplan`): a strict fake Asterisk runs the marketing
AGI for that very channel.  Between that fake Asterisk and the server sits :class:`AgiTap`, a
TCP relay that can hold one server command on the wire while the test does something (an
inbound opt-out, a look at the database), so "before" and "after" are exact, not timed.

Assertions are on what crossed the wire (AMI actions and events, AGI records) and on database
rows; never inside a route.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agi.calls.prompts import PromptCatalogue
from agi.cli.main import route_table
from agi.cli.table import RouteDeps
from agi.ledger.decisions import LedgerDecisionStore
from agi.ledger.journal import Journal
from agi.ledger.ledger import Ledger
from agi.ops.config import Settings, repo_root
from agi.ops.metrics import Metrics, start_exporter
from agi.outbound.ami import AmiClient
from agi.outbound.dialer import Dialer, DialerConfig
from agi.outbound.model import Campaign
from agi.outbound.stores import OutboundStores
from agi.server.fastagi import AGIServer
from agi.testing.fake_ami import FakeAMI, OutboundDialplan
from tests.campaign_helpers import ORG, PURPOSE, consent, fresh_lists, make_campaign
from tests.fakes import SILENCE, CallRecord, FakeAsterisk

TOKEN = "chain-test-token-0123456789"
IDENTIFY = ["marketing-identify", "marketing-opt-out-instructions"]
PLAYED = [*IDENTIFY, "campaign-demo", "goodbye"]
A, B, C, D, E = (f"+4474009000{i:02d}" for i in range(1, 6))

Hook = Callable[[str, str], Awaitable[None]]


# --------------------------------------------------------------------------- the AGI tap


class AgiTap:
    """A TCP relay from the fake Asterisk to the AGI server that can hold a command.

    ``on(needle, hook)``: when a command line from the server contains ``needle``, the relay
    awaits ``hook(uniqueid, line)`` before passing the line on, so whatever the hook does
    happens after everything the server did before sending that command and before Asterisk
    executes it.  Hooks only look and act; a hook that raises is kept in ``errors`` (the
    fixture fails the test on it), since nothing raised in a server callback reaches a test.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.hooks: list[tuple[str, Hook]] = []
        self.errors: list[BaseException] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    def on(self, needle: str, hook: Hook) -> None:
        self.hooks.append((needle, hook))

    async def start(self) -> AgiTap:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        env: dict[str, str] = {}

        async def asterisk_to_server() -> None:
            buffer = b""
            while data := await reader.read(65536):
                if "uniqueid" not in env:
                    buffer += data
                    for line in buffer.decode(errors="replace").splitlines():
                        key, _, value = line.partition(": ")
                        if key == "agi_uniqueid":
                            env["uniqueid"] = value
                up_writer.write(data)
                await up_writer.drain()

        async def server_to_asterisk() -> None:
            while line := await up_reader.readline():
                text = line.decode(errors="replace")
                for needle, hook in list(self.hooks):
                    if needle in text:
                        try:
                            await hook(env.get("uniqueid", ""), text)
                        except Exception as exc:  # reported by the fixture
                            self.errors.append(exc)
                writer.write(line)
                await writer.drain()

        pumps = [asyncio.ensure_future(asterisk_to_server()),
                 asyncio.ensure_future(server_to_asterisk())]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            up_writer.close()
            writer.close()


# --------------------------------------------------------------------------- the chain


@dataclass
class Chain:
    settings: Settings
    pool: asyncpg.Pool
    ledger: Ledger
    stores: OutboundStores
    ami: FakeAMI
    server: AGIServer
    tap: AgiTap
    dialplan: OutboundDialplan
    metrics: Metrics
    inbound: list[CallRecord] = field(default_factory=list)

    async def dialer(self, **cfg: Any) -> Dialer:
        client = AmiClient("127.0.0.1", self.ami.port, self.ami.username, self.ami.secret,
                           reconnect_timeout=1)
        await client.connect(within=10)
        config = DialerConfig(worker="w1", journal_dir=self.settings.journal_dir, poll_s=0.05,
                              **cfg)
        return Dialer(self.stores.campaigns, self.stores.claims, client, config,
                      metrics=self.metrics)

    async def run(self, campaign: Campaign) -> str:
        dialer = await self.dialer()
        try:
            return await asyncio.wait_for(dialer.run_campaign(campaign.id), 60)
        finally:
            await dialer.ami.close()

    async def inbound_opt_out(self, number: str) -> None:
        """The callee rings the consent line and presses 2 (opt out), like any caller."""
        fake = FakeAsterisk(
            "127.0.0.1", self.server.port,
            network_script=f"consent?purpose={PURPOSE}&token={TOKEN}", callerid=number,
            uniqueid=f"1800000000.{len(self.inbound) + 1}", channel="PJSIP/6001-00000099",
            presses=["2"],
        )
        self.inbound.append(await fake.run())

    def uniqueid(self, number: str, nth: int = 0) -> str:
        """The channel of the ``nth`` call the dialer placed to ``number`` (its ChannelId)."""
        return [o.headers["ChannelId"] for o in self.ami.originates if o.number == number][nth]

    def record(self, number: str, nth: int = 0) -> CallRecord:
        """The fake Asterisk's record of the ``nth`` call the dialer placed to ``number``."""
        return self.dialplan.records[self.uniqueid(number, nth)]


@pytest.fixture
async def chain(
    make_settings: Callable[..., Settings], pool: asyncpg.Pool, ledger: Ledger,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[Chain]:
    settings = make_settings(agi_token=TOKEN)
    metrics = Metrics()  # passed to the store, the routes (deps) and the dialer, as serve does
    prompts = PromptCatalogue.load(settings.sounds_dir, prefix=settings.prompt_prefix)
    store = LedgerDecisionStore(ledger, Journal(settings.journal_dir), metrics=metrics)
    deps = RouteDeps(pool=pool, store=store, prompts=prompts, metrics=metrics)
    routes = {name: factory(settings, deps) for name, factory in route_table().items()}  # as serve
    assert "marketing" in routes
    server = AGIServer(settings, routes, metrics=metrics)
    await server.start()
    tap = await AgiTap(server.port).start()
    dialplan = OutboundDialplan(agi_port=tap.port, token=TOKEN)
    ami = await FakeAMI(on_answer=dialplan).start()
    try:
        yield Chain(settings, pool, ledger, OutboundStores.over(pool, timeout=5.0), ami, server,
                    tap, dialplan, metrics)
    finally:
        await ami.close()
        await tap.close()
        await server.drain(timeout=2)
    assert tap.errors == []


async def new_campaign(chain: Chain, numbers: list[str], **spec: Any) -> Campaign:
    campaign = await make_campaign(chain.stores.campaigns, **spec)
    await fresh_lists(chain.stores.lists)
    report = await chain.stores.lists.import_contacts(campaign, "\n".join(numbers) + "\n")
    assert report.added == len(numbers)
    return campaign


def heard(record: CallRecord) -> list[str]:
    return [p.name.removeprefix("consent-ivr/") for p in record.prompts]


def first_index(record: CallRecord, needle: str) -> int:
    return next(i for i, c in enumerate(record.commands) if needle in c.replace('"', ""))


async def rows(pool: asyncpg.Pool, sql: str, *args: Any) -> list[dict[str, Any]]:
    return [dict(r) for r in await pool.fetch(sql, *args)]


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


# --------------------------------------------------------------------------- (a) who is dialled


async def test_only_opted_in_numbers_are_originated_and_hear_the_campaign(chain: Chain) -> None:
    # A, B opted in; C never asked; D opted in, then out; E opted in but on the TPS list.
    campaign = await new_campaign(chain, [A, B, C, D, E], max_attempts=1)
    await chain.stores.lists.import_suppression("tps", datetime.now(UTC).date(), [E])
    relied_on = {A: await consent(chain.ledger, A), B: await consent(chain.ledger, B)}
    await consent(chain.ledger, D)
    await consent(chain.ledger, D, "opt_out")
    await consent(chain.ledger, E)

    assert await chain.run(campaign) == "done"

    # AMI: one Originate per opted-in number, none for the others
    ami = chain.ami
    assert sorted(ami.numbers_originated()) == [A, B]
    attempts = {r["number_e164"]: r for r in await rows(
        chain.pool, "SELECT * FROM dial_attempt WHERE campaign_id = $1", campaign.id)}
    assert {n: (r["allowed"], r["reason"], r["state"], r["result"])
            for n, r in attempts.items()} == {
        A: (True, "allowed", "completed", "played"),
        B: (True, "allowed", "completed", "played"),
        C: (False, "no_consent", "refused", None),
        D: (False, "opted_out", "refused", None),
        E: (False, "suppressed", "refused", None),
    }
    plays = {r["number_e164"]: r for r in await rows(chain.pool, "SELECT * FROM marketing_play")}
    assert sorted(plays) == [A, B]
    for o in ami.originates:
        uid = o.headers["ChannelId"]
        attempt = attempts[o.number]
        assert sorted(o.headers["Variable"]) == [f"CONSENT_ATTEMPT={attempt['id']}",
                                                 f"CONSENT_CAMPAIGN={campaign.id}"]
        # The dialplan ran the marketing AGI on the channel the AMI events name.
        [new] = [e for e in ami.events_named("Newchannel") if e["Uniqueid"] == uid]
        [hangup] = [e for e in ami.events_named("Hangup") if e["Uniqueid"] == uid]
        assert new["Channel"] == hangup["Channel"]
        assert chain.dialplan.scripts[uid] == (
            f"marketing?campaign={campaign.id}&attempt={attempt['id']}&answered=1&token={TOKEN}")
        record = chain.dialplan.records[uid]
        assert record.errors == []
        assert heard(record) == PLAYED
        assert record.variables["CONSENT_RESULT"] == "played"
        play = plays[o.number]
        assert (play["consent_event_id"], play["consent_verified"], play["status"]) == (
            relied_on[o.number], True, "completed")
        assert (play["dial_attempt_id"], play["uniqueid"], play["channel_name"]) == (
            attempt["id"], uid, new["Channel"])
        assert attempt["uniqueid"] == uid
    assert await rows(chain.pool, "SELECT * FROM marketing_refused") == []
    # the zero counter: in the metrics and in the database
    assert sample(chain.metrics, "consent_ivr_marketing_played_without_consent_total") == 0
    assert sample(chain.metrics, "consent_ivr_marketing_plays_total") == 2
    assert await chain.stores.campaigns.unconsented_plays() == 0


# --------------------------------------------------------------------------- (b) 9 mid-audio


async def test_nine_during_the_campaign_audio_stops_that_number_for_good(chain: Chain) -> None:
    campaign = await new_campaign(chain, [A, B], max_attempts=2)
    await consent(chain.ledger, A)
    await consent(chain.ledger, B)
    chain.dialplan.presses = lambda n: [SILENCE, SILENCE, "9"] if n == A else []
    at_confirmation: dict[str, Any] = {}

    async def look(uniqueid: str, line: str) -> None:  # the confirmation is on the wire
        at_confirmation["events"] = await rows(
            chain.pool, "SELECT * FROM consent_event WHERE number_e164 = $1 "
            "AND decision = 'opt_out'", A)
        at_confirmation["dnc"] = await rows(
            chain.pool, "SELECT * FROM do_not_call WHERE number_e164 = $1", A)

    chain.tap.on("marketing-opted-out", look)
    assert await chain.run(campaign) == "done"

    record = chain.record(A)
    assert heard(record) == [*IDENTIFY, "campaign-demo", "marketing-opted-out"]
    assert record.prompts[2].interrupted and record.prompts[2].digit == "9"
    assert record.variables["CONSENT_RESULT"] == "opted_out"
    assert record.hangup_by == "server"
    # committed before the confirmation went out
    [event] = at_confirmation["events"]
    assert (event["method"], event["channel"], event["organisation"], event["uniqueid"]) == (
        "ivr_outbound_opt_out", "automated_call", ORG, chain.uniqueid(A))
    [dnc] = at_confirmation["dnc"]
    assert (dnc["organisation"], dnc["consent_event_id"]) == (ORG, event["id"])
    assert record.variables["CONSENT_EVENT_ID"] == str(event["id"])
    assert first_index(record, "CONSENT_RESULT opted_out") < first_index(
        record, "marketing-opted-out")
    assert heard(chain.record(B)) == PLAYED
    assert {r["number_e164"]: r["status"] for r in await rows(
        chain.pool, "SELECT * FROM marketing_play")} == {A: "opted_out", B: "completed"}

    # The campaign runs again (contacts re-queued): A is never originated again.
    before = len(chain.ami.originates)
    await chain.pool.execute("UPDATE contact SET state = 'ready', next_attempt_at = '-infinity'")
    assert await chain.run(campaign) == "done"
    assert chain.ami.numbers_originated()[before:] == [B]
    latest = await chain.pool.fetchrow(
        "SELECT allowed, reason FROM dial_attempt WHERE number_e164 = $1 ORDER BY id DESC "
        "LIMIT 1", A)
    assert tuple(latest) == (False, "do_not_call")
    assert sample(chain.metrics, "consent_ivr_marketing_played_without_consent_total") == 0


# --------------------------------------------------------------------------- (c) revoked in time


@pytest.mark.parametrize("moment", ["while_ringing", "during_identification"])
async def test_opt_in_revoked_between_dialling_and_playback_plays_nothing(
    chain: Chain, moment: str
) -> None:
    campaign = await new_campaign(chain, [A], max_attempts=1)
    await consent(chain.ledger, A)

    async def revoke(*_: Any) -> None:
        await chain.inbound_opt_out(A)

    if moment == "while_ringing":  # the dialer decided; the callee opts out before answering
        chain.dialplan.before_agi = revoke
    else:  # identified and offered the opt-out; the route's last check is still to come
        chain.tap.on("marketing-opt-out-instructions", revoke)
    assert await chain.run(campaign) == "done"

    [inbound] = chain.inbound
    assert inbound.variables["CONSENT_RESULT"] == "opted_out"
    assert chain.ami.numbers_originated() == [A]  # the dialer's gate had allowed it
    record = chain.record(A)
    assert heard(record) == ([] if moment == "while_ringing" else IDENTIFY)
    assert "campaign-demo" not in heard(record)
    assert record.variables["CONSENT_RESULT"] == "refused"
    assert record.variables["CONSENT_REFUSAL_REASON"] == "opted_out"
    uid = chain.uniqueid(A)
    attempt = await chain.pool.fetchval("SELECT id FROM dial_attempt WHERE number_e164 = $1", A)
    refused = await rows(chain.pool, "SELECT * FROM marketing_refused")
    assert [(r["number_e164"], r["reason"], r["dial_attempt_id"], r["uniqueid"])
            for r in refused] == [(A, "opted_out", attempt, uid)]
    assert await rows(chain.pool, "SELECT * FROM marketing_play") == []
    assert await chain.pool.fetchval(
        "SELECT result FROM dial_attempt WHERE id = $1", attempt) == "refused"
    assert sample(chain.metrics, "consent_ivr_marketing_refusals_total", reason="opted_out") == 1
    assert sample(chain.metrics, "consent_ivr_marketing_plays_total") == 0
    assert sample(chain.metrics, "consent_ivr_marketing_played_without_consent_total") == 0


# --------------------------------------------------------------------------- re-confirmation


async def test_reconfirm_one_records_a_fresh_opt_in_nine_opts_out_silence_changes_nothing(
    chain: Chain,
) -> None:
    keeps, silent, stops = A, B, C
    campaign = await new_campaign(chain, [keeps, silent, stops], max_attempts=1, reconfirm=True)
    prior = {n: await consent(chain.ledger, n) for n in (keeps, silent, stops)}
    # identification, opt-out offer, the statement (heard whole), then the re-confirmation
    chain.dialplan.presses = lambda n: {keeps: [SILENCE, SILENCE, SILENCE, "1"],
                                        stops: [SILENCE, SILENCE, SILENCE, "9"]}.get(n, [])
    at_audio: dict[str, list[dict[str, Any]]] = {}

    async def look(uniqueid: str, line: str) -> None:  # the campaign audio is on the wire
        at_audio[uniqueid] = await rows(
            chain.pool, "SELECT * FROM consent_event WHERE method = 'ivr_outbound_reconfirm' "
            "AND uniqueid = $1", uniqueid)

    chain.tap.on("campaign-demo", look)
    assert await chain.run(campaign) == "done"
    reconfirm = [*IDENTIFY, "statement-marketing-calls", "reconfirm"]

    # 1: a fresh opt-in, committed before the campaign audio; this call relied on the prior one
    record = chain.record(keeps)
    uid = chain.uniqueid(keeps)
    assert heard(record) == [*reconfirm, "campaign-demo", "goodbye"]
    assert record.variables["CONSENT_RESULT"] == "played"
    [fresh] = at_audio[uid]
    assert (fresh["decision"], fresh["channel"], fresh["organisation"], fresh["purpose"],
            fresh["number_e164"], fresh["captured_by"]) == (
        "opt_in", "automated_call", ORG, PURPOSE, keeps, "first_party")
    assert fresh["idempotency_key"].startswith(f"{uid}|")
    assert [(d["step"], d["digit"]) for d in json.loads(fresh["digits"])] == [("reconfirm", "1")]
    fresh_prompts = json.loads(fresh["prompts"])
    assert [p["id"] for p in fresh_prompts][-2:] == ["statement-marketing-calls", "reconfirm"]
    assert fresh_prompts[-2]["heard_ms"] == fresh_prompts[-2]["length_ms"]  # heard whole
    assert record.variables["CONSENT_EVENT_ID"] == str(fresh["id"])
    plays = {r["number_e164"]: r for r in await rows(chain.pool, "SELECT * FROM marketing_play")}
    assert (plays[keeps]["consent_event_id"], plays[keeps]["consent_verified"],
            plays[keeps]["status"]) == (prior[keeps], True, "completed")

    # silence: the existing opt-in stands, nothing recorded
    record = chain.record(silent)
    assert heard(record) == [*reconfirm, "campaign-demo", "goodbye"]
    assert record.variables["CONSENT_RESULT"] == "played"
    assert (plays[silent]["consent_event_id"], plays[silent]["status"]) == (
        prior[silent], "completed")

    # 9: the opt-out, with its do-not-call entry, before the confirmation; no campaign audio
    record = chain.record(stops)
    assert heard(record) == [*reconfirm, "marketing-opted-out"]
    assert record.variables["CONSENT_RESULT"] == "opted_out"
    assert stops not in plays
    [out] = await rows(chain.pool, "SELECT * FROM consent_event WHERE decision = 'opt_out'")
    assert (out["number_e164"], out["method"]) == (stops, "ivr_outbound_opt_out")
    assert [(d["step"], d["digit"]) for d in json.loads(out["digits"])] == [("reconfirm", "9")]
    assert record.variables["CONSENT_EVENT_ID"] == str(out["id"])
    assert first_index(record, "CONSENT_RESULT opted_out") < first_index(
        record, "marketing-opted-out")
    assert await chain.pool.fetchval(
        "SELECT consent_event_id FROM do_not_call WHERE number_e164 = $1", stops) == out["id"]

    events = await rows(chain.pool, "SELECT number_e164, decision, method FROM consent_event "
                        "ORDER BY id")
    assert [e for e in events if e["number_e164"] == silent] == [
        {"number_e164": silent, "decision": "opt_in", "method": "ivr_inbound"}]
    assert await chain.stores.campaigns.unconsented_plays() == 0

    # The fresh opt-in is what a later call relies on.
    later = await new_campaign(chain, [keeps], name="spring", max_attempts=1)
    assert await chain.run(later) == "done"
    assert await chain.pool.fetchval(
        "SELECT consent_event_id FROM marketing_play WHERE campaign_id = $1", later.id
    ) == fresh["id"]


async def test_reconfirm_statement_ignores_one_and_stops_on_nine(chain: Chain) -> None:
    """During the statement a 1 counts for nothing (recorded as ignored); 9 still opts out."""
    hasty, stops = A, B
    campaign = await new_campaign(chain, [hasty, stops], max_attempts=1, reconfirm=True)
    prior = {n: await consent(chain.ledger, n) for n in (hasty, stops)}
    chain.dialplan.presses = lambda n: {hasty: [SILENCE, SILENCE, "1", SILENCE, SILENCE],
                                        stops: [SILENCE, SILENCE, "9"]}.get(n, [])
    assert await chain.run(campaign) == "done"

    # the 1 pressed into the statement kept nothing: no fresh opt-in, the prior one stands
    record = chain.record(hasty)  # the statement stopped at the 1, then resumed to its end
    assert heard(record) == [*IDENTIFY, "statement-marketing-calls",
                             "statement-marketing-calls", "reconfirm", "campaign-demo", "goodbye"]
    assert await rows(chain.pool, "SELECT id FROM consent_event WHERE method = "
                      "'ivr_outbound_reconfirm'") == []
    plays = {r["number_e164"]: r for r in await rows(chain.pool, "SELECT * FROM marketing_play")}
    assert plays[hasty]["consent_event_id"] == prior[hasty]
    prompts = json.loads(plays[hasty]["prompts"])
    assert [p["id"] for p in prompts if p["id"].startswith("statement-")] == [
        "statement-marketing-calls"]

    # 9 during the statement is the opt-out, as during every other prompt
    record = chain.record(stops)
    assert heard(record) == [*IDENTIFY, "statement-marketing-calls", "marketing-opted-out"]
    [out] = await rows(chain.pool, "SELECT * FROM consent_event WHERE decision = 'opt_out'")
    assert out["number_e164"] == stops
    assert [(d["step"], d["digit"], d["ignored"]) for d in json.loads(out["digits"])] == [
        ("statement-marketing-calls", "9", False)]
    assert stops not in plays


async def test_reconfirm_needs_an_opt_out_key_other_than_one(chain: Chain) -> None:
    from agi.outbound.model import CampaignError

    with pytest.raises(CampaignError, match="re-confirmation"):
        await make_campaign(chain.stores.campaigns, reconfirm=True, opt_out_key="1")


# --------------------------------------------------------------------------- dialer metrics


async def http_get(port: int, path: str) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body.decode()


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(port: int) -> Samples:
    status, body = await http_get(port, "/metrics")
    assert status == 200
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(body) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def scrape_until(port: int, check: Callable[[Samples], bool]) -> Samples:
    """Scrape until ``check`` holds (bounded: a failure shows the last scrape)."""
    samples: Samples = {}
    try:
        async with asyncio.timeout(20):
            while not check(samples := await scrape(port)):
                await asyncio.sleep(0.05)
    except TimeoutError:
        shown = sorted((k[0], v) for k, v in samples.items() if "dialer" in k[0] or "ami" in k[0])
        pytest.fail(f"metrics never got there: {shown}")
    return samples


async def test_dialer_metrics_move_during_a_run_and_show_the_ami_loss(chain: Chain) -> None:
    campaign = await new_campaign(chain, [A, B, C, D], max_attempts=1)
    for n in (A, B, C):
        await consent(chain.ledger, n)
    exporter = await start_exporter("127.0.0.1:0", chain.metrics)
    assert exporter is not None
    chain.ami.hold = asyncio.Event()  # answered calls stay up until released
    dialer = await chain.dialer(max_call_s=30)
    stop = asyncio.Event()
    run = asyncio.create_task(dialer.run_campaign(campaign.id, stop))
    attempts = "consent_ivr_dialer_attempts_total"
    try:
        up = await scrape_until(exporter.port, lambda s: value(
            s, "consent_ivr_dialer_concurrent_channels") == 3 and value(
            s, attempts, decision="refused", reason="no_consent") == 1)
        assert value(up, attempts, decision="allowed", reason="allowed") == 3
        assert value(up, "consent_ivr_dialer_originates_total", result="sent") == 3
        assert value(up, "consent_ivr_dialer_calls_per_second") > 0
        assert value(up, "consent_ivr_ami_connected") == 1
        assert value(up, "consent_ivr_ami_reconnects_total") == 0

        chain.ami.accepting = False  # Asterisk's manager goes away and stays away for now
        chain.ami.drop()
        down = await scrape_until(exporter.port, lambda s: value(
            s, "consent_ivr_ami_connected") == 0 and bool(s))
        assert value(down, "consent_ivr_dialer_concurrent_channels") == 3  # calls still up
        chain.ami.accepting = True
        back = await scrape_until(exporter.port, lambda s: value(
            s, "consent_ivr_ami_reconnects_total") == 1)
        assert value(back, "consent_ivr_ami_connected") == 1
        chain.ami.hold.set()
        assert await asyncio.wait_for(run, 30) == "done"
        done = await scrape(exporter.port)
    finally:
        chain.ami.hold.set()
        stop.set()
        await asyncio.wait_for(asyncio.gather(run, return_exceptions=True), 30)
        await dialer.ami.close()
        await exporter.close()
    assert value(done, "consent_ivr_dialer_originates_total", result="answered") == 3
    assert value(done, "consent_ivr_dialer_originates_total", result="sent") == 3
    assert value(done, "consent_ivr_dialer_concurrent_channels") == 0
    assert value(done, "consent_ivr_marketing_plays_total") == 3
    assert value(done, "consent_ivr_marketing_played_without_consent_total") == 0
    assert sorted(chain.ami.numbers_originated()) == [A, B, C]  # nothing repeated


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_dialer_command_serves_metrics_and_readiness(
    db_url: str, stores: OutboundStores, ledger: Ledger, tmp_path: Path
) -> None:
    """``consent-ivr dialer`` (the real process) listens on CONSENT_IVR_METRICS_ADDR."""
    campaign = await make_campaign(stores.campaigns, max_attempts=1)
    await fresh_lists(stores.lists)
    await stores.lists.import_contacts(campaign, f"{A}\n{B}\n")
    await consent(ledger, A)
    ami = await FakeAMI().start()
    port = free_port()
    log = tmp_path / "dialer.log"
    env = {
        **os.environ,
        "DATABASE_URL": db_url,
        "CONSENT_IVR_AMI_HOST": "127.0.0.1",
        "CONSENT_IVR_AMI_PORT": str(ami.port),
        "CONSENT_IVR_AMI_USER": ami.username,
        "CONSENT_IVR_AMI_SECRET": ami.secret,
        "CONSENT_IVR_METRICS_ADDR": f"127.0.0.1:{port}",
        "CONSENT_IVR_JOURNAL_DIR": str(tmp_path / "journal"),
        "CONSENT_IVR_DATA_DIR": str(tmp_path / "var"),
        "CONSENT_IVR_LOG_FORMAT": "json",
    }
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "agi", "dialer", "--worker", "cli"],
                                env=env, cwd=repo_root(), stdout=out, stderr=subprocess.STDOUT)
    try:
        async def scraped(check: Callable[[Samples], bool]) -> Samples:
            samples: Samples = {}
            async with asyncio.timeout(30):
                while True:
                    assert proc.poll() is None, log.read_text()
                    try:
                        samples = await scrape(port)
                    except OSError:
                        samples = {}
                    if check(samples):
                        return samples
                    await asyncio.sleep(0.1)

        # both contacts decided: A dialled and answered, B refused (the dialer claims them in
        # either order, so wait for both before reading the rest)
        samples = await scraped(lambda s: value(
            s, "consent_ivr_dialer_originates_total", result="answered") == 1 and value(
            s, "consent_ivr_dialer_attempts_total", decision="refused", reason="no_consent") >= 1)
        assert value(samples, "consent_ivr_ami_connected") == 1
        assert value(samples, "consent_ivr_dialer_attempts_total", decision="allowed",
                     reason="allowed") == 1
        assert value(samples, "consent_ivr_dialer_attempts_total", decision="refused",
                     reason="no_consent") == 1
        status, body = await http_get(port, "/readyz")
        assert status == 200 and json.loads(body)["ready"] is True
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 20) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        await ami.close()
    assert ami.numbers_originated() == [A]

