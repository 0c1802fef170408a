"""CONSENT_IVR_EVENT_LOOP: which event loop the commands run on."""

from __future__ import annotations

import asyncio
import sys

import pytest

from agi.cli.main import main
from agi.ops.config import ConfigError, Settings


def test_auto_and_uvloop_pick_uvloop_where_installed() -> None:
    uvloop = pytest.importorskip("uvloop")
    assert Settings.from_env({}).loop_factory() is uvloop.new_event_loop
    assert Settings.from_env({"CONSENT_IVR_EVENT_LOOP": "uvloop"}).loop_factory() is (
        uvloop.new_event_loop)


def test_asyncio_forces_the_standard_loop() -> None:
    assert Settings.from_env({"CONSENT_IVR_EVENT_LOOP": "asyncio"}).loop_factory() is None


def test_uvloop_required_but_missing_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop -> ImportError
    assert Settings.from_env({}).loop_factory() is None  # auto falls back
    with pytest.raises(ConfigError, match="uvloop is not installed"):
        Settings.from_env({"CONSENT_IVR_EVENT_LOOP": "uvloop"}).loop_factory()


def test_unknown_loop_is_refused_with_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CONSENT_IVR_EVENT_LOOP", "trio")
    assert main(["migrate"]) == 2
    assert "CONSENT_IVR_EVENT_LOOP: must be auto, uvloop or asyncio" in capsys.readouterr().err


def test_commands_run_on_the_chosen_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI's runner uses the factory: a command sees the loop it was given."""
    pytest.importorskip("uvloop")
    seen: list[str] = []

    async def probe(settings: Settings, args: object) -> int:
        seen.append(type(asyncio.get_running_loop()).__module__)
        return 0

    import agi.cli.main as cli

    monkeypatch.setattr(cli, "cmd_migrate", probe)
    parser = cli.build_parser
    monkeypatch.setattr(cli, "build_parser", lambda: _with_handler(parser(), probe))
    for loop, module in (("auto", "uvloop"), ("asyncio", "asyncio")):
        monkeypatch.setenv("CONSENT_IVR_EVENT_LOOP", loop)
        assert main(["migrate"]) == 0
        assert seen[-1].startswith(module), seen


def _with_handler(parser: object, handler: object) -> object:
    sub = next(a for a in parser._actions if a.dest == "command")  # type: ignore[attr-defined]
    sub.choices["migrate"].set_defaults(handler=handler)
    return parser
