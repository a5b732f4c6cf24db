"""The backend-neutral generation interface: what a sampling engine takes and gives back.

The torch engine (engine.py) and the vLLM backend (vllm_backend.py) both implement `GenerationBackend`,
so the generator service never depends on which one runs. Everything here is plain Python:
no torch import, so the wire protocol and the CLI can use these types cheaply.

Token-level conventions shared by every backend:
- A completion's tokens are what followed the prompt: sampled tokens, plus forced ones
  (the interruption text), plus the stop token when one ended the generation.
- `logprobs[i]` is log pi(token_i | prefix) under the policy at temperature 1 with no top-p
  truncation, computed from FP32 logits, whatever temperature/top_p was used to sample.
  That is the pi_gen the trainer's importance ratio needs. Forced tokens get 0.0.
- `versions[i]` is the policy version of the weights that produced token i (for forced tokens:
  the version current when they were appended). In-flight updates make it non-constant.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from scalerl.shared.wire.messages import FinishReason, RoutedExperts

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class EngineSampling:
    """How to sample one request.

    Fields:
        temperature: softmax temperature; 0 means greedy (argmax).
        top_p: nucleus mass in (0, 1]; the smallest set of most likely tokens whose mass
            reaches top_p is kept. 1.0 disables truncation.
        max_new_tokens: hard cap on completion tokens (sampled + forced), finish "length".
        stop_token_ids: tokens that end the generation when sampled (e.g. EOS); the stop
            token is kept in the completion.
        thinking_budget: (min, max) inclusive range; per request the engine draws a budget B
            from it (deterministically from `seed`). If the completion reaches B tokens
            without a stop token and without having closed its thinking on its own
            (`think_end_token_ids`), the interruption tokens are appended as forced tokens
            at positions B, B+1, ... None disables interruption.
        interruption_token_ids: the forced text, e.g. the tokenisation of
            "Okay, time is up. Let me stop thinking and formulate a final answer now. </think>".
            Required when thinking_budget is set.
        answer_budget: after an interruption, at most this many more sampled tokens
            (None: only max_new_tokens bounds the answer).
        think_end_token_ids: the token sequence that closes thinking (e.g. "</think>");
            once the model writes it itself, no interruption happens. Empty: not tracked.
        seed: makes the request's samples and budget draw reproducible and independent of
            what else is in the batch. None: the engine assigns one from its own seed.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    stop_token_ids: tuple[int, ...] = ()
    thinking_budget: tuple[int, int] | None = None
    interruption_token_ids: tuple[int, ...] = ()
    answer_budget: int | None = None
    think_end_token_ids: tuple[int, ...] = ()
    seed: int | None = None


@dataclass(frozen=True)
class EngineRequest:
    """One prompt to complete.

    Fields:
        request_id: caller-chosen unique id among the requests in flight.
        prompt_token_ids: the prompt, already tokenised (non-empty).
        params: sampling parameters.
    """

    request_id: str
    prompt_token_ids: tuple[int, ...]
    params: EngineSampling = field(default_factory=EngineSampling)


@dataclass(frozen=True)
class CompletionTimings:
    """Wall-clock times (time.time(), seconds) of a request's life in the engine.

    Fields:
        submitted: when add_requests accepted it.
        started: when its prefill ran (it got a slot).
        first_token: when its first completion token was chosen.
        finished: when it finished.
    """

    submitted: float
    started: float
    first_token: float
    finished: float


@dataclass(frozen=True)
class Completion:
    """A finished request. The arrays all have one entry per completion token.

    Fields:
        request_id: the request's id.
        prompt_token_ids: the prompt it completed (echoed for the trainer).
        token_ids: int32 array, the completion tokens.
        logprobs: float32 array, log pi_T=1(token | prefix) from FP32 logits; 0.0 for forced.
        versions: int32 array, the policy version that produced each token.
        forced: bool array, True for tokens appended by the engine (not sampled).
        finish_reason: "stop" (a stop token was sampled), "length" (max_new_tokens reached),
            "interrupted" (the thinking budget forced the interruption text; the answer that
            followed ended by stop token, answer budget or max_new_tokens).
        thinking_budget: the budget drawn for this request (None when interruption is off).
        timings: wall-clock times.
        routed_experts: with router replay (vLLM only), the experts each token of prompt + completion was routed
            to, as the Rollout carries them; None otherwise.
    """

    request_id: str
    prompt_token_ids: tuple[int, ...]
    token_ids: np.ndarray
    logprobs: np.ndarray
    versions: np.ndarray
    forced: np.ndarray
    finish_reason: FinishReason
    thinking_budget: int | None
    timings: CompletionTimings
    routed_experts: RoutedExperts | None = None


@dataclass(frozen=True)
class BackendStats:
    """Counters since the backend started (rates are the caller's business).

    Fields:
        policy_version: version of the weights currently loaded.
        running: requests holding a slot.
        waiting: accepted requests not yet admitted to a slot.
        finished_uncollected: finished requests not yet returned by collect_finished.
        steps: step() calls that did work.
        sampled_tokens: completion tokens chosen by sampling (or argmax).
        forced_tokens: completion tokens appended by the engine.
        prefill_tokens: prompt tokens run through prefill.
        completions: requests finished.
        weight_updates: update_weights calls.
        last_update_pause_s: duration of the last update_weights (generation is paused).
        total_update_pause_s: sum of all update pauses.
        busy_s: time spent inside step().
    """

    policy_version: int
    running: int
    waiting: int
    finished_uncollected: int
    steps: int
    sampled_tokens: int
    forced_tokens: int
    prefill_tokens: int
    completions: int
    weight_updates: int
    last_update_pause_s: float
    total_update_pause_s: float
    busy_s: float


@runtime_checkable
class GenerationBackend(Protocol):
    """A continuous-batching sampler. Single-threaded: the caller drives it by calling step().

    Weight updates happen between two step() calls, so a sequence in flight keeps its
    KV cache and simply continues with the new weights (PipelineRL in-flight updates).
    """

    def add_requests(self, requests: Sequence[EngineRequest]) -> None:
        """Queue requests; they join the running batch at the next step(). Raises ValueError
        naming the first invalid request, in which case none of `requests` is queued."""
        ...

    def step(self) -> int:
        """Admit waiting requests (prefill) and decode one token for every running request.
        Returns the number of completion tokens produced (0 when idle)."""
        ...

    def has_unfinished(self) -> bool:
        """True while any accepted request is waiting or running."""
        ...

    def collect_finished(self) -> list[Completion]:
        """Return and forget the requests finished since the last call."""
        ...

    def update_weights(self, named_tensors: Mapping[str, Any] | Iterable[tuple[str, Any]], version: int) -> float:
        """Copy new weights (HF parameter names -> tensors, any subset) into the model in place
        and make `version` the current policy version. Running sequences are not restarted.
        Validates every name and shape before copying anything (KeyError/ValueError naming
        the offending tensor). Returns the pause in seconds."""
        ...

    def stats(self) -> BackendStats:
        """A snapshot of the counters."""
        ...
