"""Per-request bookkeeping while it decodes: the completion so far and when it must end.

Pure Python (no torch) so the budget/interruption rules have small direct tests. The engine
samples a token for every running row each step and hands it to `Sequence.push`, which may
replace it with a forced token (the interruption text) and decides when the request is done.
"""

from __future__ import annotations

import random
import time

import numpy as np

from scalerl.generator_service.backend import Completion, CompletionTimings, EngineRequest
from scalerl.shared.wire.messages import FinishReason


def draw_thinking_budget(budget: tuple[int, int] | None, seed: int) -> int | None:
    """The per-request budget, uniform on the inclusive range, reproducible from the seed."""
    if budget is None:
        return None
    low, high = budget
    return random.Random(seed).randint(low, high)


class Sequence:
    """One running request. `tokens` etc. grow by one entry per push()."""

    __slots__ = (
        "request",
        "seed",
        "budget",
        "tokens",
        "logprobs",
        "versions",
        "forced",
        "_stops",
        "_queue",
        "interrupted",
        "thinking_closed",
        "answer_sampled",
        "finish_reason",
        "submitted",
        "started",
        "first_token",
    )

    def __init__(self, request: EngineRequest, seed: int, submitted: float) -> None:
        self.request = request
        self.seed = seed
        self.budget = draw_thinking_budget(request.params.thinking_budget, seed)
        self.tokens: list[int] = []
        self.logprobs: list[float] = []
        self.versions: list[int] = []
        self.forced: list[bool] = []
        self._stops = frozenset(request.params.stop_token_ids)
        self._queue: list[int] = []  # forced tokens still to append, reversed (pop() from the end)
        self.interrupted = False
        self.thinking_closed = False
        self.answer_sampled = 0
        self.finish_reason: FinishReason | None = None
        self.submitted = submitted
        self.started = 0.0
        self.first_token = 0.0

    @property
    def next_position(self) -> int:
        """Cache position of the last appended token (the one fed to the next decode)."""
        return len(self.request.prompt_token_ids) + len(self.tokens) - 1

    def push(self, sampled: int, logprob: float, version: int) -> int:
        """Append the token for index len(tokens): `sampled` unless one must be forced.
        Returns the token actually appended."""
        if not self._queue and self._should_interrupt():
            self.interrupted = True
            self._queue = list(reversed(self.request.params.interruption_token_ids))
        if self._queue:
            token = self._queue.pop()
            self._append(token, 0.0, version, True)
        else:
            token = sampled
            self._append(token, logprob, version, False)
            if self.interrupted:
                self.answer_sampled += 1
            self._track_thinking_end()
        self.finish_reason = self._finish_reason(token)
        return token

    def pending_interruption(self) -> bool:
        """True when the next token must be forced: for backends that sample in bulk and force in between."""
        return bool(self._queue) or self._should_interrupt()

    def _should_interrupt(self) -> bool:
        return (
            self.budget is not None
            and not self.interrupted
            and not self.thinking_closed
            and len(self.tokens) == self.budget
        )

    def _append(self, token: int, logprob: float, version: int, forced: bool) -> None:
        if not self.tokens:
            self.first_token = time.time()
        self.tokens.append(token)
        self.logprobs.append(logprob)
        self.versions.append(version)
        self.forced.append(forced)

    def _track_thinking_end(self) -> None:
        end = self.request.params.think_end_token_ids
        if end and not self.thinking_closed and self.tokens[-1] == end[-1] and tuple(self.tokens[-len(end) :]) == end:
            self.thinking_closed = True

    def _finish_reason(self, token: int) -> FinishReason | None:
        params = self.request.params
        ended = (
            (not self.forced[-1] and token in self._stops)
            or len(self.tokens) >= params.max_new_tokens
            or (
                self.interrupted
                and not self._queue
                and params.answer_budget is not None
                and self.answer_sampled >= params.answer_budget
            )
        )
        if not ended:
            return None
        if self.interrupted:
            return "interrupted"
        return "stop" if token in self._stops else "length"

    def to_completion(self, finished: float) -> Completion:
        assert self.finish_reason is not None
        return Completion(
            request_id=self.request.request_id,
            prompt_token_ids=self.request.prompt_token_ids,
            token_ids=np.asarray(self.tokens, dtype=np.int32),
            logprobs=np.asarray(self.logprobs, dtype=np.float32),
            versions=np.asarray(self.versions, dtype=np.int32),
            forced=np.asarray(self.forced, dtype=bool),
            finish_reason=self.finish_reason,
            thinking_budget=self.budget,
            timings=CompletionTimings(self.submitted, self.started, self.first_token, finished),
        )
