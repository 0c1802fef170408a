"""The tests' fake Asterisk: a strict model of Asterisk 22.10.1's side of FastAGI.

The implementation lives in :mod:`agi.fakeasterisk` because ``consent-ivr simulate-call``
and the benchmarks drive the server with the same, conformance-proven fake
(``tests/conformance`` replays all 30 real-Asterisk transcripts against it).
"""

from agi.fakeasterisk import (
    DEFAULT_SOUNDS,
    ENV_ORDER,
    HANGUP,
    R_511,
    SILENCE,
    USAGE,
    CallRecord,
    FakeAsterisk,
    FakeAsteriskError,
    PromptPlay,
    find_command,
    parse_args,
    parse_command_line,
)

__all__ = [
    "DEFAULT_SOUNDS",
    "ENV_ORDER",
    "HANGUP",
    "R_511",
    "SILENCE",
    "USAGE",
    "CallRecord",
    "FakeAsterisk",
    "FakeAsteriskError",
    "PromptPlay",
    "find_command",
    "parse_args",
    "parse_command_line",
]
