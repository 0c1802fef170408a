"""Settings: read once from the environment (``DATABASE_URL``, ``CONSENT_IVR_*``).

No IO at import time. :meth:`Settings.from_env` validates everything and raises
:class:`ConfigError` with one clear sentence; the CLI turns that into one line on
stderr and exit code 2.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import phonenumbers

from agi.ops import resources
from agi.ops.datahome import default_data_dir

__all__ = ["ConfigError", "Settings", "repo_root"]


class ConfigError(ValueError):
    """A setting is missing or invalid."""


def repo_root() -> Path:
    """The directory holding ``agi/``: the source tree in a checkout.

    Installed from a wheel this is ``site-packages``, which holds neither ``sounds/`` nor
    ``db/``: find those with :mod:`agi.ops.resources`.
    """
    return Path(__file__).resolve().parents[2]


_KEYS = set("0123456789*#")


@dataclass(frozen=True, slots=True)
class Settings:
    """Every knob of the service, with safe defaults."""

    database_url: str | None = None
    #: the data home (:mod:`agi.ops.datahome`): embedded database, journal, runtime file
    data_dir: Path = field(default_factory=default_data_dir)
    # FastAGI listener
    host: str = "127.0.0.1"
    port: int = 4573
    backlog: int = 2048
    max_calls: int = 2000
    header_timeout: float = 5.0
    command_timeout: float = 10.0
    drain_timeout: float = 30.0
    agi_token: str | None = None
    allow_from: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    # who is asking
    organisation: str = "Example Energy Ltd"
    freephone: str = "0800 046 1234"
    default_region: str = "GB"
    default_purpose: str = "marketing-calls"
    # prompts
    sounds_dir: Path = field(default_factory=resources.sounds_dir)
    prompt_prefix: str = "consent-ivr/"
    # keypad
    key_opt_in: str = "1"
    key_opt_out: str = "2"
    key_repeat: str = "*"
    key_confirm: str = "1"
    digit_timeout_ms: int = 5000
    max_tries: int = 3
    # database
    db_timeout: float = 3.0
    db_pool_min: int = 2
    db_pool_max: int = 10
    # durability / observability
    #: default ``<data_dir>/journal``
    journal_dir: Path = field(default_factory=lambda: default_data_dir() / "journal")
    metrics_addr: str | None = "127.0.0.1:9464"
    #: seconds between hash-chain walks by ``serve`` (0 disables)
    chain_verify_interval: float = 3600.0
    instance: str = field(default_factory=socket.gethostname)
    log_format: str = "auto"
    log_level: str = "info"
    #: asyncio event loop: ``uvloop`` where installed (the default dependency on Linux
    #: and macOS), else the standard one; ``asyncio`` forces the standard loop
    event_loop: str = "auto"
    # AMI (dialer)
    ami_host: str = "127.0.0.1"
    ami_port: int = 5038
    ami_user: str = "consent-dialer"
    ami_secret: str | None = None

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from ``environ`` (default ``os.environ``), then ``overrides``.

        Overrides that are ``None`` are ignored, so CLI flags can be passed through.
        """
        env = os.environ if environ is None else environ
        raw: dict[str, Any] = {}
        if env.get("DATABASE_URL"):
            raw["database_url"] = env["DATABASE_URL"]
        for f in fields(cls):
            key = "CONSENT_IVR_" + f.name.upper()
            if key in env and f.name != "database_url":
                raw[f.name] = env[key]
        raw.update({k: v for k, v in overrides.items() if v is not None})
        if not raw.get("data_dir"):  # unset or empty: never "" = the current directory
            raw["data_dir"] = default_data_dir(env)
        return cls._coerce(raw)

    @classmethod
    def _coerce(cls, raw: Mapping[str, Any]) -> Settings:
        defaults = cls()
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in raw:
                continue
            value = raw[f.name]
            current = getattr(defaults, f.name)
            name = "CONSENT_IVR_" + f.name.upper()
            try:
                if isinstance(current, bool):
                    value = _bool(value)
                elif isinstance(current, int):
                    value = int(value)
                elif isinstance(current, float):
                    value = float(value)
                elif isinstance(current, Path):
                    value = Path(value)
                elif isinstance(current, tuple):
                    if isinstance(value, str):
                        value = tuple(p.strip() for p in value.split(",") if p.strip())
                    else:
                        value = tuple(value)
                elif value == "" and f.name in {"agi_token", "ami_secret", "metrics_addr"}:
                    value = None
            except (TypeError, ValueError):
                kind = type(current).__name__
                raise ConfigError(f"{name}: {value!r} is not a valid {kind}") from None
            values[f.name] = value
        for name in ("data_dir", "journal_dir"):
            if name in values:  # one place, whatever the working directory becomes later
                try:
                    values[name] = values[name].expanduser().absolute()
                except RuntimeError:  # "~user" of no such user
                    raise ConfigError(f"CONSENT_IVR_{name.upper()}: {str(values[name])!r}: "
                                      "no such user's home directory") from None
        if "journal_dir" not in values:
            values["journal_dir"] = values.get("data_dir", defaults.data_dir) / "journal"
        settings = replace(defaults, **values)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Raise :class:`ConfigError` for any inconsistent value."""
        if not 0 < self.port < 65536:
            raise ConfigError(f"CONSENT_IVR_PORT: {self.port} is not a TCP port")
        if self.backlog < 128:
            raise ConfigError("CONSENT_IVR_BACKLOG: must be at least 128")
        for name in ("max_calls", "max_tries", "digit_timeout_ms", "db_pool_max"):
            if getattr(self, name) < 1:
                raise ConfigError(f"CONSENT_IVR_{name.upper()}: must be at least 1")
        for name in ("header_timeout", "command_timeout", "db_timeout", "drain_timeout"):
            # not NaN, not inf: an infinite header timeout is an open door to slow-loris
            if not 0 < getattr(self, name) < 86400:
                raise ConfigError(f"CONSENT_IVR_{name.upper()}: must be positive seconds "
                                  "(under a day)")
        if not 0 <= self.chain_verify_interval < 10 * 86400:
            raise ConfigError("CONSENT_IVR_CHAIN_VERIFY_INTERVAL: seconds between hash-chain "
                              "walks, 0 to disable (under ten days)")
        if self.default_region not in phonenumbers.SUPPORTED_REGIONS:
            raise ConfigError(
                f"CONSENT_IVR_DEFAULT_REGION: {self.default_region!r} is not an ISO 3166 region "
                "phonenumbers knows (e.g. GB, US, IE)"
            )
        keys = {
            "key_opt_in": self.key_opt_in,
            "key_opt_out": self.key_opt_out,
            "key_repeat": self.key_repeat,
        }
        for name, key in (*keys.items(), ("key_confirm", self.key_confirm)):
            if len(key) != 1 or key not in _KEYS:
                raise ConfigError(f"CONSENT_IVR_{name.upper()}: {key!r} is not one keypad key")
        if len(set(keys.values())) != len(keys):
            raise ConfigError("CONSENT_IVR_KEY_OPT_IN, _KEY_OPT_OUT and _KEY_REPEAT must differ")
        for cidr in self.allow_from:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ConfigError(
                    f"CONSENT_IVR_ALLOW_FROM: {cidr!r} is not an address or CIDR"
                ) from None
        if self.log_format not in {"auto", "json", "console"}:
            raise ConfigError("CONSENT_IVR_LOG_FORMAT: must be auto, json or console")
        if self.event_loop not in {"auto", "uvloop", "asyncio"}:
            raise ConfigError("CONSENT_IVR_EVENT_LOOP: must be auto, uvloop or asyncio")
        if self.log_level.lower() not in {"debug", "info", "warning", "error"}:
            raise ConfigError("CONSENT_IVR_LOG_LEVEL: must be debug, info, warning or error")
        if not self.organisation.strip():
            raise ConfigError("CONSENT_IVR_ORGANISATION: must name the organisation asking")
        if self.agi_token is not None and len(self.agi_token) < 16:
            raise ConfigError("CONSENT_IVR_AGI_TOKEN: use at least 16 characters (or leave unset)")
        if self.database_url is not None and not self.database_url.startswith(
            ("postgres://", "postgresql://")
        ):
            raise ConfigError("DATABASE_URL: must be a postgresql:// URL")

    def loop_factory(self) -> Callable[[], asyncio.AbstractEventLoop] | None:
        """The event loop to run on (``None``: asyncio's own); see :attr:`event_loop`."""
        if self.event_loop == "asyncio":
            return None
        try:
            import uvloop
        except ImportError:
            if self.event_loop == "uvloop":
                raise ConfigError("CONSENT_IVR_EVENT_LOOP=uvloop, but uvloop is not installed "
                                  "(pip install uvloop)") from None
            return None
        factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
        return factory

    @property
    def allow_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return tuple(ipaddress.ip_network(c, strict=False) for c in self.allow_from)


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(value)
