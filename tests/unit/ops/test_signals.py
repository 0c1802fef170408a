"""One signal asks for a drain, the second for an immediate stop, later ones change nothing."""

import asyncio

from agi.ops.signals import StopSignals, wait_any


async def test_first_signal_requests_second_means_now() -> None:
    signals = StopSignals()
    assert not signals.requested.is_set() and not signals.now.is_set()
    signals.received("SIGTERM")
    assert signals.requested.is_set() and not signals.now.is_set()
    signals.received("SIGINT")
    assert signals.now.is_set()
    signals.received("SIGINT")  # a third: nothing more to do, nothing breaks
    assert signals.requested.is_set() and signals.now.is_set()


async def test_wait_any_returns_on_the_first_event_or_the_timeout_and_leaves_no_task() -> None:
    stop, work = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.call_later(0.01, work.set)
    before = len(asyncio.all_tasks())
    await asyncio.wait_for(wait_any(stop, work), 5)
    assert work.is_set() and not stop.is_set()
    idle = asyncio.Event()
    await asyncio.wait_for(wait_any(stop, idle, timeout=0.01), 5)  # neither set: the timeout
    assert not stop.is_set() and not idle.is_set()
    await asyncio.sleep(0)  # the cancelled waits finish
    assert len(asyncio.all_tasks()) == before
