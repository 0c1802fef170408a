"""Prometheus metrics and the health/readiness listener (``/metrics``, ``/healthz``, ``/readyz``).

One :class:`Metrics` object owns a private ``CollectorRegistry`` (so tests can run
several side by side) and exposes small, named hooks the rest of the code calls:
the server's ``connection``/``call_finished``, the channel's per-command callback,
the store's decision and database timings, the marketing flow's plays and refusals,
the dialer's gate decisions and AMI state. ``serve`` and ``dialer`` make the process's one
instance and pass it in; there is no global (a component given none makes a private one).

Label values are bounded: each label accepts only short lower-case tokens without
digit runs (so a phone number or a call id can never become a label), and each
metric keeps at most :data:`MAX_LABEL_VALUES` distinct values per label before
folding the rest into ``other``.

The listener is a deliberately tiny HTTP/1.1 responder on ``asyncio.start_server``
(one request per connection, ``Connection: close``), running inside the service's
own event loop, so ``/readyz`` can use the same asyncpg pool as the calls do and a
stalled loop shows up as a failed probe rather than a healthy thread.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from contextlib import AbstractContextManager
from typing import Any, Final, TypeVar

import structlog
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from agi.ops.config import ConfigError

__all__ = [
    "MAX_LABEL_VALUES",
    "Metrics",
    "MetricsServer",
    "Readiness",
    "parse_addr",
    "start_exporter",
]

log = structlog.get_logger("agi.ops.metrics")

MAX_LABEL_VALUES: Final = 64
_TOKEN = re.compile(r"[a-z][a-z0-9_.-]{0,47}")
_DIGIT_RUN = re.compile(r"\d{4,}")
_OTHER: Final = "other"
#: bound of the per-command label-children cache (verbs and results are a small fixed set)
_MAX_CACHED_CHILDREN: Final = 256
_K = TypeVar("_K")
_V = TypeVar("_V")

# AGI commands range from a NOOP (sub-millisecond) to a whole prompt (tens of seconds).
_COMMAND_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120,
)
_DB_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
_CALL_BUCKETS: Final = (1, 5, 10, 20, 30, 45, 60, 90, 120, 180, 300, 600)
#: the window over which the dialer's achieved calls per second is measured
CPS_WINDOW_S: Final = 10.0


def _label_token(value: object) -> str:
    text = str(value).strip().lower().replace(" ", "_")
    if not _TOKEN.fullmatch(text) or _DIGIT_RUN.search(text):
        return "other"
    return text


class _LabelGuard:
    """Caps the distinct values each (metric, label) may take."""

    def __init__(self, limit: int = MAX_LABEL_VALUES) -> None:
        self.limit = limit
        self._seen: dict[tuple[str, str], set[str]] = {}

    def __call__(self, metric: str, label: str, value: object) -> str:
        label_value = _label_token(value)
        seen = self._seen.setdefault((metric, label), set())
        if label_value in seen or label_value == _OTHER:
            return label_value
        if len(seen) >= self.limit:
            return _OTHER
        seen.add(label_value)
        return label_value


def _remember(cache: dict[_K, _V], key: _K, value: _V) -> _V:
    """Keep ``value`` for ``key`` while the cache is under its bound; return it.

    The label-children caches of the per-call hooks: their keys are the raw values a
    hook is given, which are a small set in practice but not by construction.
    """
    if len(cache) < _MAX_CACHED_CHILDREN:
        cache[key] = value
    return value


class _CommandStats:
    """The per-command metrics as plain numbers, exported by a collector at scrape time.

    Every AGI command moves a histogram and a counter, ten commands a call.
    prometheus_client's ``observe`` and ``inc`` take a lock per value (~1.1 µs the
    pair here, most of the 2 µs a command the hook cost); these two are only ever moved
    on the event loop's thread, and the registry is only read there too (the metrics
    listener runs in that loop), so plain lists do. The exposition is the one the
    ``Histogram`` and ``Counter`` gave: same names, help, labels, buckets, ``_created``.
    """

    HIST = "consent_ivr_agi_command_duration_seconds"
    HIST_HELP = "Time from sending an AGI command to its reply (includes prompt playback)"
    COUNT = "consent_ivr_agi_commands"
    COUNT_HELP = "AGI commands sent, by command and result"

    def __init__(self) -> None:
        #: command label → [count per bucket (the last is +Inf), sum, created]
        self.hist: dict[str, list[float]] = {}
        #: (command label, result label) → [count, created]
        self.counts: dict[tuple[str, str], list[float]] = {}
        self._le = [*map(floatToGoString, _COMMAND_BUCKETS), "+Inf"]

    def series(self, command: str, result: str) -> tuple[list[float], list[float]]:
        """The two lists one (command, result) moves: create them on first use."""
        now = time.time()
        hist = self.hist.get(command)
        if hist is None:
            hist = self.hist[command] = [0] * (len(_COMMAND_BUCKETS) + 1) + [0.0, now]
        count = self.counts.get((command, result))
        if count is None:
            count = self.counts[(command, result)] = [0, now]
        return hist, count

    def collect(self) -> Iterable[Metric]:
        hist = HistogramMetricFamily(self.HIST, self.HIST_HELP, labels=["command"])
        for command, data in list(self.hist.items()):
            buckets, total = [], 0.0
            for le, n in zip(self._le, data[:-2], strict=True):
                total += n
                buckets.append((le, total))
            hist.add_metric([command], buckets, data[-2])
            hist.add_sample(self.HIST + "_created", {"command": command}, data[-1])
        yield hist
        count = CounterMetricFamily(self.COUNT, self.COUNT_HELP, labels=["command", "result"])
        for (command, result), (n, created) in list(self.counts.items()):
            count.add_metric([command, result], n, created=created)
        yield count


class Metrics:
    """Every consent-ivr metric (prefix ``consent_ivr_``) and the hooks that move them."""

    def __init__(self, registry: CollectorRegistry | None = None, *,
                 refusal_reasons: Iterable[str] = ()) -> None:
        """``refusal_reasons``: the policy's reasons (``agi.outbound.policy.REASONS``), exported
        as zeros from the start so dashboards and alerts see every series."""
        self.registry = registry if registry is not None else CollectorRegistry()
        self._reasons = frozenset(refusal_reasons)
        self._guard = _LabelGuard()
        self._routes: frozenset[str] | None = None
        self._refreshers: list[Callable[[], Awaitable[None]]] = []
        self._originates: deque[float] = deque()
        #: (verb, result) → (its duration histogram's list, its counter's list)
        self._command_children: dict[tuple[str, str], tuple[list[float], list[float]]] = {}
        self._db_children: dict[str, Histogram] = {}
        #: (purpose, decision) → its decisions counter child
        self._decision_children: dict[tuple[str, str], Counter] = {}
        #: (route as given, outcome) → (calls counter child, duration histogram child)
        self._call_children: dict[tuple[str, str], tuple[Counter, Histogram]] = {}
        r = self.registry

        # -- FastAGI calls
        self.connections = Counter(
            "consent_ivr_agi_connections_refused", "FastAGI connections closed before any flow ran",
            ["reason"], registry=r)
        self.calls = Counter(
            "consent_ivr_calls", "FastAGI calls finished, by route and outcome",
            ["route", "outcome"], registry=r)
        self.call_seconds = Histogram(
            "consent_ivr_call_duration_seconds", "Duration of FastAGI calls", ["route"],
            buckets=_CALL_BUCKETS, registry=r)
        self.active_calls = Gauge(
            "consent_ivr_active_calls", "FastAGI calls in progress", registry=r)
        self.agi_command_stats = _CommandStats()
        r.register(self.agi_command_stats)

        # -- consent
        self.decisions = Counter(
            "consent_ivr_consent_decisions", "Consent decisions stored (ledger or journal)",
            ["purpose", "decision"], registry=r)
        self.decisions_journaled = Counter(
            "consent_ivr_consent_decisions_journaled",
            "Decisions written to the durable journal because the database was unavailable",
            registry=r)

        # -- marketing
        self.marketing_plays = Counter(
            "consent_ivr_marketing_plays", "Marketing audio playbacks, after the gate allowed them",
            registry=r)
        self.marketing_refusals = Counter(
            "consent_ivr_marketing_refusals", "Marketing playbacks refused by the gate, by reason",
            ["reason"], registry=r)
        self.marketing_opt_outs = Counter(
            "consent_ivr_marketing_opt_outs", "Opt-outs pressed during marketing calls", registry=r)
        self.played_without_consent = Counter(
            "consent_ivr_marketing_played_without_consent",
            "Marketing audio played without a valid opt-in. MUST be 0: any increase is a breach "
            "and halts the campaign", registry=r)

        # -- database and journal
        self.db_seconds = Histogram(
            "consent_ivr_db_query_duration_seconds", "Database round trips, by operation",
            ["operation"], buckets=_DB_BUCKETS, registry=r)
        self.db_errors = Counter(
            "consent_ivr_db_errors", "Database operations that failed, by operation and error",
            ["operation", "error"], registry=r)
        self.journal_depth = Gauge(
            "consent_ivr_journal_depth", "Journal entries awaiting replay into the ledger",
            registry=r)
        self.journal_rejected = Counter(
            "consent_ivr_journal_rejected",
            "Journal entries the ledger refused as data, set aside in rejected.jsonl", registry=r)
        self.calls_interrupted = Counter(
            "consent_ivr_calls_interrupted",
            "Calls found cut by a crash of an earlier boot, filed as interrupted attempts",
            registry=r)
        self.chain_ok = Gauge(
            "consent_ivr_ledger_chain_ok",
            "1 when the last hash-chain walk found no broken link, 0 when it did, "
            "-1 before the first walk", registry=r)
        self.chain_ok.set(-1)
        self.chain_events = Gauge(
            "consent_ivr_ledger_chain_verified_events",
            "Consent events the last hash-chain walk verified", registry=r)
        self.ready = Gauge(
            "consent_ivr_ready", "1 when the last readiness check passed", registry=r)
        self.db_up = Gauge(
            "consent_ivr_db_up", "1 when the last readiness check reached the database",
            registry=r)

        # -- dialer
        self.dial_attempts = Counter(
            "consent_ivr_dialer_attempts", "Gate decisions taken before Originate",
            ["decision", "reason"], registry=r)
        self.dial_originates = Counter(
            "consent_ivr_dialer_originates", "Originate actions sent, by result",
            ["result"], registry=r)
        self.dial_cps = Gauge(
            "consent_ivr_dialer_calls_per_second",
            f"Originates per second achieved over the last {CPS_WINDOW_S:.0f} s", registry=r)
        self.dial_channels = Gauge(
            "consent_ivr_dialer_concurrent_channels", "Dialer channels currently up",
            registry=r)
        self.ami_up = Gauge(
            "consent_ivr_ami_connected", "1 while the dialer's AMI session is logged in",
            registry=r)
        self.ami_reconnects = Counter(
            "consent_ivr_ami_reconnects", "AMI sessions re-established after a loss", registry=r)
        self.dial_cps.set_function(self._achieved_cps)
        self._prime()

    def _prime(self) -> None:
        """Export zeros for the series dashboards and alerts rely on."""
        for decision in ("opt_in", "opt_out"):
            self.decisions.labels(purpose="marketing-calls", decision=decision)
        for reason in sorted(self._reasons):
            if reason == "allowed":
                self.dial_attempts.labels(decision="allowed", reason=reason)
            else:
                self.dial_attempts.labels(decision="refused", reason=reason)
                self.marketing_refusals.labels(reason=reason)
                self._guard("marketing_refusals", "reason", reason)
                self._guard("dial_attempts", "reason", reason)

    def _l(self, metric: str, label: str, value: object) -> str:
        return self._guard(metric, label, value)

    # ----------------------------------------------------------------- wiring

    def set_routes(self, routes: Iterable[str]) -> None:
        """Only these route names become labels; anything else is ``unknown``."""
        self._routes = frozenset(routes)
        self._call_children.clear()

    def watch_active_calls(self, count: Callable[[], int]) -> None:
        self.active_calls.set_function(lambda: float(count()))

    def watch_journal(self, journal: Any) -> None:
        """Refresh the journal depth gauge on every scrape (read off the event loop)."""

        async def refresh() -> None:
            try:
                depth = await asyncio.to_thread(journal.depth)
            except OSError:
                return
            self.journal_depth.set(depth)

        self._refreshers.append(refresh)

    def watch_channels(self, count: Callable[[], int]) -> None:
        self.dial_channels.set_function(lambda: float(count()))

    async def refresh(self) -> None:
        for refresher in self._refreshers:
            await refresher()

    def render(self) -> bytes:
        return generate_latest(self.registry)

    # ----------------------------------------------------------------- server hooks

    def connection(self, what: str, reason: str) -> None:
        """A connection was refused (peer, capacity, header, token) before any flow."""
        if what == "refused":
            self.connections.labels(reason=self._l("connections", "reason", reason)).inc()

    def call_finished(self, route: str, outcome: str, seconds: float) -> None:
        children = self._call_children.get((route, outcome))
        if children is None:
            children = self._new_call_children(route, outcome)
        children[0].inc()
        children[1].observe(seconds if seconds > 0.0 else 0.0)

    def _new_call_children(self, raw_route: str, outcome: str) -> tuple[Counter, Histogram]:
        route = raw_route.strip("/") or "/"
        if outcome == "unknown_route" or (self._routes is not None and route not in self._routes):
            route = "unknown"
        route = route if route == "/" else self._l("calls", "route", route)
        children = (
            self.calls.labels(route=route, outcome=self._l("calls", "outcome", outcome)),
            self.call_seconds.labels(route=route),
        )
        return _remember(self._call_children, (raw_route, outcome), children)

    def agi_command(self, verb: str, seconds: float, result: str) -> None:
        """Channel callback: one AGI command and how long its reply took.

        Called for every command, so the label values are guarded once per (verb,
        result) and the series kept (see :class:`_CommandStats`).
        """
        series = self._command_children.get((verb, result))
        if series is None:
            series = self._new_command_series(verb, result)
        hist, count = series
        if seconds < 0.0:
            seconds = 0.0
        hist[bisect.bisect_left(_COMMAND_BUCKETS, seconds)] += 1  # le: the first bound >= it
        hist[-2] += seconds
        count[0] += 1

    def _new_command_series(self, verb: str, result: str) -> tuple[list[float], list[float]]:
        series = self.agi_command_stats.series(
            self._l("agi", "command", verb.replace(" ", "_")), self._l("agi", "result", result))
        return _remember(self._command_children, (verb, result), series)

    # ----------------------------------------------------------------- consent / database

    def consent_decision(self, purpose: str, decision: str, *, journaled: bool = False) -> None:
        child = self._decision_children.get((purpose, decision))  # cached: one per decision
        if child is None:
            child = _remember(self._decision_children, (purpose, decision), self.decisions.labels(
                purpose=self._l("decisions", "purpose", purpose),
                decision=self._l("decisions", "decision", decision),
            ))
        child.inc()
        if journaled:
            self.decisions_journaled.inc()

    def db_observe(self, operation: str, seconds: float, error: str | None = None) -> None:
        child = self._db_children.get(operation)  # cached as agi_command's (a few per call)
        if child is None:
            child = _remember(self._db_children, operation, self.db_seconds.labels(
                operation=self._l("db", "operation", operation)))
        child.observe(seconds if seconds > 0.0 else 0.0)
        if error is not None:
            op = self._l("db", "operation", operation)
            self.db_errors.labels(operation=op, error=self._l("db", "error", error)).inc()

    def db_timer(self, operation: str) -> AbstractContextManager[None]:
        """Time one database operation; an exception counts as an error (and propagates)."""
        return _DbTimer(self, operation)

    # ----------------------------------------------------------------- marketing

    def marketing_played(self, *, with_valid_opt_in: bool = True) -> None:
        """Marketing audio is about to play. ``with_valid_opt_in=False`` is the breach counter."""
        self.marketing_plays.inc()
        if not with_valid_opt_in:
            self.played_without_consent.inc()

    def marketing_refused(self, reason: str) -> None:
        self.marketing_refusals.labels(reason=self._l("marketing_refusals", "reason", reason)).inc()

    def marketing_opted_out(self) -> None:
        self.marketing_opt_outs.inc()

    # ----------------------------------------------------------------- dialer

    def dial_decision(self, allowed: bool, reason: str) -> None:
        self.dial_attempts.labels(
            decision="allowed" if allowed else "refused",
            reason=self._l("dial_attempts", "reason", reason),
        ).inc()

    def dial_originated(self, result: str = "sent") -> None:
        self.dial_originates.labels(result=self._l("originates", "result", result)).inc()
        if result == "sent":
            self._originates.append(time.monotonic())

    def _achieved_cps(self) -> float:
        cutoff = time.monotonic() - CPS_WINDOW_S
        while self._originates and self._originates[0] < cutoff:
            self._originates.popleft()
        return len(self._originates) / CPS_WINDOW_S

    def ami_connected(self, up: bool, *, reconnect: bool = False) -> None:
        self.ami_up.set(1 if up else 0)
        if up and reconnect:
            self.ami_reconnects.inc()


def _error_name(exc: BaseException) -> str:
    """``ConnectionRefusedError`` → ``connection_refused_error``: a bounded label."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", type(exc).__name__).lower()




