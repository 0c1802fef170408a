"""``consent-ivr doctor``: every check passes on a good install, and each fault is named."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path
from typing import Any

import pytest

from agi.cli.doctor import Check, run_checks
from agi.ledger.journal import Journal
from agi.ops.config import repo_root
from agi.testing.fake_ami import FakeAMI


def _by_topic(checks: list[Check]) -> dict[str, Check]:
    topics = ("configuration", "data home", "database", "migrations", "prompt", "listener",
              "CONSENT_IVR_AGI_TOKEN", "AMI", "journal")
    out = {}
    for check in checks:
        topic = next(t for t in topics if t in check.what)
        out[topic] = check
    assert len(out) == len(topics), [c.what for c in checks]
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_a_good_install_passes_every_check(
    db_url: str, make_settings: Any, private_dir: Path
) -> None:
    ami = await FakeAMI().start()
    try:
        settings = make_settings(database_url=db_url, port=_free_port(), ami_port=ami.port,
                                 ami_user=ami.username, ami_secret=ami.secret)
        checks = await run_checks(settings)
    finally:
        await ami.close()
    failed = [c.render() for c in checks if not c.ok]
    assert failed == []
    assert ami.logins == 1 and ami.originates == []  # a real login, never a call
    topics = _by_topic(checks)
    assert "AMI login and logoff" in topics["AMI"].what
    assert "every sha256 matches" in topics["prompt"].what


async def test_each_fault_is_a_cross_with_its_fix(
    db_url: str, make_settings: Any, private_dir: Path
) -> None:
    sounds = private_dir / "sounds"
    shutil.copytree(repo_root() / "sounds", sounds)
    wav = sounds / "en" / "consent-ivr" / "goodbye.wav"
    wav.write_bytes(wav.read_bytes()[:-2] + b"\x01\x02")  # one edited sample
    journal = Journal(private_dir / "journal")
    journal.append("decision", {"number": "+447400123456"})
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    held.listen()
    ami = await FakeAMI().start()
    try:
        settings = make_settings(
            database_url=db_url, sounds_dir=sounds, host="127.0.0.1",
            port=held.getsockname()[1], ami_port=ami.port, ami_user=ami.username,
            ami_secret="not-the-secret", journal_dir=private_dir / "journal",
        )
        topics = _by_topic(await run_checks(settings))
    finally:
        held.close()
        await ami.close()
    for topic, needle in (("prompt", "en/consent-ivr/goodbye.wav does not match its sha256"),
                          ("listener", "unavailable"), ("AMI", "login refused"),
                          ("journal", "holds 1 decision")):
        check = topics[topic]
        assert not check.ok and needle in check.what, check.render()
        assert "fix: " in check.render()
    assert topics["database"].ok and topics["migrations"].ok


async def test_beyond_loopback_without_a_token_fails(make_settings: Any, db_url: str) -> None:
    settings = make_settings(database_url=db_url, host="0.0.0.0", port=_free_port(),
                             agi_token=None)
    check = _by_topic(await run_checks(settings))["CONSENT_IVR_AGI_TOKEN"]
    assert not check.ok and "unset while listening on 0.0.0.0" in check.what


def test_doctor_exit_code_and_no_database_on_an_empty_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from agi.cli.main import main

    monkeypatch.setenv("CONSENT_IVR_DATA_DIR", str(tmp_path / "home"))
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("CONSENT_IVR_PORT", str(_free_port()))
    assert main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert "✗ database: no consent-ivr database in" in out and "✓ configuration valid" in out
    assert not (tmp_path / "home").exists()  # doctor only looks
    monkeypatch.setenv("CONSENT_IVR_PORT", "nope")
    assert main(["doctor"]) == 1
    assert "✗ configuration invalid: CONSENT_IVR_PORT" in capsys.readouterr().out
