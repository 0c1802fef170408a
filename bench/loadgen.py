"""The load generator: simulated Asterisk channels speaking FastAGI over TCP.

Runs in its own process (``python -m bench.loadgen CONFIG_JSON``; prints one JSON
object), never in the process of the server under test.

Why two kinds of caller. The strict :class:`tests.fakes.FakeAsterisk` models res_agi
(parse_args, a channel, a virtual clock) and costs far more CPU per command than the
servers being measured; on a 2-core machine it would be the bottleneck and every
server would look equally fast. So each scripted dialogue is first played once by the
strict fake against the server under test (:func:`record`), and the bytes it exchanged
become a template. The load is then carried by :class:`ScriptedCaller`, an
``asyncio.Protocol`` that replays the fake's replies byte for byte and checks every
command it receives against the recording (only the value of
``SET VARIABLE "CONSENT_EVENT_ID"`` may differ, since each commit gets its own id).
A command that differs is an error, so a server cannot look fast by doing less.

Callers answer at once (virtual time: a 5 s prompt "plays" in no time), or after a
random think time per reply (uniform on 0..2 x ``think_ms``) when measuring latency at a
paced load.

Client-side figures, per command: the time from the caller's reply leaving
(``transport.write`` returned) to the next command line arriving — the server's added
latency, including its queueing. The first command is timed from ``connect()``
instead, and the command that follows the deciding digit is reported apart as
keypress-to-commit: from the reply carrying that digit to ``SET VARIABLE
"CONSENT_EVENT_ID"`` arriving, which the flow sends only after the ledger commit (it
waits for PostgreSQL's WAL flush, not for the server). ``cmd_latency_incl_commit_ms``
mixes both.
"""

from __future__ import annotations

import asyncio
import json
import random
import resource
import sys
import time
from dataclasses import dataclass, field
from typing import Any

EVENT_ID_CMD = b'SET VARIABLE "CONSENT_EVENT_ID" "'
CHECK_EVENT_ID = EVENT_ID_CMD  # the one command whose argument varies per call

now = time.perf_counter


