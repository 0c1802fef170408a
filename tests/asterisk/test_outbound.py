"""The dialer over a real AMI, with the kit's least-privilege user.

The campaigns dial ``Local/{number}@test-callee``: the callee's half (``test-callee``)
rings, answers and presses keys from a script kept in Asterisk's own database; the
originated half runs ``consent-outbound`` exactly as the kit has it. What Asterisk
created is counted from its ``Newchannel`` events: a number the gate refuses must never
appear there.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from panoramisk import Manager

from agi.ledger.ledger import Ledger
from agi.ops.config import repo_root
from tests.asterisk.conftest import fetch_rows, run_batch
from tests.asterisk.pbx import DIALER_SECRET, Asterisk, CallRecord, Timeline
from tests.campaign_helpers import consent
from tests.harness import Serve

EN = Timeline("en")
START, INTO = 0.3, 3.0
ORG = "Example Energy Ltd"

LISTENS = "+447400300001"  # opted in: hears the campaign to the end
NO_CONSENT = "+447400300002"  # never asked, never agreed: never dialled
PRESSES_9 = "+447400300003"  # opted in, presses 9 during the campaign audio
OPTED_OUT = "+447400300004"  # latest decision an opt-out: never dialled
WITHDRAWS = "+447400300005"  # opted in when dialled, opted out while it rang
NEW_NO_CONSENT = "+447400300006"

# Campaign C, run by the long-running dialer while Asterisk's AMI goes down and comes back.
HUNG_UP_WHILE_DOWN = "+447400300101"  # up at the drop, hung up while the AMI is down
UP_THROUGHOUT = "+447400300102"  # up at the drop, still up when the AMI is back
RINGING_AT_DROP = "+447400300103"  # ringing at the drop, answers while the AMI is down
AFTER_RESTART = ("+447400300104", "+447400300105")  # claimable only once the AMI is back
RESTART_NUMBERS = (HUNG_UP_WHILE_DOWN, UP_THROUGHOUT, RINGING_AT_DROP, *AFTER_RESTART)
RESTART_RING = 6  # seconds RINGING_AT_DROP rings: the drop happens within them


def cli(db_url: str, home: Path, *argv: str, ami_port: int, timeout: float = 120,
        **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agi", *argv], cwd=repo_root(), capture_output=True, text=True,
        timeout=timeout, check=False, env=_env(db_url, home, ami_port, **env))


def _env(db_url: str, home: Path, ami_port: int, **env: str) -> dict[str, str]:
    return {**os.environ, "DATABASE_URL": db_url, "CONSENT_IVR_AMI_HOST": "127.0.0.1",
            "CONSENT_IVR_AMI_PORT": str(ami_port), "CONSENT_IVR_AMI_USER": "consent-dialer",
            "CONSENT_IVR_AMI_SECRET": DIALER_SECRET, "CONSENT_IVR_METRICS_ADDR": "",
            "CONSENT_IVR_JOURNAL_DIR": str(home / "journal"),
            "CONSENT_IVR_DATA_DIR": str(home / "var"), "CONSENT_IVR_LOG_FORMAT": "json",
            **env}


def must(out: subprocess.CompletedProcess[str]) -> str:
    assert out.returncode == 0, f"{out.args}: {out.returncode}\n{out.stdout}\n{out.stderr}"
    return out.stdout


def fresh_lists(db: str, home: Path, port: int) -> None:
    """Today's TPS and CTPS snapshots (one unrelated number), so the staleness rule passes."""
    today = datetime.now(UTC).date().isoformat()
    lists = home / "tps.txt"
    lists.write_text("+441632960999\n")
    for name in ("tps", "ctps"):
        must(cli(db, home, "suppression", "import", "--list", name, "--as-of", today,
                 str(lists), ami_port=port))


def make_campaign(db: str, home: Path, name: str, numbers: list[str], ami_port: int,
                  *, concurrent: int = 10) -> None:
    must(cli(db, home, "campaign", "create", name, "--caller-id", "+442079460000",
             "--dial", "Local/{number}@test-callee", "--audio", "campaign-demo",
             "--window", "00:00-23:59", "--cps", "5", "--max-concurrent", str(concurrent),
             "--max-attempts", "1", "--ring", "25", ami_port=ami_port))
    contacts = home / f"{name}.csv"
    contacts.write_text("number\n" + "".join(f"{n}\n" for n in numbers))
    must(cli(db, home, "contacts", "import", name, str(contacts), ami_port=ami_port))


