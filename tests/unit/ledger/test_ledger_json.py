"""The ledger's evidence JSON built from memoised pieces is json.dumps's text exactly."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from agi.ledger.ledger import _prompts_json
from agi.ledger.records import PromptHeard

_PROMPT = st.builds(PromptHeard, id=st.text(max_size=12), lang=st.sampled_from(["en", "cy"]),
                    sha256=st.text("0123456789abcdef", max_size=64), text=st.text(max_size=40),
                    interrupted=st.booleans(),
                    heard_ms=st.none() | st.integers(0, 60_000),
                    length_ms=st.none() | st.integers(0, 60_000))


@given(st.lists(_PROMPT, max_size=6))
def test_prompts_json_is_json_dumps(prompts: list[PromptHeard]) -> None:
    expected = json.dumps([{"id": p.id, "lang": p.lang, "sha256": p.sha256, "text": p.text,
                            "interrupted": p.interrupted, "heard_ms": p.heard_ms,
                            "length_ms": p.length_ms} for p in prompts], ensure_ascii=False)
    assert _prompts_json(prompts) == expected
    assert _prompts_json(prompts) == expected  # and again, from the memo
