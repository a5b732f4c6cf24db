"""Devices, process groups and FSDP2 sharding of the trainer's model.

One code path for CPU (gloo) and CUDA (NCCL for tensors, gloo for control messages). The loop calls
`init_distributed(cfg)` once per process, then `shard_model(model, dist, cfg)`.

When FSDP2 wraps the model (`uses_fsdp`): always at world size > 1, always on CUDA (bf16 compute with FP32
master weights needs its MixedPrecisionPolicy), and on CPU whenever param_dtype is bfloat16. A single CPU
process in FP32 (the `scalerl train` default) runs the plain module: FSDP2 over a 1-rank mesh computes the same
numbers (no reduction partner) and was no faster on the tiny model's step (within the noise of a shared 2-core
machine), while its state dicts hold DTensors that publishing and checkpoints would have to gather.
tests/integration/test_trainer_step.py checks that the plain 1-rank step equals the FSDP2 2-rank step.
"""

from __future__ import annotations

import datetime
import logging
import os
import types
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as tdist
from torch import nn

from .config import TrainerConfig

log = logging.getLogger("scalerl.trainer")

# Followers block in a control broadcast while rank 0 waits for generators, evaluates and checkpoints, which
# for a large model takes minutes; the timeout only has to catch a rank that died, so it is generous.
DIST_TIMEOUT_S = float(os.environ.get("SCALERL_DIST_TIMEOUT_S", "1800"))


@dataclass
class Dist:
    rank: int
    world: int
    local_rank: int
    device: torch.device
    # Compute dtype of the sharded model (None: the parameters' own dtype, FP32).
    param_dtype: torch.dtype | None
    # Small control messages (commands, shapes, statistics) go over gloo on CPU tensors; None = the default group,
    # which is gloo already on CPU.
    cpu_group: Any = None
    mesh: Any = None  # the 1-D data-parallel DeviceMesh when FSDP2 shards the model

    @property
    def uses_fsdp(self) -> bool:
        return self.mesh is not None


