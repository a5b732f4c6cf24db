"""Tensor dtypes by the names the wire protocol and the configs use, mapped to torch once for every package.

The names (and byte sizes) live in messages.DTYPE_SIZES, which must stay torch-free for the CLI; this module is
the torch side of the same table.
"""

from __future__ import annotations

import torch

from scalerl.shared.wire.messages import DTYPE_SIZES, TensorDtype

TORCH_DTYPES: dict[str, torch.dtype] = {name: getattr(torch, name) for name in DTYPE_SIZES}
DTYPE_NAMES: dict[torch.dtype, TensorDtype] = {getattr(torch, name): name for name in DTYPE_SIZES}
# The floating types a model and its KV cache may be cast to.
MODEL_DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float16")
