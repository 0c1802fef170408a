"""``python -m bench.spyreport FILE...``: a py-spy recording of ``serve``, itemised.

py-spy's raw format (``--format raw``) is one line per distinct stack, ``frame;frame;...
count``. Each sample is put in the one component that owns it, by the first rule below that
matches its stack, and the table gives each component's share of all samples. The rules
read the innermost frame (where the time was spent) except for call bookkeeping, which owns
everything under it (its database writes included), so that an ablation and this table
measure the same thing.

Written by ``--sessions-profile DIR`` (part 1, 200 channels) and ``--pbx-profile DIR``
(part 6).
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

#: (component, where it is: a frame's file or function contains one of these), in order
_OWNER_ANYWHERE = (
    ("call bookkeeping (call_session rows)", ("agi/ledger/sessions.py",)),
)
_INNERMOST = (
    ("write system call, one per AGI command", ("AGIStream.write ",)),
    ("event loop: uvloop, libuv, the kernel's epoll and reads", ("Runner.run ", "asyncio/")),
    # (abc: the isinstance checks asyncpg's array encoder makes, ~77 a session)
    ("asyncpg: statements, encoding, the pool", ("asyncpg/", "<frozen abc>")),
    ("the call_finished log line: structlog, masking, JSON", (
        "structlog/", "agi/ops/logs.py", "json/", "logging/")),
    ("metrics", ("agi/ops/metrics.py", "prometheus_client/")),
    ("ledger: group commit, evidence JSON, journal", ("agi/ledger/",)),
    ("AGI wire: env block, reply parsing, deadlines", ("agi/wire/protocol.py",)),
    ("AGI channel: one coroutine step per command", ("agi/wire/channel.py",)),
    ("server: accept, token, route, the Call", ("agi/server/",)),
    ("flows: consent and marketing dialogue, prompts heard", ("agi/calls/",)),
)


def itemise(lines: Iterable[str]) -> tuple[int, list[tuple[str, int]]]:
    """(all samples, [(component, samples)] largest first) of raw py-spy lines."""
    counts: Counter[str] = Counter()
    total = 0
    for line in lines:
        stack, _, n = line.rstrip("\n").rpartition(" ")
        if not stack or not n.isdigit():
            continue
        total += int(n)
        counts[_component(stack.split(";"))] += int(n)
    return total, counts.most_common()


def _component(frames: list[str]) -> str:
    for name, needles in _OWNER_ANYWHERE:
        if any(needle in frame for frame in frames for needle in needles):
            return name
    innermost = frames[-1] + " "
    for name, needles in _INNERMOST:
        if any(needle in innermost for needle in needles):
            return name
    return "other (CPython internals, dataclasses, the standard library)"


def report(path: Path) -> str:
    total, parts = itemise(path.read_text(errors="replace").splitlines())
    rows = [f"{path}: {total} samples"]
    rows += [f"  {100 * n / total:5.1f} %  {name}" for name, n in parts] if total else []
    return "\n".join(rows)


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m bench.spyreport FILE...", file=sys.stderr)
        return 2
    for arg in argv:
        try:
            print(report(Path(arg)))
        except OSError as exc:
            print(f"{arg}: cannot read it: {exc.strerror}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
