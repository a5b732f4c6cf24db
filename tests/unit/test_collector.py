"""The trainer's check of valid rollouts against their request and the policy (trainer_service/collector.py):
a rollout that decodes fine can still carry a token id past the embedding, or more tokens than were asked for,
which crashed the trainer's step (IndexError in the embedding lookup; a tokens x vocabulary allocation)."""

from __future__ import annotations

import numpy as np
import pytest

from scalerl.shared.wire.messages import Rollout, RoutedExperts
from scalerl.trainer_service.collector import GroupCollector

PROMPT = np.array([5, 6, 7], dtype=np.int32)


def rollout(sample_index: int = 0, **over) -> Rollout:
    n = len(over.get("completion_ids", [1, 2, 3]))
    kw = dict(
        group_id="g1",
        sample_index=sample_index,
        prompt_ids=PROMPT,
        completion_ids=[1, 2, 3],
        logprobs=[-1.0] * n,
        versions=[3] * n,
        forced=[0] * n,
        finish_reason="stop",
        reward=1.0,
        t_queued=1.0,
        t_started=1.0,
        t_finished=1.0,
    )
    kw.update(over)
    return Rollout(**kw)


def collector() -> GroupCollector:
    c = GroupCollector(vocab_size=100, max_new_tokens=8)
    c.issued("g1", "p1", version=3, n_samples=2, prompt_ids=PROMPT)
    return c


@pytest.mark.parametrize(
    "over, problem",
    [
        ({"completion_ids": [1, 100, 2]}, "token id 100 outside the vocabulary of 100"),
        ({"completion_ids": [2**31 - 1]}, "outside the vocabulary"),
        ({"prompt_ids": [5, 6, 99]}, "differ from the prompt issued"),
        ({"prompt_ids": [5, 6, 7, 1_000_000]}, "differ from the prompt issued"),
        ({"completion_ids": list(range(9))}, "9 completion tokens, more than max_new_tokens 8"),
        ({"versions": [3, 4, 2**31 - 1]}, "policy version 2147483647 from the future (the newest is 5)"),
    ],
)
def test_a_rollout_that_does_not_fit_is_dropped_and_counted(over, problem):
    c = collector()
    why = c.add(rollout(**over), version=5)
    assert why is not None and problem in why and "g1 sample 0" in why and c.last_invalid == why
    assert c.n_invalid == 1 and 0 not in c.pending["g1"].samples
    assert c.invalid_streak == 1  # the dispatcher fails the run when it reaches its limit
    # The group still completes with well-formed samples.
    assert c.add(rollout(0), version=5) is None and c.invalid_streak == 0
    assert c.add(rollout(1), version=5) is None
    assert "g1" in c.ready and c.n_invalid == 1


def test_fitting_rollouts_are_kept_and_unchecked_without_limits():
    c = collector()
    assert c.add(rollout(0, completion_ids=[99] * 8, versions=[5] * 8), version=5) is None
    assert c.add(rollout(1, completion_ids=[]), version=5) is None
    assert "g1" in c.ready and c.n_invalid == 0
    bare = GroupCollector()
    bare.issued("g1", "p1", version=0, n_samples=1)
    assert bare.add(rollout(0, completion_ids=[10**6], prompt_ids=[1])) is None and "g1" in bare.ready


def routed(rows: int, layers: int, k: int, n_experts: int) -> RoutedExperts:
    return RoutedExperts.pack(np.zeros((rows, layers, k), np.int64), n_experts)


def test_routed_experts_must_fit_the_policy():
    # Two rollouts of different (layers, k) in one batch raised ValueError out of build_batch: the trainer died.
    c = GroupCollector(moe=(2, 8, 2))
    c.issued("g1", "p1", version=0, n_samples=3)
    rows = len(PROMPT) + 3
    assert c.add(rollout(0, routed_experts=routed(rows, 2, 2, 8))) is None
    assert "the policy has 2 x top-2 of 8" in c.add(rollout(1, routed_experts=routed(rows, 3, 2, 8)))
    assert "of 300 experts" in c.add(rollout(1, routed_experts=routed(rows, 2, 2, 300)))
    assert c.add(rollout(1)) is None  # none at all is fine
    dense = GroupCollector(moe=())
    dense.issued("g1", "p1", version=0, n_samples=1)
    assert "the policy is dense" in dense.add(rollout(0, routed_experts=routed(rows, 1, 1, 4)))