def raise_nofile() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit (10,000 sockets need it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def loop_factory(kind: str) -> Any:
    """The event loop for ``kind`` (``auto``, ``uvloop``, ``asyncio``), as the server picks
    it (``agi.ops.config.Settings.loop_factory``).

    The load generator stands in for Asterisk, which does its socket work in C: on uvloop
    it costs about half the CPU per call, which the servers measured then get.
    """
    from agi.ops.config import Settings

    return Settings(event_loop=kind).loop_factory()


# --------------------------------------------------------------------------- templates


@dataclass(slots=True)
class Template:
    """One scripted dialogue as the strict fake played it: env block, commands, replies."""

    name: str
    env: bytes  # the whole env block, with UNIQUEID where the uniqueid goes
    commands: list[bytes]  # each expected command line (with its \n)
    replies: list[bytes]  # the bytes the fake sent after each command (may be several lines)
    keypress: int  # index of the command whose reply carries the deciding digit (-1: none)
    commit: int  # index of the SET VARIABLE "CONSENT_EVENT_ID" "<id>" command (-1: none)
    weight: int = 1

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "env": self.env.decode("latin-1"),
            "commands": [c.decode("latin-1") for c in self.commands],
            "replies": [r.decode("latin-1") for r in self.replies],
            "keypress": self.keypress, "commit": self.commit, "weight": self.weight,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Template:
        return cls(
            name=d["name"], env=d["env"].encode("latin-1"),
            commands=[c.encode("latin-1") for c in d["commands"]],
            replies=[r.encode("latin-1") for r in d["replies"]],
            keypress=d["keypress"], commit=d["commit"], weight=d.get("weight", 1),
        )


#: name → (press script, weight). A mix: opt-ins (with confirmation), opt-outs, a cancel.
#: Each item answers one prompt that waits for a key (the identification takes none: it
#: always plays whole); None = SILENCE, the prompt times out and is asked again.
SCRIPTS: dict[str, tuple[list[str | None], int]] = {
    "opt_in": (["1", None, "1"], 5),  # 1 at the question, the statement, 1 to confirm
    "opt_in_after_silence": ([None, "1", None, "1"], 1),  # silent once: no-input, asked again
    "opt_out": (["2"], 3),
    "cancel": (["1", None, "3"], 1),  # no decision: an attempt row, no consent
}


async def record(host: str, port: int, name: str, presses: list[str | None], weight: int,
                 uniqueid: str = "1700000000.424242") -> Template:
    """Play one call with the strict fake and turn its transcript into a :class:`Template`."""
    try:
        from agi.testing.fakeasterisk import SILENCE, FakeAsterisk  # type: ignore[import-not-found]
    except ImportError:
        from tests.fakes import SILENCE, FakeAsterisk

    fake = FakeAsterisk(host, port, uniqueid=uniqueid, callerid="+447400123456",
                        presses=[SILENCE if p is None else p for p in presses])
    rec = await fake.run()
    if rec.errors or not rec.connected:
        raise RuntimeError(f"recording {name} failed: {rec.errors}\n{rec.dialogue()}")
    env = b""
    commands: list[bytes] = []
    replies: list[bytes] = []
    for kind, data in rec.transcript:
        if kind == ">":
            commands.append(data)
            replies.append(b"")
        elif not commands:
            env += data
        else:
            replies[-1] += data
    # the final "HANGUP\n" the fake sends once the server closed is not a reply
    if replies and replies[-1].endswith(b"HANGUP\n"):
        replies[-1] = replies[-1][: -len(b"HANGUP\n")]
    commit = next((i for i, c in enumerate(commands)
                   if c.startswith(EVENT_ID_CMD) and c != EVENT_ID_CMD + b'"\n'), -1)
    keypress = -1
    if commit >= 0:
        keypress = max(i for i in range(commit) if b"result=0" not in replies[i]
                       and (commands[i].startswith(b"GET OPTION")
                            or commands[i].startswith(b"STREAM FILE")))
    env = env.replace(uniqueid.encode(), b"UNIQUEID")
    return Template(name, env, commands, replies, keypress, commit, weight)


# --------------------------------------------------------------------------- the caller


@dataclass(slots=True)
class Stats:
    """What the callers saw; samples are kept only inside the measuring window."""

    measuring: bool = False
    completed: int = 0
    #: every call completed, inside the measuring window or not (instructions part)
    completed_all: int = 0
    completed_by: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    error_count: int = 0
    refused: int = 0
    cmd_lat: list[float] = field(default_factory=list)
    first_lat: list[float] = field(default_factory=list)  # connect() start → first command
    ktc: list[float] = field(default_factory=list)
    commit_lat: list[float] = field(default_factory=list)  # reply → SET ..._EVENT_ID
    commands: int = 0

    def error(self, text: str) -> None:
        self.error_count += 1
        if len(self.errors) < 20:
            self.errors.append(text)


class ScriptedCaller(asyncio.Protocol):
    """One Asterisk channel replaying a template; see the module docstring."""

    def __init__(self, tpl: Template, uniqueid: str, stats: Stats, done: asyncio.Future[bool],
                 *, think: float = 0.0, hold_at: int = -1, started: float = 0.0,
                 on_hold: Any = None) -> None:
        self.tpl = tpl
        self.uniqueid = uniqueid.encode()
        self.stats = stats
        self.done = done
        self.think = think
        self.hold_at = hold_at  # stop answering at this command (the call waits "forever")
        self.on_hold = on_hold
        self.started = started
        self.idx = 0
        self.buf = b""
        self.sent_at = 0.0
        self.key_at = 0.0
        self.transport: asyncio.Transport | None = None
        self.finished = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports are not registered as asyncio.Transport subclasses)
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(self.tpl.env.replace(b"UNIQUEID", self.uniqueid))
        self.sent_at = now()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            pos = self.buf.find(b"\n")
            if pos < 0:
                return
            line, self.buf = self.buf[: pos + 1], self.buf[pos + 1:]
            self._command(line, now())

    def _command(self, line: bytes, t: float) -> None:
        tpl, i, st = self.tpl, self.idx, self.stats
        if i >= len(tpl.commands):
            self._fail(f"{tpl.name}: unexpected command {line!r} after the script ended")
            return
        expected = tpl.commands[i]
        if line != expected and not (i == tpl.commit and line.startswith(CHECK_EVENT_ID)):
            self._fail(f"{tpl.name}: command {i}: expected {expected!r}, got {line!r}")
            return
        if st.measuring:
            st.commands += 1
            if i == 0:
                st.first_lat.append(t - self.started)
            elif i == tpl.commit:
                # the one command that waits for the ledger (the WAL flush): reported as
                # keypress-to-commit, kept out of the per-command figure
                st.ktc.append(t - self.key_at)
                st.commit_lat.append(t - self.sent_at)
            else:
                st.cmd_lat.append(t - self.sent_at)
        self.idx = i + 1
        if i == self.hold_at:
            if self.on_hold is not None:
                self.on_hold()
            return
        if self.think:
            # uniform on [0, 2 x think]: a fixed think time would march every channel in
            # step and measure the bursts it creates, not the server
            asyncio.get_running_loop().call_later(random.uniform(0, 2 * self.think),
                                                  self._reply, i)
        else:
            self._reply(i)

    def _reply(self, i: int) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.transport.write(self.tpl.replies[i])
        self.sent_at = t = now()
        if i == self.tpl.keypress:
            self.key_at = t

    def _fail(self, text: str) -> None:
        self.stats.error(text)
        self.finished = True
        if self.transport is not None:
            self.transport.close()
        if not self.done.done():
            self.done.set_result(False)

    def eof_received(self) -> bool | None:
        # the server ended the AGI: Asterisk answers with one last HANGUP and closes
        if self.transport is not None:
            self.transport.write(b"HANGUP\n")
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        if self.finished:
            return
        self.finished = True
        ok = self.idx == len(self.tpl.commands)
        if not ok:
            self.stats.error(f"{self.tpl.name}: connection closed after {self.idx} of "
                             f"{len(self.tpl.commands)} commands ({exc!r})")
        else:
            self.stats.completed_all += 1
        if ok and self.stats.measuring:
            self.stats.completed += 1
            by = self.stats.completed_by
            by[self.tpl.name] = by.get(self.tpl.name, 0) + 1
        if not self.done.done():
            self.done.set_result(ok)


