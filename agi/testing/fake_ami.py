"""A fake Asterisk Manager Interface speaking the real AMI protocol over TCP.

What crosses the wire is what Asterisk sends (``Asterisk Call Manager/9.0.0`` banner,
``Response: Success``/``Error`` blocks ending in a blank line, ``Event:`` blocks), for the
actions the dialer uses:

* ``Login`` (``Message: Authentication accepted`` then ``Event: FullyBooted``) / ``Logoff``;
* ``Ping`` (``Ping: Pong``);
* ``Originate`` with ``Async: true``: ``Message: Originate successfully queued``, then
  ``Newchannel``, ``OriginateResponse`` (``Response: Success`` / ``Failure`` with ``Reason``)
  and ``Hangup`` (``Cause``) as the call goes;
* ``CoreShowChannels``: ``EventList: start``, one ``CoreShowChannel`` per live channel,
  ``CoreShowChannelsComplete``.

Channels belong to the fake "Asterisk", not to a connection: they live on while the manager
connection drops (events sent while nobody is connected are lost, as with real Asterisk), and
``CoreShowChannels`` on the next session lists them.  Tests script each number's fate with
``outcome`` and can hold answered calls up (``hold``), drop the connection at chosen moments,
refuse new manager connections for a while (``accepting``), and read every Originate received
(``originates``) and every event emitted (``events``).

:class:`OutboundDialplan` is an ``on_answer`` hook that plays the ``consent-outbound`` context
of ``dialplan/extensions_consent.conf``: it runs the marketing AGI for the answered channel,
as a strict fake Asterisk (:class:`agi.testing.fakeasterisk.FakeAsterisk`) over real TCP.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from agi.testing.fakeasterisk import CallRecord, FakeAsterisk

EOL = "\r\n"
BANNER = "Asterisk Call Manager/9.0.0\r\n"

# OriginateResponse Reason codes (enum ast_control_frame_type as AMI reports them)
REASON_NO_ANSWER = 3
REASON_ANSWERED = 4
REASON_BUSY = 5
REASON_CONGESTION = 8
CAUSES = {"answer": (16, "Normal Clearing"), "busy": (17, "User busy"),
          "noanswer": (19, "No answer"), "congestion": (34, "Circuit/channel congestion")}
REASONS = {"busy": REASON_BUSY, "noanswer": REASON_NO_ANSWER, "congestion": REASON_CONGESTION}


def encode(pairs: list[tuple[str, str]]) -> bytes:
    return ("".join(f"{k}: {v}{EOL}" for k, v in pairs) + EOL).encode()


@dataclass
class FakeChannel:
    uniqueid: str
    name: str
    number: str
    action_id: str
    variables: dict[str, str]
    answered: bool = False
    #: the Originate's CallerID header (what the callee's phone shows)
    caller_id: str = ""


@dataclass
class Originate:
    """One Originate as received (all headers; ``Variable`` as a list)."""

    headers: dict[str, Any]
    number: str
    session: int


@dataclass
class FakeAMI:
    username: str = "consent-dialer"
    secret: str = "s3cret-s3cret"  # noqa: S105 - the fake's own test login
    #: number → "answer" | "busy" | "noanswer" | "congestion"
    outcome: Callable[[str], str] = lambda number: "answer"
    #: awaited when a channel answers (e.g. run the marketing route for it)
    on_answer: Callable[[FakeChannel], Awaitable[None]] | None = None
    #: answered calls stay up until this is set (None: hang up at once after on_answer)
    hold: asyncio.Event | None = None
    #: drop the connection when the Nth Originate (1-based) arrives: "before_ack" (Asterisk
    #: got it and places the call) or "lost" (it never reached Asterisk)
    drop_on_originate: dict[int, str] = field(default_factory=dict)
    originates: list[Originate] = field(default_factory=list)
    #: every event emitted, in order (also those lost because nobody was connected)
    events: list[dict[str, str]] = field(default_factory=list)
    #: False: new manager connections are closed at once (Asterisk restarting)
    accepting: bool = True
    channels: dict[str, FakeChannel] = field(default_factory=dict)
    logins: int = 0
    events_lost: int = 0
    port: int = 0

    def __post_init__(self) -> None:
        self._server: asyncio.Server | None = None
        self._writers: dict[int, asyncio.StreamWriter] = {}
        self._session_ids = itertools.count(1)
        self._chan_ids = itertools.count(1)
        self._tasks: set[asyncio.Task[None]] = set()
        self.channels_changed = asyncio.Event()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> FakeAMI:
        self._server = await asyncio.start_server(self._session, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self.hold is not None:
            self.hold.set()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.drop()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def drop(self) -> None:
        """Cut every manager connection (Asterisk keeps its channels)."""
        for writer in list(self._writers.values()):
            writer.close()
        self._writers.clear()

    @property
    def connected(self) -> int:
        return len(self._writers)

    def numbers_originated(self) -> list[str]:
        return [o.number for o in self.originates]

    def events_named(self, name: str) -> list[dict[str, str]]:
        return [e for e in self.events if e.get("Event") == name]

    # ------------------------------------------------------------------ wire

    def _send_event(self, pairs: list[tuple[str, str]]) -> None:
        self.events.append(dict(pairs))
        if not self._writers:
            self.events_lost += 1
            return
        for writer in self._writers.values():
            writer.write(encode(pairs))

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.accepting:
            writer.close()
            return
        session = next(self._session_ids)
        logged_in = False
        writer.write(BANNER.encode())
        try:
            while True:
                block = await reader.readuntil(b"\r\n\r\n")
                msg = self._parse(block.decode())
                action = str(msg.get("Action", "")).lower()
                aid = str(msg.get("ActionID", ""))
                head = [("Response", "Success"), ("ActionID", aid)] if aid else [
                    ("Response", "Success")]
                if action == "login":
                    if msg.get("Username") == self.username and msg.get("Secret") == self.secret:
                        logged_in = True
                        self.logins += 1
                        self._writers[session] = writer
                        writer.write(encode([*head, ("Message", "Authentication accepted")]))
                        writer.write(encode([("Event", "FullyBooted"),
                                             ("Privilege", "system,all"),
                                             ("Uptime", "100"), ("LastReload", "100"),
                                             ("Status", "Fully Booted")]))
                    else:
                        writer.write(encode([("Response", "Error"), ("ActionID", aid),
                                             ("Message", "Authentication failed")]))
                    continue
                if not logged_in:
                    writer.write(encode([("Response", "Error"), ("ActionID", aid),
                                         ("Message", "Permission denied")]))
                    continue
                if action == "ping":
                    writer.write(encode([*head, ("Ping", "Pong"),
                                         ("Timestamp", "1700000000.000000")]))
                elif action == "logoff":
                    writer.write(encode([("Response", "Goodbye"), ("ActionID", aid),
                                         ("Message", "Thanks for all the fish.")]))
                    break
                elif action == "originate":
                    if not self._originate(msg, session, writer, head):
                        break
                elif action == "coreshowchannels":
                    writer.write(encode([*head, ("EventList", "start"),
                                         ("Message", "Channels will follow")]))
                    for ch in self.channels.values():
                        writer.write(encode([
                            ("Event", "CoreShowChannel"), ("ActionID", aid),
                            ("Channel", ch.name), ("Uniqueid", ch.uniqueid),
                            ("ChannelState", "6" if ch.answered else "5"),
                            ("ChannelStateDesc", "Up" if ch.answered else "Ringing"),
                            ("Context", "consent-outbound"), ("Exten", "s"),
                        ]))
                    writer.write(encode([
                        ("Event", "CoreShowChannelsComplete"), ("ActionID", aid),
                        ("EventList", "Complete"), ("ListItems", str(len(self.channels))),
                    ]))
                else:
                    writer.write(encode([("Response", "Error"), ("ActionID", aid),
                                         ("Message", "Invalid/unknown command")]))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            if self._writers.get(session) is writer:
                del self._writers[session]
            writer.close()

    @staticmethod
    def _parse(block: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for line in block.split(EOL):
            if ": " not in line:
                continue
            key, value = line.split(": ", 1)
            if key == "Variable":
                out.setdefault("Variable", []).append(value)
            else:
                out[key] = value
        return out

    def _originate(self, msg: dict[str, Any], session: int, writer: asyncio.StreamWriter,
                   head: list[tuple[str, str]]) -> bool:
        """Handle one Originate; False when the connection is to be dropped now."""
        channel = str(msg.get("Channel", ""))
        number = channel.split("/", 1)[-1].split("@", 1)[0]
        self.originates.append(Originate(dict(msg), number, session))
        drop = self.drop_on_originate.get(len(self.originates))
        if drop == "lost":
            self.originates[-1].headers["_lost"] = True
            return False
        required = ("Channel", "Context", "Exten", "Priority")
        if any(not msg.get(k) for k in required) or str(msg.get("Async")).lower() != "true":
            writer.write(encode([("Response", "Error"), ("ActionID", head[-1][1]),
                                 ("Message", "Originate failed")]))
            return True
        if drop != "before_ack":
            writer.write(encode([*head, ("Message", "Originate successfully queued")]))
        variables = dict(v.split("=", 1) for v in msg.get("Variable", []))
        seq = next(self._chan_ids)
        trunk = channel.split("@", 1)[-1] if "@" in channel else "trunk"
        ch = FakeChannel(
            uniqueid=str(msg.get("ChannelId") or f"1700000000.{seq}"),
            name=f"{channel.split('/', 1)[0]}/{trunk}-{seq:08x}",
            number=number,
            action_id=str(msg.get("ActionID", "")),
            variables=variables,
            caller_id=str(msg.get("CallerID", "")),
        )
        self.channels[ch.uniqueid] = ch
        task = asyncio.get_running_loop().create_task(self._call(ch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return drop != "before_ack"

    async def _call(self, ch: FakeChannel) -> None:
        self._send_event([("Event", "Newchannel"), ("Channel", ch.name),
                          ("ChannelState", "0"), ("ChannelStateDesc", "Down"),
                          ("Uniqueid", ch.uniqueid), ("Linkedid", ch.uniqueid)])
        await asyncio.sleep(0.005)
        fate = self.outcome(ch.number)
        cause, cause_txt = CAUSES[fate]
        if fate == "answer":
            ch.answered = True
            self._send_event([("Event", "OriginateResponse"), ("ActionID", ch.action_id),
                              ("Response", "Success"), ("Channel", ch.name),
                              ("Context", "consent-outbound"), ("Exten", "s"),
                              ("Reason", str(REASON_ANSWERED)), ("Uniqueid", ch.uniqueid),
                              ("CallerIDNum", "<unknown>"), ("CallerIDName", "<unknown>")])
            self.channels_changed.set()
            if self.on_answer is not None:
                await self.on_answer(ch)
            if self.hold is not None:
                await self.hold.wait()
        await self._hangup(ch, cause, cause_txt)
        if fate != "answer":
            self._send_event([("Event", "OriginateResponse"), ("ActionID", ch.action_id),
                              ("Response", "Failure"), ("Channel", ch.name),
                              ("Context", "consent-outbound"), ("Exten", "s"),
                              ("Reason", str(REASONS[fate])), ("Uniqueid", "<null>")])

    async def _hangup(self, ch: FakeChannel, cause: int, cause_txt: str) -> None:
        self.channels.pop(ch.uniqueid, None)
        self._send_event([("Event", "Hangup"), ("Channel", ch.name), ("Uniqueid", ch.uniqueid),
                          ("Linkedid", ch.uniqueid), ("Cause", str(cause)),
                          ("Cause-txt", cause_txt)])
        self.channels_changed.set()
        with contextlib.suppress(Exception):
            for writer in self._writers.values():
                await writer.drain()


def _caller_id(header: str) -> tuple[str, str]:
    """``"Example Energy Ltd" <+442079460000>`` → (number, name)."""
    name, _, rest = header.rpartition("<")
    return rest.rstrip(">").strip(), name.strip().strip('"')


@dataclass
class OutboundDialplan:
    """``on_answer`` hook: the ``consent-outbound`` context for each answered channel.

    As ``dialplan/extensions_consent.conf`` does: no ``CONSENT_CAMPAIGN`` → no AGI (the
    dialplan goes to ``consent-fallback``); otherwise
    ``AGI(agi://host:port/marketing?campaign=${CONSENT_CAMPAIGN}&attempt=${CONSENT_ATTEMPT}
    &answered=1[&token=…])`` on the channel the fake AMI reported (same name and uniqueid as its
    ``Newchannel``/``OriginateResponse``/``Hangup`` events), with the presented caller ID.
    The callee's keys come from ``presses(number)``; ``records`` keeps each call's record by
    uniqueid.  The fake AMI emits the ``Hangup`` once the AGI is over.
    """

    agi_port: int
    agi_host: str = "127.0.0.1"
    token: str | None = None
    presses: Callable[[str], list[Any]] = lambda number: []
    #: awaited before the AGI starts (e.g. something happens while the phone rings)
    before_agi: Callable[[FakeChannel], Awaitable[None]] | None = None
    records: dict[str, CallRecord] = field(default_factory=dict)
    scripts: dict[str, str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    async def __call__(self, ch: FakeChannel) -> None:
        campaign = ch.variables.get("CONSENT_CAMPAIGN", "")
        attempt = ch.variables.get("CONSENT_ATTEMPT", "")
        if not campaign:
            self.skipped.append(ch.uniqueid)
            return
        if self.before_agi is not None:
            await self.before_agi(ch)
        script = f"marketing?campaign={campaign}&attempt={attempt}&answered=1"
        if self.token:
            script += f"&token={self.token}"
        number, name = _caller_id(ch.caller_id)
        self.scripts[ch.uniqueid] = script
        fake = FakeAsterisk(
            self.agi_host, self.agi_port, network_script=script, channel=ch.name,
            uniqueid=ch.uniqueid, callerid=number or "unknown", calleridname=name or "unknown",
            context="consent-outbound", extension="s", answered=True,
            variables={"CONSENT_CAMPAIGN": campaign, "CONSENT_ATTEMPT": attempt},
            presses=self.presses(ch.number),
        )
        self.records[ch.uniqueid] = await fake.run()
