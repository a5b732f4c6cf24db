"""Which prompts the trainer asks for next (rank 0 only).

Epochs walk the task's training prompts in a seeded random order. No-Positive-Resampling (ScaleRL): a prompt
whose pass rate reached the threshold (0.9) is easy enough to teach nothing more, so it leaves every later
epoch. On a small dataset the live pool can shrink to a handful of hard prompts that the policy then overfits
(measured on the embedded run: the held-out pass rate fell from 0.92 to 0.82 once epochs cycled through a few
dozen prompts), so below `min_live` of the prompts an epoch uses every prompt again. The state is plain JSON,
so checkpoints restore it exactly.
"""

from __future__ import annotations

import numpy as np

from .config import PromptPipelineConfig


class PromptScheduler:
    def __init__(self, prompt_ids: list[str], cfg: PromptPipelineConfig, seed: int = 0):
        if not prompt_ids:
            raise ValueError("the task has no training prompts")
        self.ids = list(prompt_ids)
        self.cfg, self.seed = cfg, seed  # the seed is the trainer's own (trainer.seed)
        self.epoch = 0
        self.cursor = 0
        self.retired: set[str] = set()  # NPR: out of every epoch after the one they passed in
        self.dropped: set[str] = set()  # a generator refused them: never asked for again, whatever min_live says
        self.pass_rates: dict[str, float] = {}  # last observed pass rate per prompt
        self._order = self._epoch_order()

    def _epoch_order(self) -> list[str]:
        servable = [i for i in self.ids if i not in self.dropped]
        if not servable:
            raise ValueError("every training prompt was refused by the generators (see the trainer log)")
        live = [i for i in servable if i not in self.retired]
        if not live or len(live) < self.cfg.min_live * len(servable):
            live = servable
        rng = np.random.default_rng([self.seed, self.epoch])
        return [live[k] for k in rng.permutation(len(live))]

    def next_prompts(self, n: int) -> list[str]:
        out: list[str] = []
        while len(out) < n:
            if self.cursor >= len(self._order):
                self.epoch += 1
                self.cursor = 0
                self._order = self._epoch_order()
            prompt = self._order[self.cursor]
            self.cursor += 1
            if prompt not in self.dropped:  # dropped after this epoch's order was drawn
                out.append(prompt)
        return out

    def drop(self, prompt_id: str) -> None:
        """Never ask for this prompt again (a generator refused it, e.g. too long for its max_seq_len)."""
        self.dropped.add(prompt_id)

    def record(self, prompt_id: str, pass_rate: float) -> None:
        """Record a group's pass rate; with NPR, a prompt at or above the threshold is retired."""
        self.pass_rates[prompt_id] = float(pass_rate)
        if self.cfg.no_positive_resampling and pass_rate >= self.cfg.npr_threshold:
            self.retired.add(prompt_id)

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "cursor": self.cursor,
            "retired": sorted(self.retired),
            "dropped": sorted(self.dropped),
            "pass_rates": dict(self.pass_rates),
            "order": list(self._order),
        }

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])
        self.retired = set(state["retired"])
        self.dropped = set(state.get("dropped", ()))  # absent in checkpoints written before it existed
        self.pass_rates = {k: float(v) for k, v in state["pass_rates"].items()}
        self._order = list(state["order"])

    @property
    def n_retired(self) -> int:
        return len(self.retired)


class MixScheduler:
    """Prompts of a multi-task run: each prompt's task is drawn by sampling weight, then that task's own
    PromptScheduler (epochs, NPR, drops) picks the prompt, so NPR never lets one task's easy prompts starve
    another. Ids are "label/id" (shared/tasks/catalog.py TaskMix). Draw i uses a generator seeded with (seed, i), so
    the state is the draw count plus each task's scheduler state: plain JSON, restored exactly."""

    def __init__(
        self, ids_by_task: dict[str, list[str]], weights: dict[str, float], cfg: PromptPipelineConfig, seed: int = 0
    ):
        self.labels = list(ids_by_task)
        self.tasks = {label: PromptScheduler(ids_by_task[label], cfg, seed) for label in self.labels}
        w = np.asarray([weights[label] for label in self.labels], dtype=np.float64)
        self.cum = np.cumsum(w / w.sum())
        self.cfg, self.seed = cfg, seed  # the seed is the trainer's own (trainer.seed)
        self.draws = 0

    def next_prompts(self, n: int) -> list[str]:
        out = []
        for _ in range(n):
            u = np.random.default_rng([self.seed, 1 << 20, self.draws]).random()
            self.draws += 1
            label = self.labels[min(int(np.searchsorted(self.cum, u, side="right")), len(self.labels) - 1)]
            out.extend(self.tasks[label].next_prompts(1))
        return out

    def _of(self, prompt_id: str) -> PromptScheduler:
        return self.tasks[prompt_id.partition("/")[0]]

    def drop(self, prompt_id: str) -> None:
        self._of(prompt_id).drop(prompt_id)

    def record(self, prompt_id: str, pass_rate: float) -> None:
        self._of(prompt_id).record(prompt_id, pass_rate)

    def state_dict(self) -> dict:
        return {"draws": self.draws, "tasks": {label: s.state_dict() for label, s in self.tasks.items()}}

    def load_state_dict(self, state: dict) -> None:
        if set(state.get("tasks", ())) != set(self.tasks):
            raise ValueError(
                f"checkpoint's prompt state is for tasks {sorted(state.get('tasks', ()))}, this run has {self.labels}"
            )
        self.draws = int(state["draws"])
        for label, s in state["tasks"].items():
            self.tasks[label].load_state_dict(s)

    @property
    def n_retired(self) -> int:
        return sum(s.n_retired for s in self.tasks.values())

    @property
    def epoch(self) -> int:
        """The fewest passes any task has made over its prompts."""
        return min(s.epoch for s in self.tasks.values())


def make_scheduler(task, cfg: PromptPipelineConfig, seed: int = 0) -> PromptScheduler | MixScheduler:
    """A MixScheduler for a TaskMix (it has `parts`), else one PromptScheduler over the task's training prompts."""
    parts = getattr(task, "parts", None)
    if parts is None:
        return PromptScheduler([item.id for item in task.train_items], cfg, seed)
    ids: dict[str, list[str]] = {label: [] for label, _, _ in parts}
    for item in task.train_items:
        ids[item.id.partition("/")[0]].append(item.id)
    return MixScheduler(ids, {label: weight for label, weight, _ in parts}, cfg, seed)
