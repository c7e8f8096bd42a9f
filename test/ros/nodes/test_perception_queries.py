"""`~/query_scene` under load and around lifecycle transitions, and the text queries themselves: every call is
answered or refused with the reason (more calls than any queue depth, calls queued when the service goes),
the text-embedding cache stays bounded, and duplicate or equivalent texts are normalised and de-duplicated
(they no longer split the softmax). Over DDS with the real node; docs/reliability.md maps each behaviour to
its test."""

from __future__ import annotations

import pytest
from test_perception_robustness import NODE, Harness

from distillnerf_ros.srv import QueryScene


def clients(session, count: int):
    caller = session.node("callers")
    made = [caller.create_client(QueryScene, f"{NODE}/query_scene") for _ in range(count)]
    assert session.spin_until(lambda: all(c.service_is_ready() for c in made), 30), "~/query_scene not available"
    return made


@pytest.mark.slow
def test_a_thousand_simultaneous_queries_from_five_clients_are_all_answered_or_refused_as_busy(session,
                                                                                               tiny_checkpoint):
    Harness(session, tiny_checkpoint)
    five = clients(session, 5)
    futures = [five[i % 5].call_async(QueryScene.Request(queries=["car"], threshold=0.5)) for i in range(1000)]
    session.spin_until(lambda: all(f.done() for f in futures), 50)
    answered = [f.result() for f in futures if f.done()]
    assert len(answered) == 1000, f"only {len(answered)} of 1000 calls were answered"
    assert all(not r.success and r.message for r in answered), "each answer says why it failed"
    busy = sum(r.message.startswith("busy:") for r in answered)
    assert busy >= 800, f"{busy} refused as busy"
