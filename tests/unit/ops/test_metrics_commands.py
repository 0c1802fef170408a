"""The per-command metrics: plain numbers, exported exactly as prometheus_client would.

:class:`agi.ops.metrics._CommandStats` replaces a ``Histogram`` and a ``Counter`` on the
hottest path (every AGI command). Whatever was observed, the text a scrape returns must
be the one those two classes give for the same observations, byte for byte (the
``_created`` timestamps aside).
"""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from agi.ops.metrics import _COMMAND_BUCKETS, Metrics

VERBS = ("GET OPTION", "SET VARIABLE", "STREAM FILE", "ANSWER", "EXEC", "SAY DIGITS", "NOOP")
RESULTS = ("ok", "hangup", "timeout", "error")


def _agi_lines(text: bytes) -> list[str]:
    return [re.sub(r"(_created\{[^}]*\}) \S+", r"\1 T", line)
            for line in text.decode().splitlines() if "agi_command" in line]


def _reference(observations: list[tuple[str, float, str]]) -> bytes:
    r = CollectorRegistry()
    hist = Histogram("consent_ivr_agi_command_duration_seconds",
                     "Time from sending an AGI command to its reply (includes prompt playback)",
                     ["command"], buckets=_COMMAND_BUCKETS, registry=r)
    count = Counter("consent_ivr_agi_commands", "AGI commands sent, by command and result",
                    ["command", "result"], registry=r)
    for verb, seconds, result in observations:
        command = verb.lower().replace(" ", "_")
        hist.labels(command=command).observe(max(seconds, 0.0))
        count.labels(command=command, result=result).inc()
    return generate_latest(r)


@given(st.lists(st.tuples(
    st.sampled_from(VERBS),
    st.one_of(st.sampled_from([*_COMMAND_BUCKETS, 0.0, -1.0, 1e9]),
              st.floats(min_value=0, max_value=300, allow_nan=False)),
    st.sampled_from(RESULTS)), max_size=40))
def test_exposition_is_prometheus_clients(observations: list[tuple[str, float, str]]) -> None:
    metrics = Metrics()
    for verb, seconds, result in observations:
        metrics.agi_command(verb, seconds, result)
    ours = _agi_lines(metrics.render())
    reference = _agi_lines(_reference(observations))
    # our sum adds the same floats in the same order; the series appear in first-use
    # order in both
    assert ours == reference


def test_values_on_a_bucket_bound_count_in_that_bucket() -> None:
    metrics = Metrics()
    metrics.agi_command("ANSWER", 0.001, "ok")
    text = metrics.render().decode()
    assert ('consent_ivr_agi_command_duration_seconds_bucket{command="answer",le="0.001"} 1.0'
            in text)
    assert 'consent_ivr_agi_commands_total{command="answer",result="ok"} 1.0' in text