async def _script(pbx: Asterisk, number: str, steps: list[tuple[float, str]],
                  ring: float = 0) -> None:
    """What the callee at ``number`` does once it answers (and how long it rings)."""
    manager = await pbx.connect_ami()
    exten = number.lstrip("+")
    script = "/".join(f"{d:.2f}:{k}" for d, k in steps)
    for key, value in (("script", script), ("ring", str(ring) if ring else "")):
        if value:
            await manager.send_action({"Action": "DBPut", "Family": f"test/{key}",
                                       "Key": exten, "Val": value})
        else:
            await manager.send_action({"Action": "DBDel", "Family": f"test/{key}",
                                       "Key": exten})


def dialled(pbx: Asterisk, number: str) -> int:
    """How many channels Asterisk created towards ``number``."""
    prefix = f"Local/{number}@test-callee-"
    return sum(1 for ev in pbx.originated
               if ev.get("Channel", "").startswith(prefix) and ev["Channel"].endswith(";1"))


def calls_to(pbx: Asterisk, number: str) -> list[CallRecord]:
    prefix = f"Local/{number}@test-callee-"
    return [rec for rec in pbx.calls.values()
            if any(ch.startswith(prefix) for ch in rec.channels)]


async def _ended(pbx: Asterisk, number: str, count: int = 1, timeout: float = 120) -> list[
        CallRecord]:
    deadline = time.monotonic() + timeout
    while True:
        recs = calls_to(pbx, number)
        if len(recs) >= count and all(r.channels and r.hungup >= r.channels for r in recs):
            return recs
        assert time.monotonic() < deadline, f"{number}: {[r.summary() for r in recs]}"
        await asyncio.sleep(0.1)


async def _consents(db: str) -> None:
    pool = await asyncpg.create_pool(db, min_size=1, max_size=2)
    try:
        ledger = Ledger(pool, timeout=5)
        for number in (LISTENS, PRESSES_9, OPTED_OUT, WITHDRAWS):
            await consent(ledger, number)
        await consent(ledger, OPTED_OUT, "opt_out")
    finally:
        await pool.close()


@pytest.fixture(scope="module")
def outbound(pbx: Asterisk, tier_db: str, tier_dir: Path, consent_service: Serve,
             ) -> Iterator[dict[str, Any]]:
    home = tier_dir / "outbound"
    home.mkdir(parents=True, exist_ok=True)
    db, port = tier_db, pbx.ami_port
    asyncio.run(_consents(db))
    fresh_lists(db, home, port)
    make_campaign(db, home, "tier-a", [LISTENS, NO_CONSENT, PRESSES_9, OPTED_OUT, WITHDRAWS],
                  port)
    make_campaign(db, home, "tier-b", [LISTENS, PRESSES_9, NEW_NO_CONSENT], port)
    audio_at = START + EN.length("marketing-identify", "marketing-opt-out-instructions")
    results: dict[str, Any] = {}

    async def campaign_a() -> dict[str, Any]:
        await _script(pbx, LISTENS, [])
        await _script(pbx, PRESSES_9, [(audio_at + INTO, "9")])
        await _script(pbx, WITHDRAWS, [], ring=4)
        dial = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "agi", "dial", "tier-a", cwd=repo_root(),
            env=_env(db, home, port), stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT)
        # the callee opts out (say, by text message) while the phone rings
        deadline = time.monotonic() + 60
        while not dialled(pbx, WITHDRAWS):
            assert time.monotonic() < deadline, "never dialled " + WITHDRAWS
            await asyncio.sleep(0.05)
        pool = await asyncpg.create_pool(db, min_size=1, max_size=1)
        try:
            await consent(Ledger(pool, timeout=5), WITHDRAWS, "opt_out")
        finally:
            await pool.close()
        out, _ = await asyncio.wait_for(dial.communicate(), 150)
        for number in (LISTENS, PRESSES_9, WITHDRAWS):
            await _ended(pbx, number)
        return {"code": dial.returncode, "out": out.decode()}

    async def campaign_b() -> dict[str, Any]:
        """The long-running worker, after campaign A: the opt-out of A holds."""
        worker = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "agi", "dialer", "--worker", "tier-worker", cwd=repo_root(),
            env=_env(db, home, port), stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT)
        await _ended(pbx, LISTENS, count=2)
        deadline = time.monotonic() + 30
        while (await fetch_rows(db, "SELECT count(*) AS n FROM dial_attempt da JOIN campaign c "
                           "ON c.id = da.campaign_id WHERE c.name = 'tier-b' "
                           "AND da.state NOT IN ('originating', 'answered')"))[0]["n"] < 3:
            assert time.monotonic() < deadline, "campaign B did not settle"
            await asyncio.sleep(0.2)
        worker.send_signal(signal.SIGTERM)
        out, _ = await asyncio.wait_for(worker.communicate(), 60)
        return {"code": worker.returncode, "out": out.decode()}

    async def both() -> None:
        results["a"] = await campaign_a()
        results["b"] = await campaign_b()

    run_batch(pbx, {"campaigns": both})
    for table in ("dial_attempt", "marketing_play", "marketing_refused", "do_not_call",
                  "consent_event"):
        results[table] = asyncio.run(fetch_rows(db, f"SELECT * FROM {table} ORDER BY 1"))
    results["pbx"] = pbx
    yield results


