"""Wire request -> engine requests, and finished completion -> scored Rollout.

Pure Python (no torch, no sockets), so the mapping rules have direct tests; service.py
does the I/O. One GenerationRequest becomes `n_samples` engine requests with ids
"<serial>/<k>" (the serial is the service's, so a group_id reused by the trainer cannot collide).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from scalerl.generator_service.backend import Completion, EngineRequest, EngineSampling
from scalerl.generator_service.config import GeneratorConfig
from scalerl.shared.tasks.types import TaskError, TaskItem, Verifier
from scalerl.shared.tasks.verifiers import make_verifier
from scalerl.shared.wire import messages

# One request may not ask for more: a single message must not be able to exhaust memory.
MAX_SAMPLES_PER_REQUEST = 1024
# Separates a verifier name from the task's final-answer delimiter: "exact|Answer:".
DELIMITER_SEP = "|"
MAX_DETAIL_CHARS = 256  # verifier_info strings are diagnostics; a rollout must stay small


@dataclass(frozen=True)
class TokenSettings:
    """Token ids fixed for the life of the process (derived once from the tokenizer and config)."""

    stop_token_ids: tuple[int, ...]
    interruption_token_ids: tuple[int, ...]
    think_end_token_ids: tuple[int, ...]


@dataclass
class PendingGroup:
    """A request being generated: what each of its rollouts needs besides the completion."""

    request: messages.GenerationRequest
    t_queued: float
    verifier: Verifier
    item: TaskItem
    remaining: int


def engine_sampling(wire: messages.SamplingParams, cfg: GeneratorConfig, tokens: TokenSettings) -> EngineSampling:
    """The engine's sampling parameters for one request.

    The wire budgets are single numbers (None = this generator's configured default); the
    engine draws a thinking budget from a [min, max] range, so a number B becomes (B, B).
    """
    budget = cfg.thinking_budget if wire.thinking_budget is None else (wire.thinking_budget,) * 2
    answer = cfg.answer_budget if wire.answer_budget is None else wire.answer_budget
    return EngineSampling(
        temperature=wire.temperature,
        top_p=wire.top_p,
        max_new_tokens=wire.max_new_tokens,
        stop_token_ids=tokens.stop_token_ids,
        thinking_budget=budget,
        interruption_token_ids=tokens.interruption_token_ids if budget is not None else (),
        answer_budget=answer,
        think_end_token_ids=tokens.think_end_token_ids,
    )


def engine_requests(
    serial: int, request: messages.GenerationRequest, cfg: GeneratorConfig, tokens: TokenSettings
) -> list[EngineRequest]:
    """One engine request per sample; raises ValueError (one line) for a request we cannot serve."""
    if request.n_samples > MAX_SAMPLES_PER_REQUEST:
        raise ValueError(f"group {request.group_id!r}: n_samples {request.n_samples} > {MAX_SAMPLES_PER_REQUEST}")
    params = engine_sampling(request.sampling, cfg, tokens)
    prompt = tuple(request.prompt_ids.tolist())
    return [EngineRequest(f"{serial}/{k}", prompt, params) for k in range(request.n_samples)]


class VerifierCache:
    """Verifiers by request name, resolved once each (failures too, so a bad name costs one import)."""

    def __init__(self) -> None:
        self._cache: dict[str, Verifier | str] = {}

    def get(self, name: str) -> Verifier:
        """The verifier for "spec" or "spec|delimiter"; raises TaskError (one line) if unknown."""
        found = self._cache.get(name)
        if found is None:
            spec, _, delimiter = name.partition(DELIMITER_SEP)
            try:
                found = make_verifier(spec, delimiter or None)
            except TaskError as e:
                found = str(e)
            self._cache[name] = found
        if isinstance(found, str):
            raise TaskError(found)
        return found


def build_rollout(
    group: PendingGroup, sample_index: int, c: Completion, reward: float, details: dict
) -> messages.Rollout:
    """The Rollout of one finished sample (raises ProtocolError if it would be invalid)."""
    req = group.request
    # Clamped so that a wall-clock step backwards (NTP) cannot make a valid rollout invalid.
    t_started = max(c.timings.started, group.t_queued)
    t_finished = max(c.timings.finished, t_started)
    return messages.Rollout(
        group_id=req.group_id,
        sample_index=sample_index,
        prompt_index=req.prompt_index,
        item_id=req.item_id,
        prompt_ids=req.prompt_ids,
        completion_ids=c.token_ids,
        logprobs=c.logprobs,
        versions=c.versions,
        forced=c.forced.astype(np.uint8),
        finish_reason=c.finish_reason,
        reward=reward,
        verifier_info=wire_details(details),
        t_queued=group.t_queued,
        t_started=t_started,
        t_finished=t_finished,
        routed_experts=c.routed_experts,
    )


def wire_details(details: dict) -> dict:
    """What of a verifier's details fits a Rollout: at most MAX_DETAILS scalars msgpack can carry,
    strings cut to MAX_DETAIL_CHARS. A custom verifier's oversized extras must not cost the sample."""
    out: dict = {}
    for key, value in details.items():
        if len(out) == messages.MAX_DETAILS - 1:
            break  # one entry left for the drop count
        if type(value) is str:
            out[str(key)] = value[:MAX_DETAIL_CHARS]
        elif type(value) in (bool, float) or (type(value) is int and -(2**63) <= value < 2**64):
            out[str(key)] = value
    if len(out) < len(details):
        out["details_dropped"] = len(details) - len(out)
    return out


def pending_group(
    request: messages.GenerationRequest, verifier: Verifier, prompt_text: str, t_queued: float | None = None
) -> PendingGroup:
    item = TaskItem(id=request.item_id, prompt=prompt_text, answer=request.answer)
    return PendingGroup(request, time.time() if t_queued is None else t_queued, verifier, item, request.n_samples)
