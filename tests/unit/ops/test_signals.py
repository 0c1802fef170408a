"""One signal asks for a drain, the second for an immediate stop, later ones change nothing."""

from agi.ops.signals import StopSignals


async def test_first_signal_requests_second_means_now() -> None:
    signals = StopSignals()
    assert not signals.requested.is_set() and not signals.now.is_set()
    signals.received("SIGTERM")
    assert signals.requested.is_set() and not signals.now.is_set()
    signals.received("SIGINT")
    assert signals.now.is_set()
    signals.received("SIGINT")  # a third: nothing more to do, nothing breaks
    assert signals.requested.is_set() and signals.now.is_set()
