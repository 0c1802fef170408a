"""Part 6: price a consent call against the real PBX (issue 16 part 4).

N concurrent inbound consent calls go through a real Asterisk 22 (the test tier's
harness, ``tests/asterisk/pbx.py``) into the kit's ``consent-inbound`` and on to a real
``consent-ivr serve`` over FastAGI, which records each decision in PostgreSQL. Every
call is a Local channel pair: the ``;2`` half runs the kit, the ``;1`` half plays the
caller and presses keys with ``SendDTMF`` at times taken from the prompt manifest.

Per level, the CPU time (user + system, from ``/proc/<pid>/stat``) that the Asterisk
process, the consent-ivr process and every PostgreSQL process spent while the calls ran,
divided by the calls; consent-ivr's CPU as a share of Asterisk's; RSS figures; and every
call whose outcome was not as scripted (``CONSENT_RESULT``, ``CONSENT_EVENT_ID`` and
``AGISTATUS`` as Asterisk set them, and the ledger's row for the caller).

The PBX is set up lean, so that its CPU is not inflated by the measurement: no verbose
log (notices and warnings only), and the harness's AMI session asks only for the events
it reads (channel creation and hangup, the originate reply, three variables). Asterisk
still builds its AMI events while a session is connected, as it does for the dialer's.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import procs

TOKEN = "bench-pbx-token-0123456789abcdef"
LEVELS = (50, 200, 500)
#: Seconds into the question (and into the confirmation) the caller presses. A press
#: that lands before the question has begun is no answer (keys during the
#: identification do not count), so this is also how far the PBX's playback may lag the
#: caller's clock on a loaded machine before a call fails.
INTO = 4.0
#: From the caller's answer to the first prompt: Answer()'s half second on a Local
#: channel, then the FastAGI connection.
START = 0.6
PURPOSE = "marketing-calls"
#: the variables the bench reads from the AMI
WATCHED = ("CONSENT_RESULT", "CONSENT_EVENT_ID", "AGISTATUS")
EXPECTED = {"opt_in": "opted_in", "opt_out": "opted_out"}
#: The kit's inbound context as shipped, and (``--pbx-ab``) the same context without the
#: ``answered=1`` it passes, so that the flow sends its ANSWER: the A/B of that one
#: parameter, each call otherwise the same.
KIT_CONTEXT = "consent-inbound"
NO_ANSWERED_CONTEXT = "bench-inbound-no-answered"
VARIANTS = {"kit": KIT_CONTEXT, "kit without answered=1": NO_ANSWERED_CONTEXT}


def no_answered_dialplan() -> str:
    """The kit's ``[consent-inbound]``, renamed and without ``answered=1`` in its AGI URL.

    Derived from the shipped file at run time, so the B side of the A/B can never drift
    from the kit in anything but that parameter.
    """
    from tests.asterisk.pbx import REPO

    text = (REPO / "dialplan" / "extensions_consent.conf").read_text()
    start = text.index(f"[{KIT_CONTEXT}]")
    end = text.index("\n[", start + 1)
    section = text[start:end]
    if section.count("&answered=1") != 1:
        raise RuntimeError("the kit's consent-inbound no longer passes answered=1 once")
    return "\n" + section.replace(f"[{KIT_CONTEXT}]", f"[{NO_ANSWERED_CONTEXT}]", 1).replace(
        "&answered=1", "") + "\n"


def _commands_per_call(log: Path, offset: int) -> tuple[float | None, int]:
    """Mean AGI commands a call from the server's ``call_finished`` lines after ``offset``
    (the server counts what it sent), and the new offset."""
    import json

    with log.open("rb") as fh:
        fh.seek(offset)
        data = fh.read()
    counts = []
    for line in data.splitlines():
        if b'"call_finished"' in line:
            try:
                counts.append(int(json.loads(line)["commands"]))
            except (ValueError, KeyError):
                continue
    return (round(sum(counts) / len(counts), 2) if counts else None), offset + len(data)


def caller_script(kind: str, timeline: Any) -> list[tuple[float, str]]:
    """The caller's keys for one scripted call, from the prompt manifest.

    Opt in: 1 during the question, then (after the per-purpose statement, which is
    played whole, if the catalogue has one) 1 during the confirmation. Opt out: 2.
    """
    question = START + timeline.length("identify") + INTO
    if kind == "opt_out":
        return [(question, "2")]
    statement = timeline.seconds.get(f"statement-{PURPOSE}", 0.0)
    return [(question, "1"), (statement + INTO, "1")]


def _status(pid: int, *keys: str) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            name, _, rest = line.partition(":")
            if name in keys:
                out[name] = int(rest.split()[0])
    except OSError:
        pass
    return out


def _postgres_pids() -> list[int]:
    """The embedded cluster's postmaster and its children (None known: empty)."""
    if not procs._PG_POSTMASTER:
        return []
    pm = procs._PG_POSTMASTER[0]
    pids = [pm]
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pm:
                    pids.append(int(d.name))
            except OSError:
                continue
    return pids