# --------------------------------------------------------------------------- readiness


class Readiness:
    """``/readyz``: database reachable, migrations current, journal not backed up."""

    def __init__(
        self,
        pool: Any,
        journal: Any = None,
        *,
        pending_migrations: Callable[[Any], Awaitable[list[str]]],
        max_journal_depth: int = 1000,
        timeout: float = 2.0,
        metrics: Metrics | None = None,
    ) -> None:
        self.pool = pool
        self.journal = journal
        #: the ledger's ``pending_migrations(conn)``: passed in, ops imports no other room
        self.pending_migrations = pending_migrations
        self.max_journal_depth = max_journal_depth
        self.timeout = timeout
        self.metrics = metrics

    async def _database(self) -> tuple[bool, str]:
        import asyncpg

        started = time.monotonic()
        try:
            async with asyncio.timeout(self.timeout):
                async with self.pool.acquire() as conn:
                    pending = await self.pending_migrations(conn)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            if self.metrics is not None:
                self.metrics.db_observe("readiness", time.monotonic() - started, _error_name(exc))
                self.metrics.db_up.set(0)
            return False, f"unreachable: {type(exc).__name__}"
        if self.metrics is not None:
            self.metrics.db_observe("readiness", time.monotonic() - started)
            self.metrics.db_up.set(1)
        if pending:
            return False, f"{len(pending)} migration(s) pending: {', '.join(pending[:5])}"
        return True, "ok"

    async def check(self) -> tuple[bool, dict[str, Any]]:
        checks: dict[str, Any] = {}
        db_ok, checks["database"] = await self._database()
        journal_ok = True
        if self.journal is not None:
            try:
                depth = await asyncio.to_thread(self.journal.depth)
            except OSError as exc:
                journal_ok, checks["journal"] = False, f"unreadable: {exc.strerror or exc}"
            else:
                journal_ok = depth < self.max_journal_depth
                checks["journal"] = (
                    f"{depth} entries awaiting replay (limit {self.max_journal_depth})"
                )
                if self.metrics is not None:
                    self.metrics.journal_depth.set(depth)
        ready = db_ok and journal_ok
        if self.metrics is not None:
            self.metrics.ready.set(1 if ready else 0)
        return ready, checks


