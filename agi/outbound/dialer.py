"""The consent-gated outbound dialer: AMI (:mod:`agi.outbound.ami`), jobs from PostgreSQL.

The loop, per campaign:

1. claim one due contact and let the gate decide, in one short transaction
   (:meth:`agi.outbound.claims.Claims.claim_next`: pacing, max concurrent, snapshot
   freshness, consent, lists, hours, attempts, caller ID; a ``dial_attempt`` row either way);
2. if allowed, send one ``Originate`` (``Async: true``, ``ActionID`` and ``ChannelId`` both
   ``consent-<attempt id>``, ``Context: consent-outbound``, ``Exten: s``, ``Priority: 1``,
   ``CONSENT_CAMPAIGN``/``CONSENT_ATTEMPT`` channel variables, the campaign's caller ID and at
   least the profile's minimum ring time);
3. ``OriginateResponse`` (matched by ActionID) says answered or failed; the ``Hangup`` event of
   the channel (its Uniqueid is our ChannelId) ends the attempt; the contact's lease is renewed
   while the call lasts and no row lock is held.

AMI loss never repeats an Originate: panoramisk would re-send unanswered actions after a
reconnect, so ``originate`` is in its forgettable actions, and after logging in again the
dialer asks Asterisk which of its channels are still up (``CoreShowChannels``).  A call still
up is followed to its hang-up; one that is gone and was never reported is closed as
``unknown`` -- counted as an attempt, retried only under the campaign's attempt rules.
Originates not yet sent wait for the new session: nothing is lost.

Metrics (:mod:`agi.ops.metrics`): every gate decision by reason; every Originate once as ``sent``
(which drives the achieved calls per second) and once more by how it ended (``answered``;
``failed``: busy, no answer, congestion; ``rejected`` by Asterisk; ``unknown``: the outcome
was lost with the AMI session); the AMI session state and its reconnects; the calls in
flight (ringing or up) as concurrent channels.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import structlog

from agi.ledger.ledger import DB_UNAVAILABLE
from agi.ops.logs import error_summary
from agi.ops.metrics import Metrics
from agi.ops.signals import wait_any
from agi.outbound.ami import AmiClient, AmiError
from agi.outbound.campaigns import Campaigns
from agi.outbound.claims import Claims
from agi.outbound.gate import JournalUnreadable, journal_opt_outs
from agi.outbound.model import DialJob
from agi.wire import variables as cv

__all__ = ["Dialer", "DialerConfig"]

log = structlog.get_logger("agi.outbound.dialer")

OUTBOUND_CONTEXT: Final = "consent-outbound"


@dataclass(slots=True)
class _Call:
    job: DialJob
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    answered: bool = False
    uncertain: bool = False
    state: str = "unknown"
    originate_reason: int | None = None
    hangup_cause: int | None = None
    uniqueid: str | None = None
    #: the Originate action went out on an AMI session
    sent: bool = False
    #: Asterisk refused the Originate action itself (no call was placed)
    rejected: bool = False
    #: the Originate's result is in the metrics (each Originate is counted once)
    counted: bool = False

    def finish(self, state: str) -> None:
        if not self.finished.is_set():
            self.state = state
            self.finished.set()


@dataclass(frozen=True, slots=True)
class DialerConfig:
    worker: str = field(default_factory=lambda: f"{socket.gethostname()}-dialer")
    journal_dir: Path = Path("var/journal")
    lease: timedelta = timedelta(minutes=2)
    poll_s: float = 1.0
    #: longest a call may last before the dialer stops waiting for its hang-up
    max_call_s: float = 3600.0
    #: ``dial`` stops at a campaign-level block (stale list); the worker waits instead
    exit_on_block: bool = True
    #: stop when nothing is left to dial (``dial``); the worker keeps polling
    exit_when_done: bool = True


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except ValueError:
        return None


class Dialer:
    """Claims, gates and originates; follows every call to its end.

    ``campaigns`` says which campaigns to dial; ``claims`` holds the dial jobs.
    """

    def __init__(self, campaigns: Campaigns, claims: Claims, ami: AmiClient,
                 config: DialerConfig, *, metrics: Metrics | None = None) -> None:
        self.campaigns = campaigns
        self.claims = claims
        self.ami = ami
        self.config = config
        self.calls: dict[str, _Call] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Event()
        #: the process's metrics; a private instance when none is passed (tests, tools)
        self._metrics = metrics if metrics is not None else Metrics()
        ami.on_event = self._on_event
        ami.on_disconnect = self._on_disconnect
        ami.on_login = self._on_login
        # The first login usually happened before this dialer took the callbacks over.
        self.metrics.ami_connected(ami.ready)
        self.metrics.watch_channels(lambda: self.channels)

    @property
    def metrics(self) -> Metrics:
        return self._metrics

    @property
    def channels(self) -> int:
        """Calls placed and not yet over (ringing or up): the concurrent channels."""
        return sum(1 for c in self.calls.values() if not c.finished.is_set())

    def _count_result(self, call: _Call, result: str) -> None:
        if not call.counted:
            call.counted = True
            self.metrics.dial_originated(result)

    def _count_final(self, call: _Call) -> None:
        if call.answered:
            result = "answered"
        elif call.rejected:
            result = "rejected"
        elif call.state == "failed":
            result = "failed"  # busy, no answer, congestion (the reason is in dial_attempt)
        else:
            result = "unknown"
        self._count_result(call, result)

    # ----------------------------------------------------------------- AMI events

    def _on_event(self, name: str, ev: dict[str, str]) -> None:
        if name == "Hangup":
            call = self.calls.get(ev.get("Uniqueid", ""))
            if call is not None:
                call.hangup_cause = _int(ev.get("Cause"))
                call.finish("completed" if call.answered else "failed")
        elif name == "OriginateResponse":
            # Only after a reconnect: the action's own future belonged to the old session.
            call = self.calls.get(ev.get("ActionID", ""))
            if call is not None:
                self._originate_response(call, ev)

    def _originate_response(self, call: _Call, ev: dict[str, str]) -> None:
        call.originate_reason = _int(ev.get("Reason"))
        if ev.get("Uniqueid") not in (None, "", "<null>"):
            call.uniqueid = ev["Uniqueid"]
        if ev.get("Response") == "Success":
            if not call.answered:
                call.answered = True
                self._count_result(call, "answered")
                self._spawn(self._mark_answered(call))
        else:
            call.finish("failed")

    async def _mark_answered(self, call: _Call) -> None:
        try:
            await self.claims.mark_answered(call.job.attempt_id, call.uniqueid)
        except Exception as exc:  # noqa: BLE001 -- the hang-up will still close it
            log.warning("dial_answer_not_stored", error=error_summary(exc))

    def _on_disconnect(self) -> None:
        self.metrics.ami_connected(False)
        for call in self.calls.values():
            call.uncertain = True

    def _on_login(self, reconnect: bool) -> None:
        self.metrics.ami_connected(True, reconnect=reconnect)
        if reconnect:
            self._spawn(self._reconcile())
        self._changed.set()

    async def _reconcile(self) -> None:
        """After AMI came back: which of our calls are still up?  Close the ones that are not."""
        uncertain = [c for c in self.calls.values() if c.uncertain and not c.finished.is_set()]
        if not uncertain:
            return
        try:
            live = await self.ami.live_channels()
        except (AmiError, TimeoutError) as exc:
            log.warning("ami_reconcile_failed", error=str(exc))
            return  # still uncertain; the next login tries again
        for call in uncertain:
            if call.job.action_id in live:
                call.uncertain = False  # still there: its Hangup will come on this session
                if live[call.job.action_id] == "Up" and not call.answered:
                    call.answered = True  # the OriginateResponse was lost with the session
                    self._count_result(call, "answered")
                    self._spawn(self._mark_answered(call))
                log.info("dial_call_survived_ami_loss", attempt=call.job.attempt_id)
            else:
                log.warning("dial_outcome_lost", attempt=call.job.attempt_id,
                            answered=call.answered)
                call.finish("completed" if call.answered else "unknown")

    # ----------------------------------------------------------------- calls

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _originate_fields(self, job: DialJob) -> dict[str, Any]:
        return {
            "Action": "Originate",
            "ActionID": job.action_id,
            "ChannelId": job.action_id,
            "Channel": job.dial_string,
            "Context": OUTBOUND_CONTEXT,
            "Exten": "s",
            "Priority": "1",
            "CallerID": f'"{job.organisation}" <{job.caller_id}>'.replace("\r", "").replace(
                "\n", ""),
            "Timeout": str(job.ring_seconds * 1000),
            "Async": "true",
            "Variable": [
                f"{cv.CONSENT_CAMPAIGN}={job.campaign_id}",
                f"{cv.CONSENT_ATTEMPT}={job.attempt_id}",
            ],
        }

    async def _place(self, job: DialJob) -> None:
        call = _Call(job)
        self.calls[job.action_id] = call
        try:
            # Not sent yet, so nothing to lose: wait for an AMI session, however long.
            while not self.ami.ready:
                await self.ami.wait_ready()
            future = self.ami.originate(self._originate_fields(job))
            call.sent = True
            self.metrics.dial_originated("sent")
            log.info("dial_originated", attempt=job.attempt_id, number=job.number_e164,
                     attempt_no=job.attempt_no)
            future.add_done_callback(lambda f: self._originate_done(call, f))
            timeout = job.ring_seconds + self.config.max_call_s
            try:
                await asyncio.wait_for(call.finished.wait(), timeout)
            except TimeoutError:
                call.uncertain = True
                await self._reconcile()
                call.finish("unknown")
        finally:
            if call.sent:
                self._count_final(call)
            await self._close_attempt(call)
            self.calls.pop(job.action_id, None)
            self._changed.set()

    def _originate_done(self, call: _Call, future: asyncio.Future[Any]) -> None:
        if future.cancelled() or future.exception() is not None:
            return
        result = future.result()
        if isinstance(result, list):
            self._originate_response(call, {str(k): str(v) for k, v in result[-1].items()})
            return
        # A single message: Asterisk refused the Originate outright (e.g. bad channel).
        if result.get("Response") != "Success":
            log.warning("dial_originate_rejected", attempt=call.job.attempt_id,
                        message=str(result.get("Message")))
            call.rejected = True
            call.finish("failed")

    async def _close_attempt(self, call: _Call) -> None:
        for delay in (0.0, 0.5, 2.0, 5.0):
            await asyncio.sleep(delay)
            try:
                state = await self.claims.finish_attempt(
                    call.job.attempt_id,
                    call.state,
                    originate_reason=call.originate_reason,
                    hangup_cause=call.hangup_cause,
                    uniqueid=call.uniqueid,
                )
                log.info("dial_attempt_finished", attempt=call.job.attempt_id,
                         state=call.state, contact_state=state)
                return
            except DB_UNAVAILABLE as exc:
                log.warning("dial_attempt_not_closed", error=error_summary(exc))
        # The lease runs out and the reaper closes it as unknown.

    async def _heartbeat(self, stop: asyncio.Event) -> None:
        interval = max(self.config.lease.total_seconds() / 3, 0.05)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
            ids = [c.job.contact_id for c in self.calls.values()]
            try:
                await self.claims.renew_leases(ids, self.config.worker, self.config.lease)
            except DB_UNAVAILABLE as exc:
                log.warning("dial_lease_not_renewed", error=error_summary(exc))

    # ----------------------------------------------------------------- the loop

    async def _pause(self, seconds: float, stop: asyncio.Event) -> None:
        self._changed.clear()
        await wait_any(stop, self._changed, timeout=max(seconds, 0.0))

    async def run_campaign(self, campaign_id: int, stop: asyncio.Event | None = None) -> str:
        """Dial one campaign until it is done (or blocked, halted, stopped). Returns why."""
        stop = stop or asyncio.Event()
        campaign = await self.campaigns.require_campaign(campaign_id)
        beat_stop = asyncio.Event()
        beat = asyncio.get_running_loop().create_task(self._heartbeat(beat_stop))
        why = "stopped"
        try:
            why = await self._loop(campaign.id, campaign.organisation, stop)
        finally:
            if self._tasks:
                log.info("dialer_waiting_for_calls", calls=len(self.calls))
                await asyncio.gather(*list(self._tasks), return_exceptions=True)
            beat_stop.set()
            await beat
        log.info("dialer_finished", campaign=campaign.name, why=why)
        return why

    async def _loop(self, campaign_id: int, organisation: str, stop: asyncio.Event) -> str:
        cfg = self.config
        while not stop.is_set():
            if not self.ami.ready:
                await self.ami.wait_ready(cfg.poll_s)
                continue
            try:
                await self.claims.reap_expired(campaign_id)
                journal = await asyncio.to_thread(journal_opt_outs, cfg.journal_dir,
                                                  organisation)
                claim = await self.claims.claim_next(
                    campaign_id, cfg.worker, cfg.lease, sorted(journal)
                )
            except JournalUnreadable as exc:
                log.error("dialer_journal_unreadable", error=str(exc))
                await self._pause(cfg.poll_s, stop)
                continue
            except DB_UNAVAILABLE as exc:
                log.warning("dialer_database_unavailable", error=error_summary(exc))
                await self._pause(cfg.poll_s, stop)
                continue
            if claim.decision is not None:
                self.metrics.dial_decision(claim.decision.allowed, claim.decision.reason)
            if claim.kind == "dial":
                assert claim.job is not None
                self._spawn(self._place(claim.job))
            elif claim.kind == "refused":
                continue
            elif claim.kind == "blocked":
                assert claim.decision is not None
                log.error("dialling_blocked", reason=claim.decision.reason,
                          detail=claim.decision.detail)
                if cfg.exit_on_block:
                    return f"blocked: {claim.decision.reason} ({claim.decision.detail})"
                await self._pause(cfg.poll_s * 10, stop)
            elif claim.kind in ("halted", "paused"):
                if cfg.exit_on_block:
                    return claim.kind
                await self._pause(cfg.poll_s * 10, stop)
            elif claim.kind == "busy":
                await self._pause(cfg.poll_s, stop)
            elif claim.kind == "wait":
                await self._pause(claim.wait_s, stop)
            else:  # idle
                if claim.next_due is None and claim.in_flight == 0 and not self.calls:
                    if cfg.exit_when_done:
                        return "done"
                    await self._pause(cfg.poll_s, stop)
                    continue
                delay = cfg.poll_s
                if claim.next_due is not None:
                    delay = min(delay, max(
                        (claim.next_due - datetime.now(UTC)).total_seconds(), 0.01))
                await self._pause(delay, stop)
        return "stopped"

    async def run_all(self, stop: asyncio.Event) -> None:
        """The long-running worker: every active campaign, concurrently, until ``stop``."""
        running: dict[int, asyncio.Task[str]] = {}
        while not stop.is_set():
            try:
                campaigns = await self.campaigns.active_campaigns()
            except DB_UNAVAILABLE as exc:
                log.warning("dialer_database_unavailable", error=error_summary(exc))
                campaigns = []
            for c in campaigns:
                task = running.get(c.id)
                if task is None or task.done():
                    running[c.id] = asyncio.get_running_loop().create_task(
                        self.run_campaign(c.id, stop))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.config.poll_s * 10)
        await asyncio.gather(*running.values(), return_exceptions=True)