def _postgres_private_kib() -> int | None:
    """PostgreSQL's private memory: the sum of RssAnon over its processes (the shared
    buffers, mapped by every backend, are not counted once per process)."""
    pids = _postgres_pids()
    if not pids:
        return None
    return sum(_status(p, "RssAnon").get("RssAnon", 0) for p in pids)


def _cpu(pid: int) -> float:
    u, s = procs.cpu_split(pid)
    return u + s


class _Sampler:
    """RSS and live calls, once a second while the calls run: the peaks."""

    def __init__(self, pbx: Any, asterisk_pid: int, server_pid: int) -> None:
        self.pbx, self.apid, self.spid = pbx, asterisk_pid, server_pid
        self.peak = {"asterisk_rss_kib": 0, "server_rss_kib": 0, "postgres_private_kib": 0,
                     "live_calls": 0}

    def sample(self) -> None:
        live = sum(1 for r in self.pbx.calls.values()
                   if r.channels and not r.hungup >= r.channels)
        figures = {"asterisk_rss_kib": _status(self.apid, "VmRSS").get("VmRSS", 0),
                   "server_rss_kib": _status(self.spid, "VmRSS").get("VmRSS", 0),
                   "postgres_private_kib": _postgres_private_kib() or 0, "live_calls": live}
        for k, v in figures.items():
            self.peak[k] = max(self.peak[k], v)

    async def run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(1.0)


async def _filter_events(pbx: Any) -> None:
    """Only the events the bench reads (Asterisk 22's advanced AMI filters)."""
    manager = await pbx.connect_ami()
    filters = [("name(Newchannel)", ""), ("name(Hangup)", ""),
               ("name(OriginateResponse)", ""),
               ("name(VarSet),header(Variable),method(regex)", f"^({'|'.join(WATCHED)})$")]
    for criteria, regex in filters:
        action = {"Action": "Filter", "Operation": "Add",
                  "MatchCriteria": f"action(include),{criteria}"}
        if regex:
            action["Filter"] = regex
        reply = await manager.send_action(action)
        if reply.get("Response") != "Success":
            raise RuntimeError(f"AMI Filter refused: {dict(reply)}")


async def _drive(pbx: Any, server_pid: int, calls: Sequence[tuple[str, str]],
                 idle_s: float, profile: Path | None,
                 context: str = KIT_CONTEXT) -> dict[str, Any]:
    from tests.asterisk.pbx import Timeline

    timeline = Timeline("en")
    apid = pbx.proc.pid
    # idle: what the two processes burn with no call at all
    a0, s0 = _cpu(apid), _cpu(server_pid)
    await asyncio.sleep(idle_s)
    idle = {"asterisk_idle_ms_per_s": round(1e3 * (_cpu(apid) - a0) / idle_s, 2),
            "server_idle_ms_per_s": round(1e3 * (_cpu(server_pid) - s0) / idle_s, 2)}
    sampler = _Sampler(pbx, apid, server_pid)
    with procs.py_spy_recording(server_pid, profile):
        a0, s0 = procs.cpu_split(apid), procs.cpu_split(server_pid)
        p0 = procs.postgres_cpu_seconds()
        t0 = time.monotonic()
        sampling = asyncio.create_task(sampler.run())
        try:
            done = await asyncio.gather(
                *(pbx.call(cid, caller_script(kind, timeline), timeout=240, context=context)
                  for cid, kind in calls),
                return_exceptions=True)
        finally:
            sampling.cancel()
        await asyncio.sleep(1.0)  # the last calls' ledger writes and log lines
        wall = time.monotonic() - t0
        a1, s1 = procs.cpu_split(apid), procs.cpu_split(server_pid)
        p1 = procs.postgres_cpu_seconds()
        sampler.sample()
    # (user, system) seconds of each: its own code, and the kernel's work for it
    return {"records": done, "wall_s": round(wall, 1),
            "asterisk_cpu": (a1[0] - a0[0], a1[1] - a0[1]),
            "server_cpu": (s1[0] - s0[0], s1[1] - s0[1]),
            "postgres_cpu_s": None if p0 is None or p1 is None else p1 - p0,
            "peaks": sampler.peak, **idle}


