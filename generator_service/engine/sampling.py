"""Token sampling from FP32 logits: temperature, top-p, seeded and batch-invariant.

Each request carries its own 32-bit key (from its seed). The uniform number used to pick
its i-th token is a hash of (key, i), so a request samples the same tokens whatever else
shares the batch and whenever it was admitted; no per-request torch.Generator is needed
and the whole batch samples in a handful of vectorised ops (inverse-CDF sampling).
"""

from __future__ import annotations

import torch

MASK32 = 0xFFFFFFFF
# Weyl-sequence increment (2^32 / golden ratio): consecutive counters land far apart.
GOLDEN32 = 0x9E3779B9


def mix32(x: int) -> int:
    """Chris Wellons' lowbias32 integer hash on a 32-bit value (reference for mix32_tensor)."""
    x &= MASK32
    x ^= x >> 16
    x = (x * 0x7FEB352D) & MASK32
    x ^= x >> 15
    x = (x * 0x846CA68B) & MASK32
    x ^= x >> 16
    return x


def seed_key(seed: int) -> int:
    """The 32-bit sampling key of a request seed (any Python int, folded to 32 bits)."""
    folded = (seed ^ (seed >> 32)) & MASK32
    return mix32(folded)


def mix32_tensor(x: torch.Tensor) -> torch.Tensor:
    """mix32 on an int64 tensor of values in [0, 2^32). The int64 products may wrap past
    2^63; the low 32 bits, which are all we keep, are still exact (two's complement)."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & MASK32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & MASK32
    return x ^ (x >> 16)


def uniforms(keys: torch.Tensor, counters: torch.Tensor) -> torch.Tensor:
    """One float32 uniform in [0, 1) per row, a pure function of (key, counter).

    keys: int64 [B] in [0, 2^32); counters: int64 [B], the index of the token being chosen.
    24 random bits: exactly representable in float32, so u < 1 always.
    """
    x = (keys + counters * GOLDEN32) & MASK32
    return (mix32_tensor(x) >> 8).to(torch.float32) * (1.0 / (1 << 24))


def sample_tokens(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_p: torch.Tensor,
    u: torch.Tensor,
    use_top_p: bool = True,
) -> torch.Tensor:
    """Pick one token per row by inverse-CDF sampling with the given uniforms.

    logits: float32 [B, V]. temperature: float32 [B]; rows with temperature <= 0 are greedy
    (argmax). top_p: float32 [B] in (0, 1]. u: float32 [B] in [0, 1).
    use_top_p=False skips the sort when the caller knows every top_p is 1 (same result).
    Returns int64 [B].
    """
    greedy = temperature <= 0
    scale = torch.where(greedy, torch.ones_like(temperature), temperature)
    probs = torch.softmax(logits / scale[:, None], dim=-1)
    if use_top_p:
        # Stable descending sort: ties keep vocabulary order, like argmax.
        probs, order = torch.sort(probs, dim=-1, descending=True, stable=True)
        cdf = probs.cumsum(dim=-1)
        # Keep a token while the mass strictly before it is below top_p (the first always).
        kept = ((cdf - probs) < top_p[:, None]).sum(dim=-1, keepdim=True).clamp_(min=1)
        total = cdf.gather(1, kept - 1)
    else:
        order = None
        cdf = probs.cumsum(dim=-1)
        kept = torch.full_like(u, logits.shape[-1], dtype=torch.int64)[:, None]
        total = cdf[:, -1:]
    # First index whose cumulative mass exceeds u * total; the clamp only guards rounding.
    idx = torch.searchsorted(cdf, u[:, None] * total, right=True)
    idx = torch.minimum(idx, kept - 1)
    tokens = (order.gather(1, idx) if order is not None else idx).squeeze(1)
    if bool(greedy.any()):
        tokens = torch.where(greedy, logits.argmax(dim=-1), tokens)
    return tokens


def picked_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[token] per row: the temperature-1, untruncated policy.

    logits: float32 [B, V]; tokens: int64 [B]. Returns float32 [B].
    """
    picked = logits.gather(1, tokens[:, None]).squeeze(1)
    return picked - torch.logsumexp(logits, dim=-1)
