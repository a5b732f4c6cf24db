"""Policy-gradient losses of the ScaleRL paper and its ablations, as pure functions of padded tensors.

Shapes: B sequences x T completion tokens.
- logprobs:      log pi_theta(y_t) under the policy being trained (requires grad)
- gen_logprobs:  log pi_gen(y_t) recorded by the generator that sampled the token
- adv:           (B,) advantage per sequence
- mask:          (B, T) 1 for completion tokens that count (not padding, not prompt, not forced interruption text)
- group_ids:     (B,) the prompt each sequence answers, 0..G-1 (for prompt-level aggregation)

Each loss returns (loss to minimise, stats). CISPO (the ScaleRL default):
    J = 1/sum_g|y_g| * sum_i sum_t sg(min(rho_it, eps_max)) * A_i * log pi_theta(y_it),  rho = pi_theta / pi_gen

Train/inference mismatch (docs/trainer.md): every ratio here is against the generator's own logprobs, so the
mismatch between the two engines' numerics is part of rho. cfg.is_correction = "tis" truncates rho at tis_cap
before the loss sees it; "mis" drops the sequences whose geometric-mean rho is beyond mis_threshold either way.
"""

from __future__ import annotations

import math

import torch

from .config import Aggregation, LossConfig

DEFAULT_LOSS = LossConfig()  # the paper's recipe: CISPO, prompt-level averaging


def aggregate_parts(per_token, mask, group_ids, how: Aggregation) -> tuple[torch.Tensor, int]:
    """(sum over units of each unit's mean, number of units). A unit is a token, a sequence or a prompt.

    Split this way so that data-parallel ranks can divide by the global unit count: every rank's shard then
    contributes exactly what it would in one big batch.
    """
    m = mask.to(per_token.dtype)
    masked = per_token * m
    if how == "token":
        return masked.sum(), int(m.sum())
    per_seq_sum, per_seq_n = masked.sum(1), m.sum(1)
    if how == "sample":
        keep = per_seq_n > 0
        return (per_seq_sum[keep] / per_seq_n[keep]).sum() + masked.sum() * 0.0, int(keep.sum())
    if how == "prompt":
        G = int(group_ids.max()) + 1 if group_ids.numel() else 0
        g_sum = torch.zeros(G, dtype=per_token.dtype).index_add(0, group_ids, per_seq_sum)
        g_n = torch.zeros(G, dtype=per_token.dtype).index_add(0, group_ids, per_seq_n)
        keep = g_n > 0
        return (g_sum[keep] / g_n[keep]).sum() + masked.sum() * 0.0, int(keep.sum())
    raise ValueError(f"unknown aggregation {how!r}")


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, group_ids: torch.Tensor, how: Aggregation) -> torch.Tensor:
    """Average per-token terms. prompt: every prompt weighs the same (mean over all tokens of its samples, then
    over prompts); sample: every sequence weighs the same; token: every token weighs the same.
    An empty selection gives 0 with a zero gradient, never NaN."""
    num, count = aggregate_parts(per_token, mask, group_ids, how)
    return num / count if count > 0 else num * 0.0


def unit_weights(mask: torch.Tensor, group_ids: torch.Tensor, how: Aggregation) -> tuple[torch.Tensor, int]:
    """(per-token weights (B, T), number of units): sum(per_token * weights) / units == aggregate(per_token).

    The weights fold each token's unit size into one tensor, so a step can be cut into any pieces (micro-batches,
    ranks) that each sum their share: prompt and sample means stay exact even when a prompt's samples, or a
    whole prompt, land in different pieces.
    """
    m = mask.to(torch.float32)
    if how == "token":
        return m, int(m.sum())
    per_seq_n = m.sum(1)
    if how == "sample":
        return m / per_seq_n.clamp_min(1)[:, None], int((per_seq_n > 0).sum())
    if how == "prompt":
        G = int(group_ids.max()) + 1 if group_ids.numel() else 0
        g_n = torch.zeros(G, dtype=torch.float32).index_add(0, group_ids, per_seq_n)
        return m / g_n.clamp_min(1)[group_ids][:, None], int((g_n > 0).sum())
    raise ValueError(f"unknown aggregation {how!r}")


