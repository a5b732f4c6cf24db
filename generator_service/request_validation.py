"""Checks an EngineRequest against a backend's limits before it is queued.

Shared by every backend so a malformed request is refused the same way everywhere: one
ValueError line naming the request and the offending field, never a crash mid-batch.
"""

from __future__ import annotations

import math

from scalerl.generator_service.backend import EngineRequest


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
    if not isinstance(p.max_new_tokens, int) or p.max_new_tokens < 1:
        return f"{where}: max_new_tokens must be an int >= 1, got {p.max_new_tokens!r}"
    if len(prompt) + p.max_new_tokens > max_seq_len:
        return (
            f"{where}: prompt ({len(prompt)}) + max_new_tokens ({p.max_new_tokens}) exceeds max_seq_len {max_seq_len}"
        )
    if not isinstance(p.temperature, (int, float)) or not math.isfinite(p.temperature) or p.temperature < 0:
        return f"{where}: temperature must be finite and >= 0, got {p.temperature!r}"
    if not isinstance(p.top_p, (int, float)) or not 0 < p.top_p <= 1:
        return f"{where}: top_p must be in (0, 1], got {p.top_p!r}"
    for name in ("stop_token_ids", "interruption_token_ids", "think_end_token_ids"):
        if not _token_ids_ok(getattr(p, name), vocab_size):
            return f"{where}: {name} must be a tuple of ints in [0, {vocab_size})"
    if p.thinking_budget is not None:
        b = p.thinking_budget
        if not (isinstance(b, tuple) and len(b) == 2 and all(isinstance(x, int) for x in b) and 0 <= b[0] <= b[1]):
            return f"{where}: thinking_budget must be a (min, max) tuple with 0 <= min <= max, got {b!r}"
        if not p.interruption_token_ids:
            return f"{where}: thinking_budget needs non-empty interruption_token_ids"
    if p.answer_budget is not None and (not isinstance(p.answer_budget, int) or p.answer_budget < 1):
        return f"{where}: answer_budget must be an int >= 1 or None, got {p.answer_budget!r}"
    if p.seed is not None and not isinstance(p.seed, int):
        return f"{where}: seed must be an int or None, got {p.seed!r}"
    return None