def _attempts(results: dict[str, Any], number: str) -> list[dict[str, Any]]:
    return [a for a in results["dial_attempt"] if a["number_e164"] == number]


def test_dial_originates_exactly_what_the_gate_allows(outbound: dict[str, Any]) -> None:
    pbx: Asterisk = outbound["pbx"]
    assert outbound["a"]["code"] == 0, outbound["a"]["out"]
    assert dialled(pbx, NO_CONSENT) == 0
    assert dialled(pbx, OPTED_OUT) == 0
    assert dialled(pbx, NEW_NO_CONSENT) == 0
    assert [a["reason"] for a in _attempts(outbound, NO_CONSENT)] == ["no_consent"]
    assert [a["allowed"] for a in _attempts(outbound, OPTED_OUT)] == [False]
    # the allowed ones, once each per campaign
    assert dialled(pbx, LISTENS) == 2  # campaigns A and B
    assert dialled(pbx, PRESSES_9) == 1  # A only: B refuses it after the opt-out
    assert dialled(pbx, WITHDRAWS) == 1


def test_answered_call_runs_the_marketing_route_and_plays_the_campaign(
        outbound: dict[str, Any]) -> None:
    first = calls_to(outbound["pbx"], LISTENS)[0]
    assert first.last("CONSENT_RESULT") == "played", first.summary()
    assert first.contexts()[-1] == "consent-outbound"  # and no fallback after it
    assert "consent-ivr/campaign-demo" in first.prompts_streamed()
    # the kit answered (a no-op on an originated call) and said answered=1: no ANSWER
    assert ["ANSWER"] not in first.agi_commands(), first.agi
    plays = [p for p in outbound["marketing_play"] if p["consent_verified"]]
    assert len(plays) >= 2  # this number's (campaigns A and B), and the 9-presser's (cut short)
    # the calls run concurrently: pick this number's rows, not the first one stored
    statuses = [p["status"] for p in plays if p["number_e164"] == LISTENS]
    assert statuses and set(statuses) == {"completed"}, statuses


def test_nine_during_the_audio_opts_out_and_is_never_dialled_again(
        outbound: dict[str, Any]) -> None:
    [rec] = calls_to(outbound["pbx"], PRESSES_9)
    assert rec.last("CONSENT_RESULT") == "opted_out", rec.summary()
    assert "consent-ivr/marketing-opted-out" in rec.prompts_streamed()
    events = [e for e in outbound["consent_event"] if e["number_e164"] == PRESSES_9]
    assert [(e["decision"], e["method"]) for e in events][-1] == (
        "opt_out", "ivr_outbound_opt_out")
    assert any(d["number_e164"] == PRESSES_9 for d in outbound["do_not_call"])
    # campaign B refused it without dialling
    b = [a for a in _attempts(outbound, PRESSES_9) if not a["allowed"]]
    assert b and b[0]["reason"] in {"do_not_call", "no_consent"}


def test_consent_withdrawn_while_ringing_plays_nothing(outbound: dict[str, Any]) -> None:
    [rec] = calls_to(outbound["pbx"], WITHDRAWS)
    assert rec.last("CONSENT_RESULT") == "refused", rec.summary()
    assert "consent-ivr/campaign-demo" not in rec.prompts_streamed()
    # nor did the dialplan: at most who called, and goodbye
    assert set(rec.playbacks()) <= {"consent-ivr/identify", "consent-ivr/goodbye"}
    assert any(r["reason"] for r in outbound["marketing_refused"])


def test_long_running_dialer_stops_cleanly(outbound: dict[str, Any]) -> None:
    assert outbound["b"]["code"] == 0, outbound["b"]["out"]


# ----------------------------------------------------------------------- AMI restart


def _set_ami_listener(pbx: Asterisk, enabled: bool) -> None:
    """Stop or start Asterisk's AMI listener: ``enabled`` in manager.conf and ``manager
    reload`` (which alone leaves the sessions already logged in untouched)."""
    conf = pbx.etc / "manager.conf"
    old, new = ("enabled = no", "enabled = yes") if enabled else ("enabled = yes",
                                                                    "enabled = no")
    text = conf.read_text()
    assert old in text, text
    conf.write_text(text.replace(old, new, 1))
    pbx.rx("manager reload")


