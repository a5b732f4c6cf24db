"""One optimizer step on a batch, identical on every data-parallel rank.

Rank 0 owns the batch; it is broadcast as tensors (never pickled) and every rank trains on its share of the
groups. The loss divides by the global number of aggregation units and gradients are summed across ranks, so
a 2-rank step equals a 1-rank step on the same batch.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from .batch import TrainBatch
from .loss import LossConfig, aggregate_parts, policy_loss
from .policy import sequence_logprobs

_FIELDS = ("input_ids", "attention_mask", "loss_mask", "gen_logprobs", "adv", "group_ids")
_DTYPES = (torch.long, torch.long, torch.float32, torch.float32, torch.float32, torch.long)


def world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def broadcast_batch(batch: TrainBatch | None) -> TrainBatch:
    """Rank 0 sends its batch; other ranks pass None and receive it."""
    rank, size = world()
    if rank == 0:
        if batch is None:
            raise ValueError("rank 0 broadcasts its batch, so it must pass one")
        if size == 1:
            return batch
        shape = torch.tensor(list(batch.input_ids.shape), dtype=torch.long)
    else:
        shape = torch.tensor([0, 0], dtype=torch.long)
    dist.broadcast(shape, 0)
    B, L = shape.tolist()
    shapes = [(B, L), (B, L), (B, L), (B, L), (B,), (B,)]
    out = []
    for name, dtype, shp in zip(_FIELDS, _DTYPES, shapes):
        t = getattr(batch, name).contiguous() if rank == 0 else torch.empty(shp, dtype=dtype)
        dist.broadcast(t, 0)
        out.append(t)
    return TrainBatch(*out)


def shard(batch: TrainBatch) -> TrainBatch:
    """This rank's groups: round robin, so prompt-level units never straddle two ranks."""
    rank, size = world()
    if size == 1:
        return batch
    return batch.select_groups(torch.arange(rank, batch.n_groups, size))


def _global_sum(x: float) -> float:
    rank, size = world()
    if size == 1:
        return x
    t = torch.tensor([x], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item())


def train_step(
    model, optimizer, scheduler, batch: TrainBatch, loss_cfg: LossConfig, fp32_lm_head: bool, grad_clip: float
) -> dict:
    """Forward, loss, backward, gradient all-reduce, clip, optimizer step. Returns logged statistics."""
    local = shard(batch)
    model.train()
    logprobs, entropy = sequence_logprobs(model, local.input_ids, local.attention_mask, fp32_lm_head)
    mask = local.loss_mask
    _, units = aggregate_parts(logprobs.detach(), mask, local.group_ids, loss_cfg.aggregation)
    global_units = int(_global_sum(units))
    loss, stats = policy_loss(logprobs, local.gen_logprobs, local.adv, mask, local.group_ids, loss_cfg, global_units)
    optimizer.zero_grad(set_to_none=False)
    loss.backward()
    if world()[1] > 1:
        for p in model.parameters():
            if p.grad is not None:
                dist.all_reduce(p.grad)
    params = [p for p in model.parameters() if p.requires_grad]
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, grad_clip))
    if global_units > 0 and math.isfinite(grad_norm):
        optimizer.step()
    scheduler.step()
    n_tok = _global_sum(float(mask.sum()))
    return {
        "loss": _global_sum(float(loss.detach())),
        "mean_ratio": _global_sum(stats["mean_ratio"] * float(mask.sum())) / max(n_tok, 1.0),
        "clip_frac": _global_sum(stats["clip_frac"] * float(mask.sum())) / max(n_tok, 1.0),
        "entropy": _global_sum(float((entropy * mask).sum())) / max(n_tok, 1.0),
        "grad_norm": grad_norm,
        "lr": scheduler.get_last_lr()[0],
        "trained_tokens": int(n_tok),
    }


def make_optimizer(model, optim_cfg):
    opt = torch.optim.AdamW(
        model.parameters(),
        lr=optim_cfg.lr,
        betas=tuple(optim_cfg.betas),
        eps=optim_cfg.eps,
        weight_decay=optim_cfg.weight_decay,
    )
    warm = max(optim_cfg.warmup_steps, 0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm) if warm else 1.0)
    return opt, sched