# --------------------------------------------------------------------------- HTTP listener

_MAX_REQUEST: Final = 8192
_REQUEST_TIMEOUT: Final = 5.0
_REASONS: Final = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
                   503: "Service Unavailable"}


class MetricsServer:
    """``/metrics``, ``/healthz``, ``/readyz`` on a small asyncio HTTP/1.1 responder."""

    def __init__(
        self, metrics: Metrics, host: str, port: int, readiness: Readiness | None = None
    ) -> None:
        self.metrics = metrics
        self.host = host
        self.requested_port = port
        self.readiness = readiness
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._handle, self.host, self.requested_port, reuse_address=True, limit=_MAX_REQUEST
        )
        log.info("metrics_listening", url=f"http://{self.host}:{self.port}/metrics")

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _REQUEST_TIMEOUT)
            except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                    ConnectionError):
                return
            status, ctype, body, method = await self._respond(head)
            headers = (
                f"HTTP/1.1 {status} {_REASONS.get(status, 'OK')}\r\n"
                f"Content-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\n"
                "Cache-Control: no-store\r\n"
                "Connection: close\r\n\r\n"
            )
            writer.write(headers.encode("ascii") + (b"" if method == "HEAD" else body))
            await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def _respond(self, head: bytes) -> tuple[int, str, bytes, str]:
        text = "text/plain; charset=utf-8"
        try:
            method, target, _version = head.split(b"\r\n", 1)[0].decode("ascii").split(" ")
        except ValueError:
            return 400, text, b"bad request\n", "GET"
        if method not in {"GET", "HEAD"}:
            return 405, text, b"method not allowed\n", method
        path = target.split("?", 1)[0]
        if path == "/metrics":
            await self.metrics.refresh()
            return 200, CONTENT_TYPE_LATEST, self.metrics.render(), method
        if path == "/healthz":
            return 200, text, b"ok\n", method
        if path == "/readyz":
            if self.readiness is None:
                return 200, "application/json", b'{"ready": true, "checks": {}}\n', method
            ready, checks = await self.readiness.check()
            body = json.dumps({"ready": ready, "checks": checks}).encode() + b"\n"
            return (200 if ready else 503), "application/json", body, method
        return 404, text, b"not found: try /metrics, /healthz or /readyz\n", method


