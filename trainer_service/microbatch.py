"""Cut one step's batch into micro-batches by token budget, balanced across data-parallel ranks.

Pure functions of the batch: every rank holds the whole (broadcast) batch and computes the same plan, so no
message is needed to agree on it. Sequences are never cut (the loss terms of a sequence depend on all of it),
but a prompt's samples may land on different ranks and micro-batches: the loss weights are computed over the
whole step before splitting (loss.unit_weights), so the pieces sum to the unsplit loss.

Every rank gets the same number of micro-batches (empty ones pad the short ranks): FSDP2 all-gathers and
reduce-scatters in every forward and backward, and a rank that runs one fewer would leave the others waiting.

Two layouts of a micro-batch's sequences:
- packed: one row of concatenated sequences, position ids restarting at 0 per sequence and no attention mask.
  transformers (5.x) turns such position ids into a block-diagonal causal mask for sdpa and eager, and into
  varlen (cu_seqlens) calls for flash-attention; the budget counts real tokens, padding costs nothing.
- padded: rows sorted by length, right-padded to the longest row of the micro-batch; the budget counts
  rows x longest row, so similar lengths share a micro-batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .batch import TrainBatch

# Attention implementations whose kernels skip the masked-off blocks of a packed row (varlen): the others compute
# the full (tokens x tokens) product of the row and mask it, so packing k sequences costs ~k times their attention.
VARLEN_ATTENTION = ("flash_attention_2", "flash_attention_3", "flex_attention")


def should_pack(model) -> bool:
    impl = getattr(getattr(model, "config", None), "_attn_implementation", None)
    return impl in VARLEN_ATTENTION


@dataclass
class MicroBatch:
    """Model inputs for some rows of the step batch, and where each row's tokens sit in them."""

    rows: torch.Tensor  # (n,) indices into the step batch; empty for a padding micro-batch
    input_ids: torch.Tensor  # (R, T)
    attention_mask: torch.Tensor | None  # (R, T); None when packed
    position_ids: torch.Tensor | None  # (R, T); restarting per sequence when packed
    score_mask: torch.Tensor  # (R, T) bool: tokens whose log-probability the loss needs
    # (n, Lmax) flat index into the (R * T) model layout of token t of row i (0 past the row's end: masked there).
    index: torch.Tensor
    width: int  # Lmax: the longest row of this micro-batch, in the step batch's columns
    # The true entries of score_mask[:, 1:] as flat positions (policy.sequence_logprobs' score_index).
    score_index: torch.Tensor | None = None

    @property
    def empty(self) -> bool:
        return self.rows.numel() == 0


def plan(lengths: list[int], n_ranks: int, max_tokens: int, pack: bool) -> list[list[list[int]]]:
    """plan[rank][k] = the step-batch rows of rank's k-th micro-batch; every rank has the same number of
    micro-batches, the padding ones empty. max_tokens 0 = one micro-batch per rank.

    Ranks get rows longest first, each to the rank with the fewest tokens so far (ties: the lowest rank), which
    balances tokens within one sequence length. Within a rank: first-fit decreasing into bins of max_tokens real
    tokens when packed; consecutive runs of the length-sorted rows when padded (a run's cost is rows x its first,
    longest, row)."""
    if n_ranks < 1:
        raise ValueError("n_ranks must be >= 1")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    per_rank: list[list[int]] = [[] for _ in range(n_ranks)]
    load = [0] * n_ranks
    for i in order:
        r = min(range(n_ranks), key=lambda k: (load[k], k))
        per_rank[r].append(i)
        load[r] += lengths[i]
    out: list[list[list[int]]] = []
    for rows in per_rank:
        if max_tokens <= 0 or not rows:
            out.append([sorted(rows)] if rows else [])
            continue
        bins: list[list[int]] = []
        if pack:
            used: list[int] = []
            for i in rows:  # already longest first
                k = next((b for b, u in enumerate(used) if u + lengths[i] <= max_tokens), None)
                if k is None:
                    bins.append([i])
                    used.append(lengths[i])
                else:
                    bins[k].append(i)
                    used[k] += lengths[i]
        else:
            for i in rows:
                if bins and (len(bins[-1]) + 1) * lengths[bins[-1][0]] <= max_tokens:
                    bins[-1].append(i)
                else:
                    bins.append([i])
        out.append([sorted(b) for b in bins])
    n = max(len(b) for b in out)
    return [b + [[] for _ in range(n - len(b))] for b in out]


def lengths_of(batch: TrainBatch) -> list[int]:
    return [int(x) for x in batch.attention_mask.sum(1).tolist()]


