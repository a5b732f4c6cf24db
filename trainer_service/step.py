"""One optimizer step on a batch, identical on every data-parallel rank.

Rank 0 owns the batch; it is broadcast as tensors (never pickled), so every rank holds all of it. The loss
weights (each token's share of its prompt, sample or token mean, over the global unit count) are computed on
that whole batch before anything is split; then every rank takes its token-balanced share of the rows
(microbatch.plan), runs it as micro-batches with gradient accumulation, and FSDP2 reduces the gradients. The
pieces sum to the loss of the unsplit batch: a 2-rank step equals a 1-rank step, and a micro-batched step the
unsplit one (tests/integration/test_trainer_step.py).
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from .batch import TrainBatch
from .config import StepConfig, TrainerConfig
from .loss import (
    MISMATCH_SUMS,
    LossConfig,
    load_balance_loss,
    mismatch_stats,
    mismatch_sums,
    token_terms,
    unit_weights,
)
from .microbatch import lengths_of, materialise_step, plan, should_pack, unpack
from .moe import MOE_SUMS, RouterHooks, moe_shape, moe_stats, to_model_layout, trace_sums
from .policy import sequence_logprobs

_FIELDS = ("input_ids", "attention_mask", "loss_mask", "gen_logprobs", "adv", "group_ids")
_DTYPES = (torch.long, torch.long, torch.float32, torch.float32, torch.float32, torch.long)


def world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def broadcast_batch(
    batch: TrainBatch | None, device: torch.device | None = None, cpu_group: dist.ProcessGroup | None = None
) -> TrainBatch:
    """Rank 0 sends its batch; other ranks pass None and receive it, on `device` (default CPU). The shape goes
    over `cpu_group` (gloo; None = the default group), the tensors over the device's backend (NCCL on CUDA)."""
    device = device or torch.device("cpu")
    rank, size = world()
    if rank == 0:
        if batch is None:
            raise ValueError("rank 0 broadcasts its batch, so it must pass one")
        if size == 1:
            return _to(batch, device)
        routed = batch.routed_experts
        shape = torch.tensor(
            [*batch.input_ids.shape, *(routed.shape[2:] if routed is not None else (0, 0))], dtype=torch.long
        )
    else:
        shape = torch.tensor([0, 0, 0, 0], dtype=torch.long)
    dist.broadcast(shape, 0, group=cpu_group)
    B, L, n_layers, k = shape.tolist()
    shapes = [(B, L), (B, L), (B, L), (B, L), (B,), (B,)]
    out = []
    for name, dtype, shp in zip(_FIELDS, _DTYPES, shapes):
        if rank == 0:
            assert batch is not None
            t = getattr(batch, name).to(device).contiguous()
        else:
            t = torch.empty(shp, dtype=dtype, device=device)
        dist.broadcast(t, 0)
        out.append(t)
    routed_out = None
    if n_layers:  # the MoE router replay's (B, L, layers, k) experts: host memory, over the CPU group, as bytes
        if rank == 0:
            assert batch is not None and batch.routed_experts is not None
            routed_out = batch.routed_experts.cpu().contiguous()
        else:
            routed_out = torch.empty((B, L, n_layers, k), dtype=torch.int16)
        dist.broadcast(routed_out.view(torch.uint8), 0, group=cpu_group)  # gloo has no int16
    return TrainBatch(out[0], out[1], out[2], out[3], out[4], out[5], routed_experts=routed_out)


def _to(batch: TrainBatch, device: torch.device) -> TrainBatch:
    if batch.input_ids.device == device:
        return batch
    routed = batch.routed_experts  # stays in host memory: each micro-batch moves its own rows (MoeStep)
    moved = [getattr(batch, name).to(device) for name in _FIELDS]
    return TrainBatch(moved[0], moved[1], moved[2], moved[3], moved[4], moved[5], routed_experts=routed)