_seq = 0


def _uniqueid() -> str:
    global _seq
    _seq += 1
    return f"{int(time.time())}.{_seq}{random.randrange(10**6):06d}"


async def place_call(host: str, port: int, tpl: Template, stats: Stats, *, think: float = 0.0,
                     hold_at: int = -1, on_hold: Any = None,
                     registry: list[ScriptedCaller] | None = None) -> asyncio.Future[bool]:
    """Connect one channel; returns a future set when the call ends (True: as scripted)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[bool] = loop.create_future()
    started = now()
    try:
        _, proto = await loop.create_connection(
            lambda: ScriptedCaller(tpl, _uniqueid(), stats, done, think=think, hold_at=hold_at,
                                   started=started, on_hold=on_hold),
            host, port)
        if registry is not None:
            registry.append(proto)
    except OSError as exc:
        stats.refused += 1
        stats.error(f"connect failed: {exc!r}")
        done.set_result(False)
    return done


# --------------------------------------------------------------------------- modes


def _pick(templates: list[Template]) -> list[Template]:
    """A deterministic round-robin deck honouring the weights."""
    deck: list[Template] = []
    for t in templates:
        deck.extend([t] * t.weight)
    random.Random(7).shuffle(deck)
    return deck


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def _ms(values: list[float]) -> dict[str, float | None]:
    def r(v: float | None) -> float | None:
        return None if v is None else round(v * 1000, 3)

    return {"p50": r(_pct(values, 0.50)), "p99": r(_pct(values, 0.99)),
            "max": r(max(values) if values else None), "n": len(values)}


async def closed_loop(cfg: dict[str, Any]) -> dict[str, Any]:
    """``concurrency`` channels, each placing its next call as soon as one ends."""
    host, port = cfg["host"], cfg["port"]
    templates = [Template.from_json(t) for t in cfg["templates"]]
    deck = _pick(templates)
    stats = Stats()
    think = cfg.get("think_ms", 0) / 1000
    stop = False
    counter = 0

    async def channel(k: int) -> None:
        nonlocal counter
        await asyncio.sleep(k * cfg.get("ramp_s", 0.5) / cfg["concurrency"])
        while not stop:
            tpl = deck[counter % len(deck)]
            counter += 1
            done = await place_call(host, port, tpl, stats, think=think)
            if not await done:
                await asyncio.sleep(0.01)

    workers = [asyncio.create_task(channel(k)) for k in range(cfg["concurrency"])]
    await asyncio.sleep(cfg.get("warmup_s", 2.0))
    cpu0, t0 = time.process_time(), now()
    stats.measuring = True
    await asyncio.sleep(cfg["duration_s"])
    stats.measuring = False
    elapsed, cpu = now() - t0, time.process_time() - cpu0
    stop = True
    await asyncio.wait(workers, timeout=15)
    for w in workers:
        w.cancel()
    return {
        "concurrency": cfg["concurrency"], "think_ms": cfg.get("think_ms", 0),
        "seconds": round(elapsed, 2), "calls": stats.completed,
        "calls_all": stats.completed_all,
        "calls_per_s": round(stats.completed / elapsed, 1),
        "commands_per_s": round(stats.commands / elapsed, 1),
        "by_script": stats.completed_by,
        "cmd_latency_ms": _ms(stats.cmd_lat), "keypress_to_commit_ms": _ms(stats.ktc),
        "cmd_latency_incl_commit_ms": _ms(stats.cmd_lat + stats.commit_lat),
        "first_command_ms": _ms(stats.first_lat),
        "errors": stats.error_count, "refused": stats.refused, "error_samples": stats.errors[:5],
        "client_cpu_pct": round(100 * cpu / elapsed, 1),
    }


async def hold(cfg: dict[str, Any]) -> dict[str, Any]:
    """Open ``calls`` channels that stop answering at the first GET OPTION, then report.

    Phase 1 opens them (``batch`` connects at a time) and waits until every one is held;
    then it prints ``HELD`` on stderr and waits for a line on stdin (the orchestrator
    measures the server meanwhile); then every caller hangs up.
    """
    host, port = cfg["host"], cfg["port"]
    tpl = Template.from_json(cfg["templates"][0])
    hold_at = next(i for i, c in enumerate(tpl.commands) if c.startswith(b"GET OPTION"))
    stats = Stats()
    stats.measuring = False
    held = 0
    all_held = asyncio.Event()
    calls = cfg["calls"]

    def on_hold() -> None:
        nonlocal held
        held += 1
        if held == calls:
            all_held.set()

    t0 = now()
    dones = []
    callers: list[ScriptedCaller] = []
    for start in range(0, calls, cfg.get("batch", 200)):
        batch = [place_call(host, port, tpl, stats, hold_at=hold_at, on_hold=on_hold,
                            registry=callers)
                 for _ in range(min(cfg.get("batch", 200), calls - start))]
        dones.extend(await asyncio.gather(*batch))
    try:
        await asyncio.wait_for(all_held.wait(), cfg.get("timeout_s", 120))
    except TimeoutError:
        pass
    open_s = now() - t0
    ended_early = sum(1 for d in dones if d.done())
    print(json.dumps({"held": held, "open_s": round(open_s, 2)}), file=sys.stderr, flush=True)
    print("HELD", file=sys.stderr, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    # release: every caller hangs up (the server files one "hangup" attempt per call)
    for caller in callers:
        caller.finished = True  # a hang-up on purpose, not an error
        if caller.transport is not None:
            caller.transport.close()
    await asyncio.sleep(0.5)
    return {"calls": calls, "held": held, "open_s": round(open_s, 2),
            "ended_before_release": ended_early, "errors": stats.error_count,
            "refused": stats.refused, "error_samples": stats.errors[:5]}


async def storm(cfg: dict[str, Any]) -> dict[str, Any]:
    """``calls`` new connections spread evenly over ``spread_s`` seconds, each a full call."""
    host, port = cfg["host"], cfg["port"]
    templates = [Template.from_json(t) for t in cfg["templates"]]
    deck = _pick(templates)
    stats = Stats()
    stats.measuring = True
    calls, spread = cfg["calls"], cfg["spread_s"]
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    futures: list[asyncio.Future[asyncio.Future[bool]]] = []
    for k in range(calls):
        at = t0 + spread * k / calls
        delay = at - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        futures.append(asyncio.ensure_future(place_call(host, port, deck[k % len(deck)], stats)))
    issued = loop.time() - t0
    dones = await asyncio.gather(*futures)
    ok = await asyncio.gather(*dones)
    late = sum(1 for v in stats.first_lat if v > 2.0)
    return {"calls": calls, "spread_s": spread, "issued_in_s": round(issued, 3),
            "completed": sum(ok), "refused": stats.refused, "errors": stats.error_count,
            "first_command_ms": _ms(stats.first_lat), "over_2s": late,
            "error_samples": stats.errors[:5]}


async def record_mode(cfg: dict[str, Any]) -> dict[str, Any]:
    out = []
    for name, (presses, weight) in SCRIPTS.items():
        if cfg.get("scripts") and name not in cfg["scripts"]:
            continue
        tpl = await record(cfg["host"], cfg["port"], name, presses, weight)
        out.append(tpl.to_json())
    return {"templates": out}


MODES = {"closed_loop": closed_loop, "hold": hold, "storm": storm, "record": record_mode}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    cfg = json.loads(argv[0]) if argv else json.load(sys.stdin)
    raise_nofile()
    with asyncio.Runner(loop_factory=loop_factory(cfg.get("loop", "auto"))) as runner:
        result = runner.run(MODES[cfg["mode"]](cfg))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
