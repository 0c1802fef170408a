"""The tests' fake Asterisk: a strict model of Asterisk 22.10.1's side of FastAGI.

The implementation lives in :mod:`agi.testing.fakeasterisk` because ``consent-ivr simulate-call``
and the benchmarks drive the server with the same, conformance-proven fake
(``tests/conformance`` replays all 30 real-Asterisk transcripts against it).
"""

from agi.testing.fakeasterisk import (
    HANGUP,
    R_511,
    SILENCE,
    CallRecord,
    FakeAsterisk,
    FakeAsteriskError,
    PromptPlay,
)
from agi.testing.res_agi import ENV_ORDER, USAGE, find_command, parse_args, parse_command_line
from agi.testing.sounds import DEFAULT_SOUNDS

#: a caller who opts in: 1 at the question, silent while the purpose's statement plays whole,
#: 1 at the confirmation (a second 1 straight away lands in the statement and is ignored)
OPT_IN = ("1", SILENCE, "1")

__all__ = [
    "DEFAULT_SOUNDS",
    "ENV_ORDER",
    "HANGUP",
    "OPT_IN",
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
