"""Book-keeping of requests in flight and rollouts received, by group (one prompt x n samples)."""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field

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


class GroupCollector:
    def __init__(self):
        self.pending: dict[str, IssuedGroup] = {}
        self.ready: OrderedDict[str, IssuedGroup] = OrderedDict()  # complete groups, oldest first
        self.n_unknown = 0  # rollouts for groups we never issued (a restarted run, a stray generator)
        self.n_duplicate = 0

    def issued(self, group_id: str, prompt_id: str, version: int, n_samples: int, attempt: int = 1) -> None:
        self.pending[group_id] = IssuedGroup(prompt_id, version, n_samples, attempt=attempt)

    def expired(self, timeout_s: float, now: float | None = None) -> list[IssuedGroup]:
        """Forget and return the groups still incomplete `timeout_s` after they were issued (a generator that
        lost or never took the request); late rollouts of theirs then count as unknown."""
        now = time.monotonic() if now is None else now
        late = [gid for gid, g in self.pending.items() if now - g.issued_at > timeout_s]
        return [self.pending.pop(gid) for gid in late]

    def drop(self, group_id: str) -> IssuedGroup | None:
        """Forget one unfinished group (its generator refused it); None if it is not pending."""
        return self.pending.pop(group_id, None)

    def add(self, r: Rollout) -> None:
        g = self.pending.get(r.group_id)
        if g is None:
            self.n_unknown += 1
            return
        if r.sample_index in g.samples or r.sample_index >= g.n_samples:
            self.n_duplicate += 1
            return
        g.samples[r.sample_index] = r
        if len(g.samples) == g.n_samples:
            self.ready[r.group_id] = self.pending.pop(r.group_id)

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