def _is_fsdp(model) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def train_step(
    model,
    optimizer,
    scheduler,
    batch: TrainBatch,
    loss_cfg: LossConfig,
    step_cfg: StepConfig,
    *,
    grad_clip: float = 1.0,
    router_replay: bool = False,
) -> dict:
    """Forward and backward over this rank's micro-batches, clip at `grad_clip` ([trainer.optim]), optimizer step.
    `router_replay` (MoE models): route the tokens through the generator's experts (moe.py; needs the batch's
    routed_experts). Returns logged statistics (global over ranks). `trainer_step` takes them from a TrainerConfig."""
    rank, size = world()
    device = next(model.parameters()).device
    batch = _to(batch, device)
    host_mask = batch.loss_mask.cpu()  # the step's one copy: loss weights, micro-batch indices, token count
    weights, units = unit_weights(host_mask, batch.group_ids.cpu(), loss_cfg.aggregation)
    weights = weights.to(device) / max(units, 1)
    if size > 1 and not _is_fsdp(model):  # nothing would reduce the gradients: each rank would drift alone
        raise ValueError("at world size > 1 the model must be sharded first (parallel.shard_model)")
    # FSDP2 averages gradients over ranks; each rank's loss is its share of the global sum, so scale it back.
    scale = float(size) if size > 1 else 1.0
    pack = should_pack(model) if step_cfg.pack is None else step_cfg.pack
    lengths = lengths_of(batch)
    mine = plan(lengths, size, step_cfg.max_tokens_per_microbatch, pack)[rank]
    model.train()
    optimizer.zero_grad(set_to_none=False)
    # loss, ratio * mask, clipped, entropy * mask, then loss.MISMATCH_SUMS: sums over this rank's tokens. On the
    # device, read once after the last micro-batch: a copy to the host per micro-batch would wait for its backward.
    sums = torch.zeros(4 + len(MISMATCH_SUMS), dtype=torch.float64, device=device)
    abs_max = torch.zeros((), dtype=torch.float64, device=device)
    moe = MoeStep.of(model, batch, router_replay, loss_cfg, float(sum(lengths)))
    for mb in materialise_step(batch, mine, pack, lengths, host_mask):
        abs_max = micro_batch(model, batch, mb, weights, scale, sums, abs_max, loss_cfg, step_cfg, moe)
    both = torch.cat([sums, abs_max[None]]).cpu()
    sums, abs_max = both[:-1].clone(), both[-1].clone()
    if size > 1:
        dist.all_reduce(sums)  # CPU tensors: gloo, also under "cpu:gloo,cuda:nccl"
        dist.all_reduce(abs_max, op=dist.ReduceOp.MAX)
    moe_line = moe.stats(size) if moe is not None else {}
    grad_norm = _clip(model, grad_clip)
    if units > 0 and math.isfinite(grad_norm):
        optimizer.step()
    scheduler.step()
    n_tok = float(host_mask.sum())
    loss_sum, ratio_sum, clip_sum, ent_sum = sums[:4].tolist()
    return {
        "loss": loss_sum,
        "mean_ratio": ratio_sum / max(n_tok, 1.0),
        "clip_frac": clip_sum / max(n_tok, 1.0),
        "entropy": ent_sum / max(n_tok, 1.0),
        "grad_norm": grad_norm,
        "lr": scheduler.get_last_lr()[0],
        "trained_tokens": int(n_tok),
        **mismatch_stats(sums[4:], float(abs_max), n_tok, loss_cfg),
        **moe_line,
    }


def trainer_step(model, optimizer, scheduler, batch: TrainBatch, cfg: TrainerConfig) -> dict:
    """train_step with the run's [trainer] settings: its loss, [trainer.step], the optimizer's clip, router replay."""
    return train_step(
        model,
        optimizer,
        scheduler,
        batch,
        cfg.loss,
        cfg.step,
        grad_clip=cfg.optim.grad_clip,
        router_replay=cfg.router_replay,
    )


class MoeStep:
    """A step's mixture-of-experts state: the router hooks (replay and recording), and the statistics summed over
    micro-batches (moe.MOE_SUMS, the expert load, the load-balancing term). None for a dense model."""

    def __init__(self, hooks: RouterHooks, batch: TrainBatch, replay: bool, coef: float, tokens: float) -> None:
        self.hooks = hooks
        _, self.n_experts, self.top_k = moe_shape(hooks.routers[0])
        self.routed = batch.routed_experts
        self.replay, self.coef, self.tokens = replay, coef, max(tokens, 1.0)
        device = batch.input_ids.device
        self.sums = torch.zeros(len(MOE_SUMS), dtype=torch.float64, device=device)
        self.load = torch.zeros(self.hooks.n_layers, self.n_experts, dtype=torch.float64, device=device)
        self.lb = torch.zeros((), dtype=torch.float64, device=device)

    @classmethod
    def of(cls, model, batch: TrainBatch, router_replay: bool, loss_cfg: LossConfig, tokens: float):
        hooks = RouterHooks(model)
        if not hooks.routers:
            if router_replay:
                raise ValueError(f"router_replay needs a mixture-of-experts model; {type(model).__name__} is dense")
            return None
        if router_replay and batch.routed_experts is None:
            raise ValueError("router_replay is on, but no rollout of this batch carries routed experts")
        return cls(hooks, batch, router_replay, loss_cfg.load_balance_coef, tokens)

    def gen_routing(self, batch: TrainBatch, mb) -> torch.Tensor | None:
        """The generator's experts of this micro-batch in the model layout (N, layers, k), or None. Built on the
        host, where the step's (B, L, layers, k) experts stay (at 768 x 8k tokens x 48 layers x top-8 they are
        4.8 GB): the copies of the micro-batch's indices to the host are this path's only device syncs."""
        if self.routed is None:
            return None
        rows, index = mb.rows.cpu(), mb.index.cpu()
        valid = batch.attention_mask[mb.rows, : mb.width].cpu() > 0
        layout = to_model_layout(self.routed, rows, index, valid, mb.input_ids.numel())
        return layout.to(mb.input_ids.device, non_blocking=True)

    def stats(self, size: int) -> dict:
        both = torch.cat([self.sums, self.lb[None], self.load.reshape(-1)]).cpu()
        if size > 1:
            dist.all_reduce(both)
        n = len(MOE_SUMS)
        line = moe_stats(both[:n], both[n + 1 :].reshape(self.load.shape))
        if self.coef > 0:
            line["load_balance_loss"] = float(both[n])
        return line


