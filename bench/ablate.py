"""``python -m bench.ablate FEATURE...``: ``consent-ivr serve`` with parts taken out.

For the benchmark's ``instructions`` part only, to measure what each part of a call
costs by taking it away (never a way to run the product):

* ``call-sessions`` — no ``call_session`` bookkeeping (agi.ledger.decisions.CallSessions queues
  nothing, so its flushes write nothing).

Logs are taken out without this module: ``CONSENT_IVR_LOG_LEVEL=warning`` drops the
two INFO lines a call writes before any work is done for them.
"""

from __future__ import annotations

import sys
from typing import Any

FEATURES = ("call-sessions",)


def _no_call_sessions() -> None:
    from agi.ledger.sessions import CallSessions

    def nothing(self: Any, *args: Any) -> None:
        return None

    CallSessions.started = nothing  # type: ignore[method-assign]
    CallSessions.finished = nothing  # type: ignore[method-assign]


def main(argv: list[str]) -> int:
    unknown = [f for f in argv if f not in FEATURES]
    if unknown or not argv:
        print(f"usage: python -m bench.ablate {{{','.join(FEATURES)}}}...", file=sys.stderr)
        return 2
    if "call-sessions" in argv:
        _no_call_sessions()
    from agi.cli.main import main as cli_main

    return cli_main(["serve"])


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
