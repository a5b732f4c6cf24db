"""Advantages from grouped rewards, as pure functions.

Every prompt has a group of n samples. The advantage of a sample is its reward minus its group's mean; it is
then normalised (ScaleRL default: by the standard deviation of all advantages in the batch, "batch"; GRPO's
per-group std is "prompt"; "none" leaves it centred only).
"""

from __future__ import annotations

from typing import Literal

import torch

AdvNorm = Literal["batch", "prompt", "none"]
EPS = 1e-6


def group_means(rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """Each sample's group mean reward. group_ids are 0..G-1."""
    n_groups = int(group_ids.max()) + 1 if group_ids.numel() else 0
    sums = torch.zeros(n_groups, dtype=rewards.dtype).index_add_(0, group_ids, rewards)
    counts = torch.zeros(n_groups, dtype=rewards.dtype).index_add_(0, group_ids, torch.ones_like(rewards))
    return (sums / counts.clamp_min(1))[group_ids]


def zero_variance_groups(rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """Mask of samples whose whole group got one reward: their advantage is 0, they teach nothing."""
    rewards = rewards.double()  # squares of float32 rewards overflow past ~1.8e19
    mean = group_means(rewards, group_ids)
    spread = group_means((rewards - mean) ** 2, group_ids)
    return spread <= EPS**2


def advantages(rewards: torch.Tensor, group_ids: torch.Tensor, norm: AdvNorm = "batch") -> torch.Tensor:
    """Advantages in the rewards' dtype, computed in float64: float32 group sums and squares of large rewards
    overflowed (inf - inf, inf / inf: NaN advantages and a NaN loss for the whole step)."""
    return _advantages(rewards.double(), group_ids, norm).to(rewards.dtype)


def _advantages(rewards: torch.Tensor, group_ids: torch.Tensor, norm: AdvNorm) -> torch.Tensor:
    centred = rewards - group_means(rewards, group_ids)
    if norm == "none" or centred.numel() == 0:
        return centred
    if norm == "batch":
        std = centred.std(unbiased=False) if centred.numel() > 1 else centred.new_tensor(0.0)
        return centred / (std + EPS)
    if norm == "prompt":
        std = group_means(centred**2, group_ids).sqrt()
        return centred / (std + EPS)
    raise ValueError(f"unknown advantage normalisation {norm!r}")