def _kick_sessions(pbx: Asterisk, username: str) -> int:
    """Close every AMI session of ``username`` from Asterisk's side (``manager kick
    session``); how many there were."""
    fds = [line.split()[4] for line in pbx.rx("manager show connected").splitlines()
           if line.split()[:1] == [username]]
    for fd in fds:
        pbx.rx(f"manager kick session {fd}")
    return len(fds)


def _ami_refuses(pbx: Asterisk) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", pbx.ami_port), timeout=2):
            return False
    except ConnectionRefusedError:
        return True


def _callee_did(pbx: Asterisk, number: str, what: str) -> bool:
    """The harness saw the callee at ``number`` ring or answer (``TestCallee<what>``)."""
    return any(ev.get("UserEvent") == f"TestCallee{what}"
               for rec in calls_to(pbx, number) for ev in rec.user_events)


def _callee_channel(pbx: Asterisk, number: str) -> str:
    prefix = f"Local/{number}@test-callee-"
    return next(ev["Channel"] for ev in pbx.originated
                if ev.get("Channel", "").startswith(prefix) and ev["Channel"].endswith(";2"))


async def _until(what: str, done: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


@pytest.fixture(scope="module")
def ami_restart(pbx: Asterisk, tier_db: str, tier_dir: Path, consent_service: Serve,
                ) -> Iterator[dict[str, Any]]:
    """Campaign C through the long-running dialer while Asterisk's AMI goes away.

    Three calls at most at once, so at the drop two callees are up and one is ringing, and
    the last two numbers cannot be claimed yet. Asterisk's manager then stops listening and
    closes the dialer's session itself (the way a manager restart looks to a client: its
    connection closed by the far end, reconnects refused until it is back); the harness's
    own session stays, so every channel Asterisk creates is still counted. While the AMI is
    down one call ends (the dialer misses its Hangup) and the ringing one answers (the dialer
    misses its OriginateResponse); then the manager listens again.
    """
    home = tier_dir / "ami-restart"
    home.mkdir(parents=True, exist_ok=True)
    db, port = tier_db, pbx.ami_port

    async def consents() -> None:
        pool = await asyncpg.create_pool(db, min_size=1, max_size=2)
        try:
            ledger = Ledger(pool, timeout=5)
            for number in RESTART_NUMBERS:
                await consent(ledger, number)
        finally:
            await pool.close()

    asyncio.run(consents())
    fresh_lists(db, home, port)
    make_campaign(db, home, "tier-c", list(RESTART_NUMBERS), port, concurrent=3)
    results: dict[str, Any] = {}

    async def campaign_c() -> None:
        for number in RESTART_NUMBERS:
            await _script(pbx, number, [], ring=RESTART_RING if number == RINGING_AT_DROP else 0)
        worker = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "agi", "dialer", "--worker", "restart-worker",
            cwd=repo_root(), env=_env(db, home, port), stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT)
        output = asyncio.ensure_future(worker.communicate())
        try:
            await _until("two calls up and one ringing", lambda: (
                _callee_did(pbx, HUNG_UP_WHILE_DOWN, "Answered")
                and _callee_did(pbx, UP_THROUGHOUT, "Answered")
                and _callee_did(pbx, RINGING_AT_DROP, "Ringing")))
            results["ringing_at_drop"] = not _callee_did(pbx, RINGING_AT_DROP, "Answered")
            await asyncio.to_thread(_set_ami_listener, pbx, False)
            results["kicked"] = await asyncio.to_thread(_kick_sessions, pbx, "consent-dialer")
            results["refused_while_down"] = await asyncio.to_thread(_ami_refuses, pbx)
            manager = await pbx.connect_ami()
            await manager.send_action({"Action": "Hangup",
                                       "Channel": _callee_channel(pbx, HUNG_UP_WHILE_DOWN)})
            await _ended(pbx, HUNG_UP_WHILE_DOWN)
            await _until("the ringing callee answers",
                         lambda: _callee_did(pbx, RINGING_AT_DROP, "Answered"))
            results["dialled_while_down"] = {n: dialled(pbx, n) for n in RESTART_NUMBERS}
            results["up_when_back"] = not calls_to(pbx, UP_THROUGHOUT)[0].hungup
            await asyncio.to_thread(_set_ami_listener, pbx, True)
            for number in RESTART_NUMBERS:
                await _ended(pbx, number)
            deadline = time.monotonic() + 30
            while (await fetch_rows(
                    db, "SELECT count(*) AS n FROM dial_attempt da JOIN campaign c "
                    "ON c.id = da.campaign_id WHERE c.name = 'tier-c' "
                    "AND da.state NOT IN ('originating', 'answered')"))[0]["n"] < len(
                        RESTART_NUMBERS):
                assert time.monotonic() < deadline, "campaign C did not settle"
                await asyncio.sleep(0.2)
        finally:
            if worker.returncode is None:
                worker.send_signal(signal.SIGTERM)
            try:
                out, _ = await asyncio.wait_for(asyncio.shield(output), 60)
            except TimeoutError:  # still waiting for a call it lost: the test has failed
                worker.kill()
                out, _ = await output
            results["code"], results["out"] = worker.returncode, out.decode()

    failed = run_batch(pbx, {"campaign": campaign_c})["campaign"]
    if isinstance(failed, BaseException):
        raise AssertionError(f"campaign C: {failed!r}\n--- the dialer's log ---\n"
                             + results.get("out", "")) from failed
    results["attempts"] = asyncio.run(fetch_rows(
        db, "SELECT da.* FROM dial_attempt da JOIN campaign c ON c.id = da.campaign_id "
        "WHERE c.name = 'tier-c' ORDER BY da.id"))
    results["log"] = [json.loads(line) for line in results["out"].splitlines()
                      if line.startswith("{")]
    results["pbx"] = pbx
    yield results


