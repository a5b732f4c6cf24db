"""Turn groups of rollouts into one padded training batch.

A group is the n completions of one prompt. Groups whose rewards are all equal (zero variance) carry no
learning signal under group-relative advantages, so with the filter on they are dropped and counted.
Tokens the generator forced (interruption text) are not the policy's choices: they stay in the sequence as
context but are masked out of the loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from scalerl.shared.wire.messages import Rollout

from .advantages import AdvNorm, advantages, zero_variance_groups


@dataclass
class TrainBatch:
    input_ids: torch.Tensor  # (B, L) prompt + completion, right-padded with pad_id
    attention_mask: torch.Tensor  # (B, L)
    loss_mask: torch.Tensor  # (B, L) 1 at sampled completion tokens
    gen_logprobs: torch.Tensor  # (B, L) generator log pi_gen at those positions, 0 elsewhere
    adv: torch.Tensor  # (B,)
    group_ids: torch.Tensor  # (B,) 0..G-1
    # (B, L, MoE layers, k) int16: the experts the generator routed each token to (router replay, moe.py);
    # moe.NO_EXPERT (-1) where it sent none. None when no rollout carried routed experts.
    routed_experts: torch.Tensor | None = None

    @property
    def n_groups(self) -> int:
        return int(self.group_ids.max()) + 1 if self.group_ids.numel() else 0

    def select_groups(self, keep: torch.Tensor) -> "TrainBatch":
        """The sub-batch of the given group indices, renumbered 0..len(keep)-1 (a data-parallel shard)."""
        rows = torch.isin(self.group_ids, keep)
        remap = torch.full((self.n_groups,), -1, dtype=torch.long)
        remap[keep] = torch.arange(len(keep))
        return TrainBatch(
            self.input_ids[rows],
            self.attention_mask[rows],
            self.loss_mask[rows],
            self.gen_logprobs[rows],
            self.adv[rows],
            remap[self.group_ids[rows]],
            None if self.routed_experts is None else self.routed_experts[rows],
        )


def batch_stats(groups: list[list[Rollout]], version: int) -> dict:
    """Per-step statistics over every rollout used this step (before filtering)."""
    rollouts = [r for g in groups for r in g]
    stale = np.array([version - int(r.versions.min()) if len(r.versions) else 0 for r in rollouts])
    return {
        "reward_mean": float(np.mean([r.reward for r in rollouts])),
        "truncation_rate": float(np.mean([r.finish_reason == "length" for r in rollouts])),
        "interruption_rate": float(np.mean([r.finish_reason == "interrupted" for r in rollouts])),
        "staleness_mean": float(stale.mean()),
        "staleness_max": int(stale.max()),
        "tokens": int(sum(len(r.completion_ids) for r in rollouts)),
        "samples": len(rollouts),
        # A verifier that raises scores the sample 0; the count shows a broken verifier as such (scalerl train warns).
        "verifier_errors": sum("verifier_error" in r.verifier_info for r in rollouts),
        "completion_len_mean": float(np.mean([len(r.completion_ids) for r in rollouts])),
        # Without the forced interruption text: what the policy itself wrote, the length it can learn to change.
        "sampled_len_mean": float(np.mean([len(r.completion_ids) - int(np.sum(r.forced)) for r in rollouts])),
    }


def build_batch(groups: list[list[Rollout]], adv_norm: AdvNorm, zero_variance_filter: bool, pad_id: int = 0):
    """Returns (TrainBatch or None when nothing is left to learn from, n_zero_variance_groups)."""
    rewards = torch.tensor([r.reward for g in groups for r in g], dtype=torch.float32)
    gid = torch.tensor([k for k, g in enumerate(groups) for _ in g], dtype=torch.long)
    zero = zero_variance_groups(rewards, gid)
    n_zero = int(sum(bool(zero[gid == k].all()) for k in range(len(groups))))
    rollouts = [r for g in groups for r in g]
    keep = [i for i in range(len(rollouts)) if not (zero_variance_filter and bool(zero[i]))]
    if not keep:
        return None, n_zero
    # Normalised over the effective batch, the groups the filter keeps: a dropped group's advantages are exact zeros,
    # and counting them in the batch std scaled every kept advantage by sqrt(all groups / kept groups), so the step
    # grew as more prompts were solved (x4 with 15 of 16 groups solved).
    rows = torch.tensor(keep, dtype=torch.long)
    adv = advantages(rewards[rows], gid[rows], adv_norm)
    # Renumber the surviving groups densely.
    kept_groups = sorted({int(gid[i]) for i in keep})
    dense = {g: k for k, g in enumerate(kept_groups)}
    L = max(len(rollouts[i].prompt_ids) + len(rollouts[i].completion_ids) for i in keep)
    B = len(keep)
    input_ids = torch.full((B, L), pad_id, dtype=torch.long)
    attention = torch.zeros((B, L), dtype=torch.long)
    loss_mask = torch.zeros((B, L), dtype=torch.float32)
    gen_lp = torch.zeros((B, L), dtype=torch.float32)
    for row, i in enumerate(keep):
        r = rollouts[i]
        p, c = len(r.prompt_ids), len(r.completion_ids)
        input_ids[row, :p] = torch.from_numpy(np.asarray(r.prompt_ids, dtype=np.int64))
        input_ids[row, p : p + c] = torch.from_numpy(np.asarray(r.completion_ids, dtype=np.int64))
        attention[row, : p + c] = 1
        loss_mask[row, p : p + c] = torch.from_numpy(1.0 - np.asarray(r.forced, dtype=np.float32))
        gen_lp[row, p : p + c] = torch.from_numpy(np.array(r.logprobs, dtype=np.float32))
    batch = TrainBatch(
        input_ids,
        attention,
        loss_mask,
        gen_lp,
        adv,
        torch.tensor([dense[int(gid[i])] for i in keep], dtype=torch.long),
        routed_experts_tensor([rollouts[i] for i in keep], L),
    )
    return batch, n_zero


def routed_experts_tensor(rollouts: list[Rollout], L: int) -> torch.Tensor | None:
    """(B, L, layers, k) int16 of the rollouts' routed experts (rows as given), -1 where a rollout has none;
    None when none has any. Rollouts of different (layers, k) cannot share a batch: ValueError, one line."""
    shapes = {r.routed_experts.shape[1:] for r in rollouts if r.routed_experts is not None}
    if not shapes:
        return None
    if len(shapes) > 1:
        raise ValueError(f"rollouts carry routed experts of different (layers, k): {sorted(shapes)}")
    (layers, k) = shapes.pop()
    out = torch.full((len(rollouts), L, layers, k), -1, dtype=torch.int16)
    for row, r in enumerate(rollouts):
        if r.routed_experts is not None:
            a = r.routed_experts.array()
            out[row, : a.shape[0]] = torch.from_numpy(a.astype(np.int16))
    return out