def materialise(batch: TrainBatch, rows: list[int], pack: bool, lengths: list[int] | None = None) -> MicroBatch:
    """The model inputs of the given rows. An empty list gives a 2-token dummy that the step runs with weight 0,
    so that this rank still joins FSDP2's collectives."""
    return materialise_step(batch, [rows], pack, lengths)[0]


def materialise_step(
    batch: TrainBatch,
    micro_rows: list[list[int]],
    pack: bool,
    lengths: list[int] | None = None,
    host_loss_mask: torch.Tensor | None = None,
) -> list[MicroBatch]:
    """materialise for every micro-batch of a step at once. Every index (rows, the packed tokens, the scored
    tokens) is built on the host, from the lengths and a host copy of the loss mask, and reaches the device in one
    copy: on CUDA, a device tensor built from a list, a boolean-mask selection or nonzero() each stall the host
    until the GPU catches up, and the per-micro-batch path did several (docs/scaling.md, "Host-device syncs")."""
    lengths = lengths_of(batch) if lengths is None else lengths
    device = batch.input_ids.device
    host_mask = (batch.loss_mask if host_loss_mask is None else host_loss_mask).cpu()
    parts: list[torch.Tensor] = []  # host long tensors, in order, for the one copy
    shapes: list[tuple | None] = []
    for rows in micro_rows:
        if not rows:
            shapes.append(None)
            continue
        lens = [lengths[i] for i in rows]
        width = max(lens)
        idx = torch.tensor(rows, dtype=torch.long)
        # Scoring needs a token's predecessor in the same sequence: the loss never covers a sequence's first token
        # (the prompt is at least one token), and zeroing column 0 makes that hold in a packed row too.
        score = host_mask[idx, :width] > 0
        score[:, 0] = False
        cols = torch.arange(width)
        if pack:
            keep = cols[None, :] < torch.tensor(lens)[:, None]  # right-padded: the first lens[i] columns
            starts = torch.tensor([0] + lens[:-1], dtype=torch.long).cumsum(0)
            index = (starts[:, None] + cols[None, :]).clamp(max=sum(lens) - 1) * keep
            taken = keep.reshape(-1).nonzero()[:, 0]
            model_score = score.reshape(-1)[taken][None]
            positions = torch.cat([torch.arange(n) for n in lens])
        else:
            index = torch.arange(len(rows))[:, None] * width + cols[None, :]
            taken = positions = torch.zeros(0, dtype=torch.long)
            model_score = score
        score_index = model_score[:, 1:].reshape(-1).nonzero()[:, 0]
        group = [idx, index.reshape(-1), taken, positions, model_score.reshape(-1).long(), score_index]
        parts += group
        shapes.append((len(rows), width, tuple(model_score.shape), [t.numel() for t in group]))
    moved: list[torch.Tensor] = []
    if parts:
        flat = torch.cat(parts)
        # Pinned and non-blocking on CUDA: the host goes on, and the stream orders the copy before its readers.
        flat = flat.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else flat.to(device)
        moved = list(flat.split([t.numel() for t in parts]))
    out = []
    for shape in shapes:
        if shape is None:
            ids = torch.zeros((1, 2), dtype=torch.long, device=device)
            out.append(
                MicroBatch(
                    rows=torch.zeros(0, dtype=torch.long, device=device),
                    input_ids=ids,
                    attention_mask=None,
                    position_ids=None,
                    score_mask=torch.ones_like(ids, dtype=torch.bool),
                    index=torch.zeros((0, 0), dtype=torch.long, device=device),
                    width=0,
                    score_index=torch.zeros(1, dtype=torch.long, device=device),
                )
            )
            continue
        n, width, score_shape, _ = shape
        idx, index, taken, positions, model_score, score_index = moved[:6]
        moved = moved[6:]
        ids = batch.input_ids[idx, :width]
        out.append(
            MicroBatch(
                rows=idx,
                input_ids=ids.reshape(-1)[taken][None] if pack else ids,
                attention_mask=None if pack else batch.attention_mask[idx, :width],
                position_ids=positions[None] if pack else None,
                score_mask=model_score.reshape(score_shape).bool(),
                index=index.reshape(n, width),
                width=width,
                score_index=score_index,
            )
        )
    return out


def unpack(values: torch.Tensor, mb: MicroBatch) -> torch.Tensor:
    """Per-token values in the model layout (R, T) -> (n, width) in the step batch's row layout."""
    return values.reshape(-1)[mb.index]
