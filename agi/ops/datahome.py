"""The data home: one directory every command agrees on, from any working directory.

It holds the embedded PostgreSQL (``postgres/``), the durable journal (``journal/``) and
``runtime.json``, which ``serve`` writes while it runs so that other commands (``status``,
``simulate-call``, ``doctor``) find the running service and its database.

Where it is, first match wins:

1. ``CONSENT_IVR_DATA_DIR``;
2. run as root (a system service): ``/var/lib/consent-ivr``;
3. otherwise the per-user state directory: ``$XDG_STATE_HOME/consent-ivr``, by default
   ``~/.local/state/consent-ivr``.

Never the current directory: a command run from elsewhere must not find (or make) a
different, empty database and answer "no consent" for a number that opted in.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "RUNTIME_FILE",
    "SYSTEM_DATA_DIR",
    "Runtime",
    "default_data_dir",
    "embedded_initialised",
    "live_runtime",
    "read_runtime",
    "remove_runtime",
    "write_runtime",
]

RUNTIME_FILE = "runtime.json"
SYSTEM_DATA_DIR = Path("/var/lib/consent-ivr")


def default_data_dir(environ: Mapping[str, str] | None = None) -> Path:
    """The data home when ``CONSENT_IVR_DATA_DIR`` is not set (see the module docstring)."""
    env = os.environ if environ is None else environ
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return SYSTEM_DATA_DIR
    state = env.get("XDG_STATE_HOME", "")
    # the XDG spec: a relative value is invalid and must be ignored
    base = Path(state) if state and Path(state).is_absolute() else Path.home() / ".local/state"
    return base / "consent-ivr"


def embedded_initialised(data_dir: Path) -> bool:
    """Whether ``data_dir`` holds an embedded PostgreSQL cluster (made by serve/migrate)."""
    return (data_dir / "postgres" / "pgdata" / "PG_VERSION").is_file()


@dataclass(frozen=True, slots=True)
class Runtime:
    """What a running ``serve`` tells the other commands."""

    pid: int
    data_dir: str
    host: str
    port: int
    database_url: str
    metrics_addr: str | None
    started_at: str

    def alive(self) -> bool:
        """Whether the process that wrote this file still runs."""
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # running, as another user
            return True
        return True


def write_runtime(data_dir: Path, runtime: Runtime) -> Path:
    """Write ``runtime.json`` atomically, readable by its owner only (it holds the DB URL)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / RUNTIME_FILE
    tmp = data_dir / f".{RUNTIME_FILE}.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(asdict(runtime), fh, indent=2)
        fh.write("\n")
    os.replace(tmp, path)
    return path


def read_runtime(data_dir: Path) -> Runtime | None:
    """The runtime file in ``data_dir`` (alive or not), ``None`` when absent or unreadable."""
    try:
        data: Any = json.loads((data_dir / RUNTIME_FILE).read_text(encoding="utf-8"))
        return Runtime(
            pid=int(data["pid"]),
            data_dir=str(data["data_dir"]),
            host=str(data["host"]),
            port=int(data["port"]),
            database_url=str(data["database_url"]),
            metrics_addr=data.get("metrics_addr"),
            started_at=str(data["started_at"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def live_runtime(data_dir: Path) -> Runtime | None:
    """The runtime file of a ``serve`` that is still running, else ``None``."""
    runtime = read_runtime(data_dir)
    return runtime if runtime is not None and runtime.alive() else None


def remove_runtime(data_dir: Path, pid: int) -> None:
    """Remove ``runtime.json`` if ``pid`` wrote it (a newer serve may have replaced it)."""
    runtime = read_runtime(data_dir)
    if runtime is not None and runtime.pid == pid:
        with contextlib.suppress(FileNotFoundError):
            (data_dir / RUNTIME_FILE).unlink()