def test_ami_restart_mid_campaign_loses_and_repeats_no_attempt(
        ami_restart: dict[str, Any]) -> None:
    pbx: Asterisk = ami_restart["pbx"]
    # The restart happened as described: the AMI really refused connections, with two
    # calls up and one ringing, and the last two numbers not yet dialled.
    assert ami_restart["kicked"] >= 1
    assert ami_restart["refused_while_down"]
    assert ami_restart["ringing_at_drop"]
    assert ami_restart["up_when_back"]
    assert [ami_restart["dialled_while_down"][n] for n in AFTER_RESTART] == [0, 0]
    events = [line.get("event") for line in ami_restart["log"]]
    assert "ami_disconnected" in events and events.count("ami_logged_in") >= 2, events
    # Every allowed number was originated exactly once ...
    assert {n: dialled(pbx, n) for n in RESTART_NUMBERS} == dict.fromkeys(RESTART_NUMBERS, 1)
    # ... with one attempt each, every one closed as the answered call it was.
    rows = {n: [a for a in ami_restart["attempts"] if a["number_e164"] == n]
            for n in RESTART_NUMBERS}
    assert {n: [(a["allowed"], a["state"]) for a in r] for n, r in rows.items()} == {
        n: [(True, "completed")] for n in RESTART_NUMBERS}, ami_restart["attempts"]
    # the call that ended unseen was closed from Asterisk's list of live channels, the
    # ringing one found up there
    lost = {line["attempt"] for line in ami_restart["log"]
            if line.get("event") == "dial_outcome_lost"}
    survived = {line["attempt"] for line in ami_restart["log"]
                if line.get("event") == "dial_call_survived_ami_loss"}
    [hung_up] = rows[HUNG_UP_WHILE_DOWN]
    assert lost == {hung_up["id"]}
    assert {rows[UP_THROUGHOUT][0]["id"], rows[RINGING_AT_DROP][0]["id"]} <= survived
    assert ami_restart["code"] == 0, ami_restart["out"]


# ----------------------------------------------------------------------- least privilege


async def _dialer_session(pbx: Asterisk) -> Manager:
    manager = Manager(host="127.0.0.1", port=pbx.ami_port, username="consent-dialer",
                      secret=DIALER_SECRET, ping_delay=0)
    await manager.connect()
    return manager


def test_dialer_user_cannot_run_cli_commands_or_originate_to_applications(
        pbx: Asterisk, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    async def probe() -> tuple[Any, Any]:
        manager = await _dialer_session(pbx)
        try:
            command = await manager.send_action({"Action": "Command",
                                                 "Command": "core show channels"})
            app = await manager.send_action({
                "Action": "Originate", "Channel": "Local/s@test-agent/n",
                "Application": "System", "Data": f"touch {marker}", "Async": "false"})
            return command, app
        finally:
            manager.close()

    command, app = asyncio.run(probe())
    assert command.get("Response") == "Error", dict(command)
    assert "ermission" in command.get("Message", "")
    first = app[0] if isinstance(app, list) else app
    assert first.get("Response") == "Error", dict(first)
    assert not marker.exists()