async def _ledger(db_url: str, numbers: list[str]) -> dict[str, list[tuple[int, str]]]:
    import asyncpg

    conn = await asyncpg.connect(db_url)
    try:
        rows = await conn.fetch(
            "SELECT id, number_e164, decision FROM consent_event "
            "WHERE number_e164 = ANY($1::text[]) ORDER BY id", numbers)
    finally:
        await conn.close()
    out: dict[str, list[tuple[int, str]]] = {n: [] for n in numbers}
    for r in rows:
        out[r["number_e164"]].append((r["id"], r["decision"]))
    return out


def _failures(calls: Sequence[tuple[str, str]], records: Sequence[Any],
              ledger: dict[str, list[tuple[int, str]]]) -> list[dict[str, Any]]:
    """Every call whose outcome is not what its caller scripted."""
    failed: list[dict[str, Any]] = []
    for (cid, kind), rec in zip(calls, records, strict=True):
        why: list[str] = []
        if isinstance(rec, BaseException):
            why.append(f"{type(rec).__name__}: {str(rec)[:200]}")
        else:
            got = {name: rec.last(name) for name in WATCHED}
            if got["CONSENT_RESULT"] != EXPECTED[kind]:
                why.append(f"CONSENT_RESULT={got['CONSENT_RESULT']!r}")
            if got["AGISTATUS"] != "SUCCESS":
                why.append(f"AGISTATUS={got['AGISTATUS']!r}")
            rows = ledger.get(cid, [])
            if [d for _, d in rows] != [kind]:
                why.append(f"ledger holds {[d for _, d in rows]}")
            elif got["CONSENT_EVENT_ID"] != str(rows[0][0]):
                why.append(f"CONSENT_EVENT_ID={got['CONSENT_EVENT_ID']!r}, "
                           f"ledger id {rows[0][0]}")
        if why:
            failed.append({"caller": cid, "scripted": kind, "why": why})
    return failed


def level(ctx: dict[str, Any], binary: Any, n: int, tag: int,
          mix: Sequence[str] = ("opt_in", "opt_out"), *, variant: str = "kit",
          batches: int = 1) -> list[dict[str, Any]]:
    """One level: a fresh database, consent-ivr and Asterisk; ``n`` calls at once.

    With ``batches`` > 1 the same server and PBX take ``n`` calls at once again after the
    first batch has ended, each batch measured on its own: the first pays what a server
    start leaves for its first calls (pool growth, first use of each code path), the
    later ones do not, so the difference is that cost.
    """
    from tests.asterisk.pbx import Asterisk

    wd: Path = ctx["workdir"]
    db_url = procs.run(ctx["db"].create("bench_pbx"))
    context = VARIANTS[variant]
    plans = [[(f"+4475{tag:02d}{b * n + i:06d}", mix[i % len(mix)]) for i in range(n)]
             for b in range(batches)]
    profile = ctx.get("pbx_profile")
    outs: list[dict[str, Any]] = []
    try:
        with procs.server("consent-ivr", wd, database_url=db_url, extra_env={
                "CONSENT_IVR_AGI_TOKEN": TOKEN, "CONSENT_IVR_INSTANCE": f"bench-pbx-{n}"}) as srv:
            pbx = Asterisk(binary, wd / f"asterisk-{n}-{tag}", agi_port=srv.port,
                           agi_token=TOKEN,
                           extra_dialplan=no_answered_dialplan()
                           if context == NO_ANSWERED_CONTEXT else "")
            pbx.write_config()
            # notices and warnings only: a verbose log would be the PBX's work, not the call's
            (pbx.etc / "logger.conf").write_text(
                "[general]\ndateformat = %F %T.%3q\n[logfiles]\nfull => notice,warning,error\n")
            pbx.start(configure=False)
            try:
                log_at = srv.log.stat().st_size

                async def main() -> list[tuple[dict[str, Any], dict[str, Any]]]:
                    nonlocal log_at
                    got = []
                    try:
                        await _filter_events(pbx)
                        for b, calls in enumerate(plans):
                            spy_out = (Path(profile) / f"pbx-{n}-{variant.split()[0]}-{b}.txt"
                                       if profile else None)
                            rss0 = _status(srv.pid, "VmRSS").get("VmRSS", 0)
                            res = await _drive(pbx, srv.pid, calls, 3.0 if n > 10 else 1.0,
                                               spy_out, context)
                            cmds, log_at = _commands_per_call(srv.log, log_at)
                            got.append((res, {"server_rss_before_kib": rss0,
                                              "agi_commands_per_call": cmds,
                                              **({"py_spy_raw": str(spy_out)}
                                                 if spy_out else {})}))
                    finally:
                        await pbx.close_ami()
                    return got

                batches_got = asyncio.run(main())
                apid = pbx.proc.pid if pbx.proc else 0
                mem = {"asterisk_hwm_kib": _status(apid, "VmHWM").get("VmHWM"),
                       "server_hwm_kib": _status(srv.pid, "VmHWM").get("VmHWM"),
                       "server_rss_after_kib": _status(srv.pid, "VmRSS").get("VmRSS")}
            finally:
                pbx.stop()
        ledger = procs.run(_ledger(db_url, [c for calls in plans for c, _ in calls]))
    finally:
        procs.run(ctx["db"].drop(db_url))
    for b, (calls, (got, extra)) in enumerate(zip(plans, batches_got, strict=True)):
        outs.append({"variant": variant, "batch": b,
                     **_figures(n, mix, calls, got, ledger, {**mem, **extra})})
    return outs