def micro_batch(
    model,
    batch: TrainBatch,
    mb,
    weights,
    scale: float,
    sums,
    abs_max,
    loss_cfg: LossConfig,
    step_cfg,
    moe: MoeStep | None = None,
):
    """Forward and backward of one micro-batch; adds its statistics to `sums` (in place) and returns the new
    abs_max. Nothing here reads device data on the host (tests/unit/test_microbatch.py runs it on the meta
    device, where any such read raises), so on CUDA the host queues micro-batch after micro-batch.
    An MoE model's micro-batch runs under its router hooks, forward and backward (moe.RouterHooks)."""
    if moe is None:
        return _micro_batch(model, batch, mb, weights, scale, sums, abs_max, loss_cfg, step_cfg, None)
    gen = None if mb.empty else moe.gen_routing(batch, mb)
    with moe.hooks.active(gen if moe.replay else None) as trace:
        abs_max = _micro_batch(model, batch, mb, weights, scale, sums, abs_max, loss_cfg, step_cfg, (moe, trace))
    if not mb.empty:
        with torch.no_grad():
            real = None if mb.attention_mask is None else mb.attention_mask.reshape(-1) > 0
            mb_sums, load = trace_sums(trace, gen, real, moe.n_experts)
            moe.sums += mb_sums.to(moe.sums)
            moe.load += load.to(moe.load)
    return abs_max


def _micro_batch(model, batch: TrainBatch, mb, weights, scale: float, sums, abs_max, loss_cfg, step_cfg, moe):
    lp, ent = sequence_logprobs(
        model,
        mb.input_ids,
        mb.attention_mask,
        loss_cfg.fp32_lm_head,
        position_ids=mb.position_ids,
        score_mask=mb.score_mask,
        chunk_tokens=step_cfg.logprob_chunk_tokens,
        score_index=mb.score_index,
    )
    if mb.empty:  # a padding micro-batch: joins the collectives, adds an exact zero
        (lp.sum() * 0.0).backward()
        return abs_max
    logprobs, entropy = unpack(lp, mb), unpack(ent, mb)
    mask = batch.loss_mask[mb.rows, : mb.width]
    gen_logprobs = batch.gen_logprobs[mb.rows, : mb.width]
    per_token, ratio, clipped = token_terms(logprobs, gen_logprobs, batch.adv[mb.rows], mask, loss_cfg)
    loss = torch.where(mask > 0, per_token, 0.0).mul(weights[mb.rows, : mb.width]).sum()
    total = loss
    if moe is not None and moe[0].coef > 0:
        # The Switch term of this micro-batch's tokens, weighted by their share of the step's tokens.
        state, trace = moe
        real = None if mb.attention_mask is None else mb.attention_mask.reshape(-1) > 0
        n_real = mb.input_ids.numel() if real is None else real.sum()
        lb = load_balance_loss(trace.logits, state.n_experts, state.top_k, real) * (n_real / state.tokens)
        state.lb += lb.detach().to(state.lb)
        total = loss + state.coef * lb
    (total * scale).backward()
    with torch.no_grad():
        sums[:4] += torch.stack(
            [loss.detach(), (ratio * mask).sum(), (clipped * mask).sum(), (entropy * mask).sum()]
        ).to(sums)
        mm_sums, mm_max = mismatch_sums(logprobs, gen_logprobs, mask, loss_cfg)
        sums[4:] += mm_sums.to(sums)
        return torch.maximum(abs_max, mm_max.to(abs_max))


def _clip(model, max_norm: float) -> float:
    params = [p for p in model.parameters() if p.requires_grad]
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    full = getattr(norm, "full_tensor", None)  # a DTensor under FSDP2: the global norm once replicated
    return float(full() if full is not None else norm)


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
