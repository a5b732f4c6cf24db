"""Book-keeping of requests in flight and rollouts received, by group (one prompt x n samples)."""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from scalerl.shared.wire.messages import Rollout


@dataclass
class IssuedGroup:
    """A group the trainer asked for, collecting its samples (the generator's PendingGroup is its other side)."""

    prompt_id: str
    issued_version: int
    n_samples: int
    samples: dict[int, Rollout] = field(default_factory=dict)
    issued_at: float = field(default_factory=time.monotonic)
    attempt: int = 1  # 2 for a group issued again after its first request timed out
    prompt_ids: np.ndarray | None = None  # the prompt as issued (None: not checked)


class GroupCollector:
    """`vocab_size` (the policy's embedding rows) and `max_new_tokens` bound what a rollout may hold: a valid
    message with a token id past the embedding, or longer than asked for, would crash or exhaust the trainer steps
    later (an IndexError in the embedding lookup, a (tokens x vocabulary) allocation); such a rollout is dropped
    on arrival instead, counted in `n_invalid` with its reason in `last_invalid`. None: not checked.
    `moe` is the policy's (MoE layers, experts, top-k), () for a dense policy: routed experts must fit it (rollouts of
    two (layers, k) in one batch raised ValueError out of the step; an expert index past the policy's would index
    past its experts)."""

    def __init__(
        self,
        vocab_size: int | None = None,
        max_new_tokens: int | None = None,
        moe: tuple[int, int, int] | tuple[()] | None = None,
    ):
        self.vocab_size, self.max_new_tokens, self.moe = vocab_size, max_new_tokens, moe
        self.pending: dict[str, IssuedGroup] = {}
        self.ready: OrderedDict[str, IssuedGroup] = OrderedDict()  # complete groups, oldest first
        self.n_unknown = 0  # rollouts for groups we never issued (a restarted run, a stray generator)
        self.n_duplicate = 0
        self.n_invalid = 0  # well-formed rollouts that do not fit their request, the policy or the clock
        self.invalid_streak = 0  # invalid rollouts since the last valid one (every generator serving another model)
        self.last_invalid = ""

    def issued(
        self,
        group_id: str,
        prompt_id: str,
        version: int,
        n_samples: int,
        attempt: int = 1,
        prompt_ids: np.ndarray | None = None,
    ) -> None:
        self.pending[group_id] = IssuedGroup(prompt_id, version, n_samples, attempt=attempt, prompt_ids=prompt_ids)

    def expired(self, timeout_s: float, now: float | None = None) -> list[IssuedGroup]:
        """Forget and return the groups still incomplete `timeout_s` after they were issued (a generator that
        lost or never took the request); late rollouts of theirs then count as unknown."""
        now = time.monotonic() if now is None else now
        late = [gid for gid, g in self.pending.items() if now - g.issued_at > timeout_s]
        return [self.pending.pop(gid) for gid in late]

    def drop(self, group_id: str) -> IssuedGroup | None:
        """Forget one unfinished group (its generator refused it); None if it is not pending."""
        return self.pending.pop(group_id, None)

    def problem(self, r: Rollout, g: IssuedGroup, version: int | None) -> str | None:
        """Why rollout `r` of group `g` must not be trained on, or None. `version`: the newest policy version."""
        if g.prompt_ids is not None and not np.array_equal(r.prompt_ids, g.prompt_ids):
            return f"prompt_ids ({len(r.prompt_ids)} tokens) differ from the prompt issued ({len(g.prompt_ids)})"
        n = len(r.completion_ids)
        if self.max_new_tokens is not None and n > self.max_new_tokens:
            return f"{n} completion tokens, more than max_new_tokens {self.max_new_tokens}"
        if self.vocab_size is not None and n and int(r.completion_ids.max()) >= self.vocab_size:
            return f"token id {int(r.completion_ids.max())} outside the vocabulary of {self.vocab_size}"
        if version is not None and n and int(r.versions[-1]) > version:
            return f"policy version {int(r.versions[-1])} from the future (the newest is {version})"
        routed = r.routed_experts
        if routed is not None and self.moe is not None:
            if not self.moe:
                return "routed experts, but the policy is dense"
            layers, n_experts, k = self.moe
            if routed.shape[1:] != (layers, k) or routed.n_experts > n_experts:
                have = f"{routed.shape[1]} layers x top-{routed.shape[2]} of {routed.n_experts} experts"
                return f"routed experts of {have}; the policy has {layers} x top-{k} of {n_experts}"
        return None

    def add(self, r: Rollout, version: int | None = None) -> str | None:
        """Book one rollout; returns why it was dropped as invalid (also in `last_invalid`), else None."""
        g = self.pending.get(r.group_id)
        if g is None:
            self.n_unknown += 1
            return None
        if r.sample_index in g.samples or r.sample_index >= g.n_samples:
            self.n_duplicate += 1
            return None
        problem = self.problem(r, g, version)
        if problem is not None:
            self.n_invalid += 1
            self.invalid_streak += 1
            self.last_invalid = f"group {r.group_id} sample {r.sample_index}: {problem}"
            return self.last_invalid
        g.samples[r.sample_index] = r
        self.invalid_streak = 0
        if len(g.samples) == g.n_samples:
            self.ready[r.group_id] = self.pending.pop(r.group_id)
        return None

    @property
    def outstanding(self) -> int:
        return len(self.pending) + len(self.ready)

    def take(self, n: int) -> list[tuple[str, IssuedGroup]]:
        """The n complete groups issued earliest (the stalest), so none waits past the staleness bound."""
        oldest = sorted(self.ready, key=lambda gid: self.ready[gid].issued_version)[:n]
        return [(gid, self.ready.pop(gid)) for gid in oldest]

    def reissue_all(self) -> list[str]:
        """Prompt ids of every unfinished group (their generator died); forgets them."""
        ids = [g.prompt_id for g in self.pending.values()]
        self.pending.clear()
        return ids