def _figures(n: int, mix: Sequence[str], calls: Sequence[tuple[str, str]],
             got: dict[str, Any], ledger: dict[str, list[tuple[int, str]]],
             mem: dict[str, Any]) -> dict[str, Any]:
    """One batch's figures: CPU per call of each process, the share, memory, failures."""
    failed = _failures(calls, got.pop("records"), ledger)
    (ast_u, ast_s), (ivr_u, ivr_s) = got["asterisk_cpu"], got["server_cpu"]
    ast, ivr, pg = ast_u + ast_s, ivr_u + ivr_s, got["postgres_cpu_s"]
    peaks = got.pop("peaks")
    return {
        "calls": n, "mix": list(mix), "failed": len(failed), "failures": failed[:50],
        "peak_live_calls": peaks["live_calls"], "wall_s": got["wall_s"],
        "asterisk_ms_per_call": round(1e3 * ast / n, 2),
        "asterisk_user_sys_ms_per_call": [round(1e3 * ast_u / n, 2), round(1e3 * ast_s / n, 2)],
        "server_ms_per_call": round(1e3 * ivr / n, 3),
        "server_user_sys_ms_per_call": [round(1e3 * ivr_u / n, 3), round(1e3 * ivr_s / n, 3)],
        "postgres_ms_per_call": None if pg is None else round(1e3 * pg / n, 3),
        "server_share_pct": round(100 * ivr / ast, 2) if ast else None,
        "asterisk_rss_peak_kib": peaks["asterisk_rss_kib"],
        "server_rss_peak_kib": peaks["server_rss_kib"],
        "postgres_private_peak_kib": peaks["postgres_private_kib"] or None,
        "server_rss_per_live_call_kib": round(
            (peaks["server_rss_kib"] - mem["server_rss_before_kib"])
            / max(peaks["live_calls"], 1), 1),
        **mem, "asterisk_idle_ms_per_s": got["asterisk_idle_ms_per_s"],
        "server_idle_ms_per_s": got["server_idle_ms_per_s"],
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }


def run(ctx: dict[str, Any]) -> dict[str, Any]:
    from tests.asterisk.pbx import Unavailable, find_asterisk

    try:
        binary = find_asterisk()
    except Unavailable as exc:
        return {"available": False, "reason": f"real-Asterisk tier: {exc}"}
    levels = ctx.get("pbx_levels") or ([10] if ctx["quick"] else list(LEVELS))
    batches = max(1, int(ctx.get("pbx_batches") or 1))
    out: dict[str, Any] = {"asterisk": str(binary.path), "into_s": INTO, "levels": []}
    tag = 10
    for k, n in enumerate(levels):
        variants = list(VARIANTS) if ctx.get("pbx_ab") else ["kit"]
        if k % 2:  # A/B, B/A, ...: neither side always runs first
            variants.reverse()
        for variant in variants:
            for res in level(ctx, binary, n, tag, variant=variant, batches=batches):
                out["levels"].append(res)
                print(f"  .. pbx {n} calls ({variant}, batch {res['batch'] + 1}): Asterisk "
                      f"{res['asterisk_ms_per_call']} ms/call, consent-ivr "
                      f"{res['server_ms_per_call']} ms/call ({res['server_share_pct']} %), "
                      f"{res['agi_commands_per_call']} AGI commands/call, PostgreSQL "
                      f"{res['postgres_ms_per_call']} ms/call, peak live "
                      f"{res['peak_live_calls']}, failed {res['failed']}",
                      file=sys.stderr, flush=True)
            tag += 1
    return out
