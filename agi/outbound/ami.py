"""The AMI session the dialer originates on: panoramisk's ``Manager``, logged in, reconnecting.

This is the only module that imports panoramisk.  panoramisk would re-send unanswered actions
after a reconnect, so ``originate`` is among its forgettable actions: an Originate goes out at
most once, and after a reconnect the dialer asks Asterisk what is still up
(:meth:`AmiClient.live_channels`) instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Final

import structlog
from panoramisk import Manager

__all__ = ["AmiClient", "AmiError"]

log = structlog.get_logger("agi.outbound.ami")

#: Actions panoramisk must never re-send on its own after a reconnect.
_FORGETTABLE: Final = ("ping", "login", "logoff", "originate", "coreshowchannels")


class AmiError(Exception):
    """AMI unreachable, login refused, or an action failed."""


class AmiClient:
    """A logged-in AMI session (panoramisk ``Manager``) that survives reconnects."""

    def __init__(
        self,
        host: str,
        port: int,
        username: str,
        secret: str,
        *,
        reconnect_timeout: int = 1,
        ping_delay: int = 10,
    ) -> None:
        self.host = host
        self.port = port
        self._username = username
        self._secret = secret
        self._reconnect_timeout = reconnect_timeout
        self._ping_delay = ping_delay
        self.manager: Any = None
        self._ready = asyncio.Event()
        self._closing = False
        self.logins = 0
        #: set by the dialer
        self.on_login: Callable[[bool], None] = lambda reconnect: None
        self.on_disconnect: Callable[[], None] = lambda: None
        self.on_event: Callable[[str, dict[str, str]], None] = lambda name, ev: None

    @property
    def ready(self) -> bool:
        return self._ready.is_set() and self._protocol_open()

    def _protocol_open(self) -> bool:
        protocol = getattr(self.manager, "protocol", None)
        return protocol is not None and not getattr(protocol, "closed", True)

    async def wait_ready(self, within: float | None = None) -> bool:
        """Wait until logged in on an open connection; False after ``within`` seconds."""
        try:
            async with asyncio.timeout(within):
                while not self.ready:
                    if self._ready.is_set():  # closed, the disconnect callback is pending
                        await asyncio.sleep(0.05)
                    else:
                        await self._ready.wait()
            return True
        except TimeoutError:
            return False

    async def connect(self, within: float = 10.0) -> None:
        """Connect and log in; raise :class:`AmiError` if that does not happen in time."""
        loop = asyncio.get_running_loop()
        self.manager = Manager(
            loop=loop,
            host=self.host,
            port=self.port,
            username=self._username,
            secret=self._secret,
            events="on",
            reconnect_timeout=self._reconnect_timeout,
            ping_delay=self._ping_delay,
            ping_interval=self._ping_delay,
            forgetable_actions=_FORGETTABLE,
            on_login=self._logged_in,
            on_disconnect=self._disconnected,
        )
        for name in ("Hangup", "OriginateResponse"):
            self.manager.register_event(name, self._event)
        self.manager.connect()
        if not await self.wait_ready(within):
            await self.close()
            raise AmiError(f"could not log in to AMI at {self.host}:{self.port} as "
                           f"{self._username!r} within {within:.0f}s")

    def _logged_in(self, manager: Any) -> None:
        if self._closing:
            manager.close()
            return
        self.logins += 1
        self._ready.set()
        log.info("ami_logged_in", host=self.host, port=self.port, session=self.logins)
        self.on_login(self.logins > 1)

    def _disconnected(self, manager: Any, exc: Any) -> None:
        self._ready.clear()
        if not self._closing:
            log.warning("ami_disconnected", host=self.host, port=self.port)
            self.on_disconnect()

    def _event(self, manager: Any, message: Any) -> None:
        data = {str(k): str(v) for k, v in message.items()}
        name = data.get("Event", "")
        # Let a pending action's future (OriginateResponse in the same read) settle first.
        asyncio.get_running_loop().call_soon(self.on_event, name, data)

    def originate(self, fields: dict[str, Any]) -> asyncio.Future[Any]:
        """Send one Originate now (the caller checked :attr:`ready`); its panoramisk future."""
        if not self.ready:
            raise AmiError("AMI session not ready")
        future: asyncio.Future[Any] = self.manager.send_action(dict(fields))
        return future

    async def live_channels(self, within: float = 10.0) -> dict[str, str]:
        """Every channel Asterisk has now (``CoreShowChannels``): Uniqueid → state (Up…)."""
        if not self.ready:
            raise AmiError("AMI session not ready")
        async with asyncio.timeout(within):
            result = await self.manager.send_action({"Action": "CoreShowChannels"})
        messages = result if isinstance(result, list) else [result]
        if messages and messages[0].get("Response") == "Error":
            raise AmiError(f"CoreShowChannels failed: {messages[0].get('Message')}")
        return {
            str(m.get("Uniqueid")): str(m.get("ChannelStateDesc", ""))
            for m in messages
            if m.get("Event") == "CoreShowChannel" and m.get("Uniqueid")
        }

    async def close(self) -> None:
        self._closing = True
        self._ready.clear()
        if self.manager is not None:
            self.manager.close()

