"""One deadline rule for every command that plays a prompt (issue 15: it had drifted)."""

from agi.calls.prompts import Prompt


def _prompt(samples: int) -> Prompt:
    return Prompt("identify", "en", "Hello.", "identify.wav", "a" * 64, samples)


def test_deadline_is_what_is_left_plus_slack() -> None:
    assert _prompt(80_000).deadline_s() == 40.0
    assert _prompt(80_000).deadline_s(40_000) == 35.0
    assert _prompt(80_000).deadline_s(90_000) == 30.0  # past the end: never negative


def test_unknown_length_gets_the_long_deadline() -> None:
    assert _prompt(0).deadline_s() == 600.0 == _prompt(0).deadline_s(8000)


def test_heard_record_carries_the_lengths() -> None:
    whole = _prompt(80_000).heard()
    assert (whole.heard_ms, whole.length_ms, whole.heard_in_full) == (10_000, 10_000, True)
    cut = _prompt(80_000).heard(interrupted=True, endpos=24_000)
    assert (cut.heard_ms, cut.length_ms, cut.heard_in_full) == (3_000, 10_000, False)
    unknown = _prompt(0).heard()
    assert (unknown.heard_ms, unknown.length_ms, unknown.heard_in_full) == (None, None, None)
