"""Checks new weights against the model before any of them is loaded (shared by every backend).

An update is all or nothing: a bad name or shape anywhere refuses the whole update, so a backend never runs
on a half-updated model. Errors are one line naming the offending tensor.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch


def checked_tensors(
    named_tensors: Mapping[str, Any] | Iterable[tuple[str, Any]], shapes: Mapping[str, tuple[int, ...]]
) -> list[tuple[str, torch.Tensor]]:
    """(name, tensor) pairs, each a known parameter of the right shape; KeyError/ValueError otherwise."""
    items = list(named_tensors.items() if isinstance(named_tensors, Mapping) else named_tensors)
    out = []
    for name, value in items:
        shape = shapes.get(name)
        if shape is None:
            raise KeyError(f"update_weights: unknown parameter {name!r}")
        try:
            tensor = torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(f"update_weights: {name!r} is not a tensor ({type(value).__name__})") from None
        if tuple(tensor.shape) != tuple(shape):
            raise ValueError(f"update_weights: {name!r} has shape {tuple(tensor.shape)}, expected {tuple(shape)}")
        out.append((name, tensor))
    return out