def token_terms(logprobs, gen_logprobs, adv, mask, cfg: LossConfig = DEFAULT_LOSS):
    """(per-token loss terms, importance ratio, clipped) of each token, all (B, T); masked tokens count for nothing.

    Every term depends on its own sequence only (GSPO's ratio is a mean over the sequence), so a sequence must
    not be split, but sequences may be grouped any way."""
    mask = mask.bool()
    log_ratio = (logprobs - gen_logprobs).masked_fill(~mask, 0.0)
    if cfg.is_correction == "tis":
        # Value min(log rho, log C), gradient that of log rho: rho becomes min(rho, C) wherever the loss uses it.
        log_ratio = log_ratio - (log_ratio.detach() - math.log(cfg.tis_cap)).clamp_min(0.0)
    A = adv[:, None].to(logprobs.dtype)
    if cfg.kind == "cispo":
        ratio = log_ratio.detach().exp()
        weight = ratio.clamp(max=cfg.cispo_eps_max)
        per_token = -(weight * A * logprobs)
        clipped = ratio > cfg.cispo_eps_max
    elif cfg.kind in ("dapo", "grpo"):
        lo, hi = cfg.dapo_eps if cfg.kind == "dapo" else cfg.grpo_eps
        ratio = log_ratio.exp()
        unclipped, clipped_obj = ratio * A, ratio.clamp(1 - lo, 1 + hi) * A
        per_token = -torch.minimum(unclipped, clipped_obj)
        clipped = (clipped_obj < unclipped).detach()
    elif cfg.kind == "gspo":
        lo, hi = cfg.gspo_eps
        n = mask.sum(1).clamp_min(1)
        # GSPO: one length-normalised ratio per sequence, s_i = exp(mean_t log rho_it).
        seq_ratio = (log_ratio.sum(1) / n).exp()[:, None].expand_as(log_ratio)
        unclipped, clipped_obj = seq_ratio * A, seq_ratio.clamp(1 - lo, 1 + hi) * A
        per_token = -torch.minimum(unclipped, clipped_obj)
        ratio = seq_ratio
        clipped = (clipped_obj < unclipped).detach()
    else:
        raise ValueError(f"unknown loss {cfg.kind!r}")
    if cfg.is_correction == "mis":
        per_token = per_token * mis_keep(logprobs.detach(), gen_logprobs, mask, cfg.mis_threshold)[:, None]
    return per_token, ratio.detach(), clipped & mask


def mis_keep(logprobs, gen_logprobs, mask, threshold: float) -> torch.Tensor:
    """(B,) whether each sequence's geometric-mean ratio exp(mean_t log rho_t) lies within [1/threshold, threshold].

    The geometric mean, not the product: a product over a long completion leaves the band for any per-token noise.
    A sequence with no real token is kept (it counts for nothing anyway)."""
    mask = mask.bool()
    log_ratio = (logprobs.detach() - gen_logprobs).masked_fill(~mask, 0.0)
    geo = log_ratio.sum(1) / mask.sum(1).clamp_min(1)
    return geo.abs() <= math.log(threshold)


def ratio_cap(cfg: LossConfig) -> float:
    """The upper cap of the loss's token ratio, which ratio_beyond_cap counts against: CISPO's eps_max, else
    1 + the upper clip (GSPO clips the sequence ratio, so there the token share only says how far tokens spread)."""
    if cfg.kind == "cispo":
        return cfg.cispo_eps_max
    return 1.0 + {"dapo": cfg.dapo_eps, "grpo": cfg.grpo_eps, "gspo": cfg.gspo_eps}[cfg.kind][1]


# The sums mismatch_sums returns, in order; they add up over micro-batches and data-parallel ranks.
MISMATCH_SUMS = ("k3", "abs", "beyond_cap", "corrected", "sequences")


