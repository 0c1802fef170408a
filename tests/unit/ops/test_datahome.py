"""The data home: where it is, and the runtime file ``serve`` leaves there."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agi.ops import datahome
from agi.ops.config import Settings
from agi.ops.datahome import Runtime, default_data_dir, live_runtime, read_runtime


def test_explicit_data_dir_wins_and_is_made_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    s = Settings.from_env({"CONSENT_IVR_DATA_DIR": "home"})
    assert s.data_dir == tmp_path / "home" and s.journal_dir == tmp_path / "home" / "journal"
    monkeypatch.chdir("/")
    assert s.data_dir == tmp_path / "home"  # resolved once, at load


def test_journal_dir_can_still_be_set_on_its_own(tmp_path: Path) -> None:
    s = Settings.from_env({"CONSENT_IVR_DATA_DIR": str(tmp_path),
                           "CONSENT_IVR_JOURNAL_DIR": str(tmp_path / "j")})
    assert s.journal_dir == tmp_path / "j"


def test_per_user_default_is_the_xdg_state_dir_never_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.chdir(tmp_path)
    assert default_data_dir({"XDG_STATE_HOME": "/srv/state"}) == Path("/srv/state/consent-ivr")
    assert default_data_dir({"XDG_STATE_HOME": "relative"}) == (
        Path.home() / ".local/state/consent-ivr")
    assert Settings.from_env({}).data_dir == Path.home() / ".local/state/consent-ivr"
    assert Settings.from_env({"CONSENT_IVR_DATA_DIR": ""}).data_dir != tmp_path


def test_root_default_is_the_system_state_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert default_data_dir({"XDG_STATE_HOME": "/x"}) == Path("/var/lib/consent-ivr")
    assert Settings.from_env({}).data_dir == Path("/var/lib/consent-ivr")


def _runtime(pid: int, home: Path) -> Runtime:
    return Runtime(pid=pid, data_dir=str(home), host="127.0.0.1", port=4573,
                   database_url="postgresql://u:secret@127.0.0.1:5432/c", metrics_addr=None,
                   started_at="2026-01-01T00:00:00+00:00")


def test_runtime_file_round_trips_is_private_and_only_its_writer_removes_it(
    tmp_path: Path,
) -> None:
    rt = _runtime(os.getpid(), tmp_path)
    path = datahome.write_runtime(tmp_path, rt)
    assert path.stat().st_mode & 0o777 == 0o600
    assert read_runtime(tmp_path) == rt and live_runtime(tmp_path) == rt
    datahome.remove_runtime(tmp_path, os.getpid() + 1)
    assert path.exists()
    datahome.remove_runtime(tmp_path, os.getpid())
    assert not path.exists() and read_runtime(tmp_path) is None


def test_a_dead_services_runtime_file_is_ignored(tmp_path: Path) -> None:
    datahome.write_runtime(tmp_path, _runtime(2**22 + 12345, tmp_path))  # above pid_max
    assert read_runtime(tmp_path) is not None and live_runtime(tmp_path) is None
    (tmp_path / "runtime.json").write_text("{not json")
    assert read_runtime(tmp_path) is None