def parse_addr(addr: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` too) → (host, port); ConfigError when malformed."""
    host, sep, port_text = addr.rpartition(":")
    host = host.strip("[]")
    try:
        port = int(port_text)
    except ValueError:
        port = -1
    if not sep or not host or not 0 <= port < 65536:
        raise ConfigError(f"CONSENT_IVR_METRICS_ADDR: {addr!r} is not host:port")
    return host, port


async def start_exporter(
    addr: str | None, metrics: Metrics, readiness: Readiness | None = None
) -> MetricsServer | None:
    """Start the listener on ``addr`` (``None`` = disabled). Bind failure → ConfigError."""
    if not addr:
        return None
    host, port = parse_addr(addr)
    server = MetricsServer(metrics, host, port, readiness)
    try:
        await server.start()
    except OSError as exc:
        raise ConfigError(
            f"CONSENT_IVR_METRICS_ADDR: cannot listen on {addr}: {exc.strerror or exc}"
        ) from exc
    return server


class _DbTimer(AbstractContextManager[None]):
    """:meth:`Metrics.db_timer`: a plain class, not a generator (two per call)."""

    __slots__ = ("_metrics", "_operation", "_started")

    def __init__(self, metrics: Metrics, operation: str) -> None:
        self._metrics = metrics
        self._operation = operation
        self._started = 0.0

    def __enter__(self) -> None:
        self._started = time.monotonic()

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is None:
            self._metrics.db_observe(self._operation, time.monotonic() - self._started)
        elif isinstance(exc, Exception):  # a cancellation is not a database error
            self._metrics.db_observe(self._operation, time.monotonic() - self._started,
                                     _error_name(exc))
