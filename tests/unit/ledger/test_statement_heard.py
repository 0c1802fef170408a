"""What the evidence says of the purpose's statement, for every shape of stored prompts."""

from __future__ import annotations

from typing import Any

import pytest

from agi.ledger.records import statement_heard

S = "statement-marketing-calls"


def _p(prompt_id: str = S, **kw: Any) -> dict[str, Any]:
    return {"id": prompt_id, "lang": "en", "sha256": "a" * 64, "text": "…", **kw}


@pytest.mark.parametrize(("prompts", "said"), [
    ([_p(interrupted=False, heard_ms=16554, length_ms=16554)], "yes"),
    ([_p(interrupted=True, heard_ms=3000, length_ms=16554)], "no"),
    ([_p(interrupted=False, heard_ms=3000, length_ms=16554)], "no"),
    ([_p(interrupted=False)], "unknown"),  # recorded before lengths were kept
    ([_p(interrupted=True)], "no"),
    ([_p("question-marketing-calls", interrupted=True, heard_ms=10, length_ms=25000)],
     "not played"),
    ([], "not played"),  # an import, or an opt-out
    ([_p(interrupted=True, heard_ms=10, length_ms=16554),
      _p(interrupted=False, heard_ms=16554, length_ms=16554)], "yes"),  # heard whole once
    ([_p("statement-holidays", interrupted=False, heard_ms=5, length_ms=5)], "not played"),
])
def test_statement_heard(prompts: list[dict[str, Any]], said: str) -> None:
    assert statement_heard(prompts, "marketing-calls") == said
