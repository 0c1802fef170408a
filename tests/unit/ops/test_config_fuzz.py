"""Config parsing, fuzzed: any environment gives valid Settings or one ConfigError.

Never another exception (a traceback instead of "exit 2 with one line"), and never a
setting that quietly disables a protection (NaN or infinite timeouts, an empty token).
"""

from __future__ import annotations

import math
from dataclasses import fields

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agi.cli.main import main
from agi.ops.config import ConfigError, Settings

_KEYS = ["CONSENT_IVR_" + f.name.upper() for f in fields(Settings) if f.name != "database_url"]
_VALUES = st.one_of(
    st.text(max_size=30),
    st.sampled_from(
        [
            "0",
            "-1",
            "1",
            "128",
            "65536",
            "nan",
            "inf",
            "-inf",
            "1e400",
            "0x10",
            "1_000",
            " 7 ",
            "",
            "127.0.0.1/33",
            "::1/128,10.0.0.0/8",
            "yes",
            "GB",
            "ZZ",
            "postgres://x",
            "http://x",
            "a" * 15,
            "a" * 16,
            "\x00",
            "1" * 5000,
        ]
    ),
)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.sampled_from([*_KEYS, "DATABASE_URL"]), _VALUES, max_size=6))
def test_any_environment_is_valid_or_one_config_error(env: dict[str, str]) -> None:
    try:
        s = Settings.from_env(env)
    except ConfigError as exc:
        assert "\n" not in str(exc)
        return
    for name in ("header_timeout", "command_timeout", "db_timeout", "drain_timeout"):
        value = getattr(s, name)
        assert math.isfinite(value) and value > 0
    assert s.max_calls >= 1 and 0 < s.port < 65536
    assert s.agi_token is None or len(s.agi_token) >= 16
    for cidr in s.allow_from:
        assert cidr.strip()


@pytest.mark.parametrize("name", ["CONSENT_IVR_DATA_DIR", "CONSENT_IVR_JOURNAL_DIR"])
def test_a_home_of_no_such_user_is_one_config_error(name: str) -> None:
    # hypothesis found "~0": pathlib raises RuntimeError for a user it cannot find
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: "~no-such-user-0/x"})


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e400", "0", "-3"])
def test_header_timeout_must_be_finite_and_positive(value: str) -> None:
    with pytest.raises(ConfigError, match="CONSENT_IVR_HEADER_TIMEOUT"):
        Settings.from_env({"CONSENT_IVR_HEADER_TIMEOUT": value})


def test_short_token_refused_without_echoing_it() -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"CONSENT_IVR_AGI_TOKEN": "secret-ish"})
    assert "secret-ish" not in str(info.value)


def test_cli_invalid_config_is_one_line_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CONSENT_IVR_HEADER_TIMEOUT", "nan")
    assert main(["journal", "depth"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "CONSENT_IVR_HEADER_TIMEOUT" in err
