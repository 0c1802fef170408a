"""Processes the benchmark starts: PostgreSQL, the servers under test, the load generator."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from agi.ops.config import repo_root

ROOT = repo_root()
RESULTS = ROOT / "bench" / "results"


def _py_spy() -> str:
    """py-spy (``pip install py-spy``): next to this Python, else on PATH."""
    here = Path(sys.executable).parent / "py-spy"
    found = str(here) if here.exists() else shutil.which("py-spy")
    if found is None:
        raise RuntimeError("a py-spy profile wants py-spy: pip install py-spy")
    return found


@contextlib.contextmanager
def py_spy_recording(pid: int, out: Path | None) -> Iterator[None]:
    """py-spy records ``pid`` while the block runs (raw stacks, 200 Hz, into ``out``), for
    ``--sessions-profile`` and ``--pbx-profile``; with ``out`` None, nothing is recorded."""
    if out is None:
        yield
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    spy = subprocess.Popen(
        [_py_spy(), "record", "--pid", str(pid), "--rate", "200", "--nonblocking",
         "--format", "raw", "--output", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)  # py-spy writes its output and exits
        spy.wait(60)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def raise_nofile() -> tuple[int, int]:
    """Soft RLIMIT_NOFILE → hard limit, here and (inherited) in every child."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def cpu_split(pid: int) -> tuple[float, float]:
    """(utime, stime) of a process in seconds: its own code, and the kernel's for it."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / ticks, int(fields[12]) / ticks


_PG_POSTMASTER: list[int] = []  # the embedded server's postmaster, once started


def postgres_cpu_seconds() -> float | None:
    """CPU of the embedded PostgreSQL: postmaster + live backends + reaped backends.

    Only our own cluster counts (other PostgreSQL servers on the machine do not);
    None with $DATABASE_URL, whose server may be elsewhere.
    """
    if not _PG_POSTMASTER:
        return None
    pm = _PG_POSTMASTER[0]
    ticks = os.sysconf("SC_CLK_TCK")
    try:
        f = Path(f"/proc/{pm}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    total = sum(int(x) for x in f[11:15]) / ticks  # utime stime cutime cstime
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            g = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(g[1]) == pm:
            total += (int(g[11]) + int(g[12])) / ticks
    return total


def with_db(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/" + name))


class Database:
    """A PostgreSQL server ($DATABASE_URL or embedded) and one fresh database per run."""

    def __init__(self, data_dir: Path | None = None) -> None:
        self.embedded: Any = None
        self.started_here = False
        self.data_dir = data_dir or Path(tempfile.gettempdir()) / f"consent-ivr-bench-{os.getuid()}"
        self.root_url = ""

    def start(self) -> str:
        if os.environ.get("DATABASE_URL"):
            self.root_url = os.environ["DATABASE_URL"]
        else:
            warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
            from agi.ops.pgembed import EmbeddedPostgres

            self.embedded = EmbeddedPostgres(self.data_dir / "pg")
            # another benchmark run may be using it: then leave it running at the end
            self.started_here = self.embedded.running_port() is None
            self.root_url = self.embedded.start()
            pid_file = self.embedded.pgdata / "postmaster.pid"
            _PG_POSTMASTER[:] = [int(pid_file.read_text().split()[0])]
        return self.root_url

    def stop(self) -> None:
        if self.embedded is not None and self.started_here:
            self.embedded.stop()

    async def create(self, prefix: str = "bench") -> str:
        """A new, migrated database; returns its URL."""
        import asyncpg

        from agi.ledger.migrations import apply_migrations

        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        conn = await asyncpg.connect(self.root_url)
        try:
            await conn.execute(f"CREATE DATABASE {name}")
        finally:
            await conn.close()
        url = with_db(self.root_url, name)
        conn = await asyncpg.connect(url)
        try:
            await apply_migrations(conn)
        finally:
            await conn.close()
        return url

    async def drop(self, url: str) -> None:
        import asyncpg

        name = urlsplit(url).path.lstrip("/")
        conn = await asyncpg.connect(self.root_url)
        try:
            await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        finally:
            await conn.close()


class Server:
    """One FastAGI server under test in its own process, logging to a file."""

    def __init__(self, kind: str, workdir: Path, *, database_url: str | None = None,
                 max_calls: int = 12_000, extra_env: dict[str, str] | None = None,
                 templates: Path | None = None, wrapper: list[str] | None = None) -> None:
        self.kind = kind  # consent-ivr | raw | panoramisk
        self.port = free_port()
        self.workdir = workdir
        self.log = workdir / f"{kind}-{self.port}.log"
        env = dict(os.environ)
        env.update({
            "PYTHONUNBUFFERED": "1",
            "CONSENT_IVR_PORT": str(self.port),
            "CONSENT_IVR_HOST": "127.0.0.1",
            "CONSENT_IVR_MAX_CALLS": str(max_calls),
            "CONSENT_IVR_METRICS_ADDR": "",
            "CONSENT_IVR_DATA_DIR": str(workdir / "var"),
            "CONSENT_IVR_JOURNAL_DIR": str(workdir / f"journal-{self.port}"),
            "CONSENT_IVR_INSTANCE": f"bench-{self.port}",
            "CONSENT_IVR_LOG_FORMAT": "json",
            "CONSENT_IVR_LOG_LEVEL": "info",
            "CONSENT_IVR_COMMAND_TIMEOUT": "600",
            "CONSENT_IVR_HEADER_TIMEOUT": "30",
            # the hash-chain walk serve runs at start and hourly (in a child process)
            # would re-hash the ledger this benchmark grows at every server start, on
            # the core the load generator and PostgreSQL share: off while measuring
            "CONSENT_IVR_CHAIN_VERIFY_INTERVAL": "0",
        })
        if database_url:
            env["DATABASE_URL"] = database_url
        env.update(extra_env or {})
        if kind == "consent-ivr-no-call-sessions":  # ablation: see bench/ablate.py
            cmd = [sys.executable, "-m", "bench.ablate", "call-sessions"]
        elif kind.startswith("consent-ivr"):
            cmd = [sys.executable, "-m", "agi", "serve"]
            if kind == "consent-ivr-asyncio":  # the fallback loop, for comparison
                env["CONSENT_IVR_EVENT_LOOP"] = "asyncio"
            if kind == "consent-ivr-no-logs":  # ablation: the two INFO lines a call
                env["CONSENT_IVR_LOG_LEVEL"] = "warning"
        else:
            cmd = [sys.executable, "-m", "bench.peers", kind, str(self.port), str(templates)]
        self._fh = self.log.open("wb")
        # RLIMIT_NOFILE was raised in this process; the child inherits it
        self.proc = subprocess.Popen([*(wrapper or []), *cmd], cwd=ROOT, env=env, stdout=self._fh,
                                     stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} exited: {self.log.read_text()[-2000:]}")
            if b"listening on" in self.log.read_bytes():
                return
            time.sleep(0.05)
        raise RuntimeError(f"{self.kind} not ready in {timeout}s: {self.log.read_text()[-2000:]}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._fh.close()


@contextlib.contextmanager
def server(kind: str, workdir: Path, **kwargs: Any) -> Iterator[Server]:
    srv = Server(kind, workdir, **kwargs)
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


def loadgen(cfg: dict[str, Any], timeout: float = 300.0) -> dict[str, Any]:
    """Run one load-generator process to completion; its JSON result."""
    out = subprocess.run([sys.executable, "-m", "bench.loadgen", json.dumps(cfg)], cwd=ROOT,
                         capture_output=True, text=True, timeout=timeout, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"loadgen {cfg['mode']} failed: {out.stderr[-3000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


class HoldingLoadgen:
    """The load generator in ``hold`` mode: open, report HELD, wait for release."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.loadgen", json.dumps(cfg)], cwd=ROOT,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.info: dict[str, Any] = {}

    def wait_held(self) -> dict[str, Any]:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            if line.startswith("{"):
                self.info = json.loads(line)
            if line.strip() == "HELD":
                return self.info
        raise RuntimeError("hold loadgen ended early")

    def release(self, timeout: float = 120.0) -> dict[str, Any]:
        out, err = self.proc.communicate("go\n", timeout=timeout)
        if self.proc.returncode != 0:
            raise RuntimeError(f"hold loadgen failed: {err[-3000:]}")
        return dict(json.loads(out.strip().splitlines()[-1]))


def run(coro: Any) -> Any:
    return asyncio.run(coro)