@torch.no_grad()
def mismatch_sums(logprobs, gen_logprobs, mask, cfg: LossConfig = DEFAULT_LOSS) -> tuple[torch.Tensor, torch.Tensor]:
    """(sums (5,) float64 in MISMATCH_SUMS order, max |logp_train - logp_gen|) over the real tokens of mask.

    k3 sums rho - 1 - log rho, rho = pi_train / pi_gen: the tokens were drawn from pi_gen, so its mean is Schulman's
    unbiased, never negative estimate of KL(pi_gen || pi_train). corrected counts the tokens TIS truncates (rho >
    tis_cap) or the sequences MIS drops, sequences the sequences with a real token (MIS's denominator)."""
    mask = mask.bool()
    log_ratio = (logprobs.detach().double() - gen_logprobs.double()).masked_fill(~mask, 0.0)
    ratio = log_ratio.exp()
    if cfg.is_correction == "tis":
        corrected = ((ratio > cfg.tis_cap) & mask).sum()
    elif cfg.is_correction == "mis":
        live = mask.any(1)
        corrected = (~mis_keep(logprobs, gen_logprobs, mask, cfg.mis_threshold) & live).sum()
    else:
        corrected = torch.zeros((), dtype=torch.long, device=mask.device)
    sums = torch.stack(
        [
            (ratio - 1.0 - log_ratio).sum(),
            log_ratio.abs().sum(),
            ((ratio > ratio_cap(cfg)) & mask).sum().double(),
            corrected.double(),
            mask.any(1).sum().double(),
        ]
    )
    return sums, log_ratio.abs().max() if log_ratio.numel() else log_ratio.new_zeros(())


def mismatch_stats(sums, abs_max: float, tokens: float, cfg: LossConfig = DEFAULT_LOSS) -> dict[str, float]:
    """The train line's mismatch fields from mismatch_sums (summed over micro-batches and ranks; max of abs_max)."""
    k3, abs_sum, beyond, corrected, sequences = (float(v) for v in sums)
    n = max(tokens, 1.0)
    stats = {
        "mismatch_kl": k3 / n,
        "mismatch_abs_mean": abs_sum / n,
        "mismatch_abs_max": float(abs_max),
        "ratio_beyond_cap": beyond / n,
    }
    if cfg.is_correction == "tis":
        stats["tis_clipped_frac"] = corrected / n
    elif cfg.is_correction == "mis":
        stats["is_masked_frac"] = corrected / max(sequences, 1.0)
    return stats


def policy_loss(
    logprobs, gen_logprobs, adv, mask, group_ids, cfg: LossConfig = DEFAULT_LOSS, global_units: int | None = None
):
    """global_units: the number of aggregation units over all data-parallel ranks (None: this batch alone)."""
    per_token, ratio, clipped = token_terms(logprobs, gen_logprobs, adv, mask, cfg)
    mask = mask.bool()
    if global_units is None:
        loss = aggregate(per_token, mask, group_ids, cfg.aggregation)
    else:
        num, _ = aggregate_parts(per_token, mask, group_ids, cfg.aggregation)
        loss = num / max(global_units, 1)
    n_tok = mask.sum().clamp_min(1)
    stats = {
        "mean_ratio": float((ratio.detach() * mask).sum() / n_tok),
        "clip_frac": float((clipped & mask).sum() / n_tok),
        "tokens": int(mask.sum()),
    }
    sums, abs_max = mismatch_sums(logprobs, gen_logprobs, mask, cfg)
    stats.update(mismatch_stats(sums, float(abs_max), float(mask.sum()), cfg))
    return loss, stats


def load_balance_loss(
    router_logits: list[torch.Tensor], n_experts: int, top_k: int, real: torch.Tensor | None = None
) -> torch.Tensor:
    """The auxiliary load-balancing loss of a mixture-of-experts forward (Switch Transformer eqs. 4-6, as
    Qwen3-MoE trains with it): n_experts * sum_e f_e * P_e over all MoE layers' tokens, where f_e is the share of
    top-k assignments expert e got (the shares sum to k) and P_e its mean router probability: k when perfectly
    balanced.

    router_logits: one (N, E) tensor per MoE layer (moe.RouterTrace.logits); real (N,) bool: the tokens that
    count (padding excluded), None = all. transformers' own function, so the term is the one the model's
    pretraining used; [trainer.loss] load_balance_coef (0 = off, the RL default) scales it into the step."""
    from transformers.models.qwen3_moe.modeling_qwen3_moe import load_balancing_loss_func

    mask = None if real is None else real.reshape(1, -1).long()
    out = load_balancing_loss_func(tuple(router_logits), n_experts, top_k, mask)  # type: ignore[arg-type]
    return out if isinstance(out, torch.Tensor) else torch.zeros(())
