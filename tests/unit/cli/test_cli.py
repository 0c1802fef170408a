"""The command line: bad input gets one clear line and exit code 2, never a traceback."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from agi.cli.main import main, parse_presses
from agi.ops.config import repo_root
from agi.testing.fakeasterisk import HANGUP, SILENCE


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agi", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=repo_root(),
        env={**os.environ, **(env or {})},
    )


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"CONSENT_IVR_PORT": "abc"}, "CONSENT_IVR_PORT"),
        ({"CONSENT_IVR_DEFAULT_REGION": "XX"}, "CONSENT_IVR_DEFAULT_REGION"),
        ({"CONSENT_IVR_KEY_OPT_IN": "2"}, "must differ"),
        ({"CONSENT_IVR_ALLOW_FROM": "10.0.0.0/33"}, "CONSENT_IVR_ALLOW_FROM"),
        ({"DATABASE_URL": "mysql://x"}, "DATABASE_URL"),
    ],
)
def test_invalid_config_is_one_line_and_exit_2(env: dict[str, str], needle: str) -> None:
    proc = run_cli("migrate", env=env)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_python_dash_m_agi_lists_every_command() -> None:
    proc = run_cli("--help")
    assert proc.returncode == 0
    for command in ("serve", "migrate", "status", "simulate-call", "journal", "screen", "dialer"):
        assert command in proc.stdout


def test_status_of_an_invalid_number_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "not-a-number"]) == 2
    err = capsys.readouterr().err
    assert "is not a valid phone number" in err and "Traceback" not in err


def test_simulate_call_without_a_server_is_a_clear_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connection refused
        assert main(["simulate-call", "--port", str(port), "--press", "1,1"]) == 2
    assert "cannot reach a FastAGI server" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1,1", ["1", "1"]),
        ("-,2", [SILENCE, "2"]),
        ("07400123456#,1,h", ["07400123456#", "1", HANGUP]),
        ("", []),
    ],
)
def test_press_scripts(text: str, expected: list[object]) -> None:
    assert parse_presses(text) == expected


def test_bad_press_script_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate-call", "--press", "1,x"]) == 2
    assert "--press" in capsys.readouterr().err


def test_a_broken_feature_import_stops_the_command_line_loudly() -> None:
    """One missing module must not silently drop every later command and route."""
    import subprocess
    import sys

    code = (
        "import importlib.abc, sys\n"
        "class Broken(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'agi.cli.report':\n"
        "            raise ModuleNotFoundError('No module named something_report_needs')\n"
        "sys.meta_path.insert(0, Broken())\n"
        "from agi.cli.main import main\n"
        "sys.exit(main(['--help']))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.returncode != 0, out.stdout
    assert "something_report_needs" in out.stderr


def test_serve_refuses_a_bad_prompt_directory_before_it_creates_a_database(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from agi.ops import resources

    manifest = json.loads((resources.sounds_dir() / "manifest.json").read_text())
    manifest["prompts"] = [p for p in manifest["prompts"] if p["id"] != "confirm-opt-in"]
    sounds = tmp_path / "prompts"
    sounds.mkdir()
    (sounds / "manifest.json").write_text(json.dumps(manifest))
    home = tmp_path / "home"
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("CONSENT_IVR_DATA_DIR", str(home))
    monkeypatch.setenv("CONSENT_IVR_SOUNDS_DIR", str(sounds))
    assert main(["serve", "--port", "45731"]) == 2
    assert "confirm-opt-in" in capsys.readouterr().err
    assert not (home / "postgres").exists()  # nothing created, nothing migrated