def device_for(cfg: TrainerConfig, local_rank: int | None = None) -> torch.device:
    local = int(os.environ.get("LOCAL_RANK", "0")) if local_rank is None else local_rank
    if cfg.device == "cpu" or (cfg.device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("trainer.device = 'cuda' but torch sees no CUDA device")
    return torch.device("cuda", local)


def compute_dtype(cfg: TrainerConfig, device: torch.device) -> torch.dtype | None:
    """None = keep FP32. auto = bf16 on CUDA, FP32 on CPU."""
    name = cfg.param_dtype
    if name == "auto":
        name = "bfloat16" if device.type == "cuda" else "float32"
    return torch.bfloat16 if name == "bfloat16" else None


def init_distributed(cfg: TrainerConfig) -> Dist:
    """Join (or, for one process that shards, create) the process group. torchrun sets RANK, WORLD_SIZE,
    LOCAL_RANK and the rendezvous; an already initialised group (tests) is reused."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if tdist.is_available() and tdist.is_initialized():
        world, rank = tdist.get_world_size(), tdist.get_rank()
    device = device_for(cfg, local)
    dtype = compute_dtype(cfg, device)
    if device.type == "cuda":
        # Before the process group: NCCL binds each rank to the current device.
        torch.cuda.set_device(device)
    shard = world > 1 or device.type == "cuda" or dtype is not None
    timeout = datetime.timedelta(seconds=DIST_TIMEOUT_S)
    if shard and not tdist.is_initialized():
        backend = "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"
        device_id = device if device.type == "cuda" else None
        if world == 1 and "MASTER_ADDR" not in os.environ:
            # One process outside torchrun: an in-process store, no port to pick.
            tdist.init_process_group(
                backend, store=tdist.HashStore(), rank=0, world_size=1, timeout=timeout, device_id=device_id
            )
        else:
            tdist.init_process_group(backend, timeout=timeout, device_id=device_id)
    out = Dist(rank=rank, world=world, local_rank=local, device=device, param_dtype=dtype)
    if shard:
        from torch.distributed.device_mesh import init_device_mesh

        # An explicit mesh on CPU too: without one fully_shard picks the CUDA mesh type (pytorch issue 132471).
        out.mesh = init_device_mesh(device.type, (world,))
        if device.type == "cuda":
            out.cpu_group = tdist.new_group(backend="gloo", timeout=timeout)
    return out


def check_choices(cfg: TrainerConfig, dist: Dist) -> None:
    """Refuse, in one line before the model loads, an attention or reduction choice that cannot run or take
    effect here (ConfigError: exit 2). The config-time half, without a device, is TrainerConfig.check."""
    from scalerl.shared.config import ConfigError

    if cfg.attn_implementation == "flash_attention_2" and dist.device.type != "cuda":
        raise ConfigError(
            f"trainer.attn_implementation 'flash_attention_2' needs CUDA; this rank runs on {dist.device}"
        )
    if cfg.attn_implementation == "flex_attention":
        try:
            import torch.nn.attention.flex_attention  # noqa: F401
        except ImportError:
            raise ConfigError(
                f"trainer.attn_implementation 'flex_attention' needs torch >= 2.5, not {torch.__version__}"
            ) from None
    if cfg.grad_reduce_dtype != "float32" and dist.world < 2:
        raise ConfigError(
            f"trainer.grad_reduce_dtype '{cfg.grad_reduce_dtype}' needs more than one rank: one rank reduces nothing"
        )


def mp_policy(dist: Dist, cfg: TrainerConfig):
    """FSDP2's MixedPrecisionPolicy: compute in dist.param_dtype, reduce-scatter gradients in grad_reduce_dtype."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    reduce = torch.bfloat16 if cfg.grad_reduce_dtype == "bfloat16" else torch.float32
    return MixedPrecisionPolicy(param_dtype=dist.param_dtype, reduce_dtype=reduce)


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The transformer blocks: `model.model.layers` for Qwen2/Qwen3/Llama-style models, else the model's
    `_no_split_modules` classes."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if isinstance(layers, nn.ModuleList) and len(layers) > 0:
        return list(layers)
    names = set(getattr(model, "_no_split_modules", None) or [])
    found = [m for m in model.modules() if type(m).__name__ in names]
    if not found:
        raise ValueError(f"cannot find the decoder layers of {type(model).__name__} to shard")
    return found


def shard_model(model: nn.Module, dist: Dist, cfg: TrainerConfig) -> nn.Module:
    """Move the model to its device; activation checkpointing per decoder layer when switched on; FSDP2 per
    decoder layer then the root, when `dist.uses_fsdp`. Returns the same module, now an FSDPModule if sharded."""
    model.to(dist.device)
    if cfg.activation_checkpointing:
        enable = getattr(model, "gradient_checkpointing_enable", None)
        if enable is None:
            raise ValueError(f"{type(model).__name__} has no gradient_checkpointing_enable")
        # Non-reentrant: the reentrant variant breaks under FSDP2's hooks and with inputs that need no grad.
        # Done before fully_shard, as transformers' own per-layer switch: parameter names do not change, so
        # checkpoints and published weights keep their keys.
        enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if not dist.uses_fsdp:
        return model
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    from .policy import LOGPROB_METHOD, token_logprobs

    mp = mp_policy(dist, cfg)
    for layer in decoder_layers(model):
        fully_shard(layer, mesh=dist.mesh, mp_policy=mp)
    fully_shard(model, mesh=dist.mesh, mp_policy=mp)
    # The logprob path runs the body and the (FP32) head in one method of the root: registered, it unshards the
    # root's parameters (embeddings, final norm, LM head) around the call like forward() does.
    setattr(model, LOGPROB_METHOD, types.MethodType(token_logprobs, model))
    register_fsdp_forward_method(model, LOGPROB_METHOD)
    return model


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's weights as ordinary CPU tensors. Sharded models gather: a collective, so every rank calls
    it (rank 0 may then publish or save what it got)."""
    from torch.distributed.fsdp import FSDPModule

    if not isinstance(model, FSDPModule):
        return {k: v.detach() for k, v in model.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
