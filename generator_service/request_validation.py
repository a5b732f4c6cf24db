"""Checks an EngineRequest against a backend's limits before it is queued.

Shared by every backend so a malformed request is refused the same way everywhere: one
ValueError line naming the request and the offending field, never a crash mid-batch.
"""

from __future__ import annotations

from scalerl.generator_service.backend import EngineRequest
from scalerl.shared.wire.values import sampling_problem


def _token_ids_ok(ids: object, vocab_size: int) -> bool:
    return isinstance(ids, tuple) and all(
        isinstance(t, int) and not isinstance(t, bool) and 0 <= t < vocab_size for t in ids
    )


def request_problem(request: object, vocab_size: int, max_seq_len: int) -> str | None:
    """None if the request is acceptable, else a one-line description of what is wrong."""
    if not isinstance(request, EngineRequest):
        return f"not an EngineRequest: {type(request).__name__}"
    rid = request.request_id
    if not isinstance(rid, str) or not rid:
        return f"request_id must be a non-empty str, got {rid!r}"
    where = f"request {rid!r}"
    p = request.params
    prompt = request.prompt_token_ids
    if not prompt:
        return f"{where}: empty prompt_token_ids"
    if not _token_ids_ok(prompt, vocab_size):
        return f"{where}: prompt_token_ids must be a tuple of ints in [0, {vocab_size})"
    problem = sampling_problem(p.temperature, p.top_p, p.max_new_tokens, p.thinking_budget, p.answer_budget)
    if problem is not None:
        return f"{where}: {problem}"
    if len(prompt) + p.max_new_tokens > max_seq_len:
        return (
            f"{where}: prompt ({len(prompt)}) + max_new_tokens ({p.max_new_tokens}) exceeds max_seq_len {max_seq_len}"
        )
    for name in ("stop_token_ids", "interruption_token_ids", "think_end_token_ids"):
        if not _token_ids_ok(getattr(p, name), vocab_size):
            return f"{where}: {name} must be a tuple of ints in [0, {vocab_size})"
    if p.thinking_budget is not None and not isinstance(p.thinking_budget, tuple):
        return f"{where}: thinking_budget must be a (min, max) tuple, got {p.thinking_budget!r}"
    if p.thinking_budget is not None and not p.interruption_token_ids:
        return f"{where}: thinking_budget needs non-empty interruption_token_ids"
    if p.seed is not None and not isinstance(p.seed, int):
        return f"{where}: seed must be an int or None, got {p.seed!r}"
    return None
