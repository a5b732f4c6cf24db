"""Worker side of in-flight weight updates for the vLLM backend.

vLLM's RL path is `init_weight_transfer_engine`, then per update `start_weight_update`, `update_weights`,
`finish_weight_update` (vllm/distributed/weight_transfer/). Its built-in transfer engines (nccl, ipc,
sparse_nccl, sharded_rdt, nccl_m2n) all need CUDA, and the base class's update_weights synchronises an
accelerator, which raises on a CPU-only host. This module registers two more engines with vLLM's own factory:

- `scalerl_file`: the generator writes the new tensors to a safetensors file on a tmpfs and sends only its
  path, so nothing crossing the process boundary is pickled (the zmq and dist transports, CPU and GPU alike).
- `scalerl_gloo`: vLLM's `nccl` engine with gloo in place of NCCL, for `weights_transport = "vllm-gloo"`. Same
  init info (NCCLWeightTransferInitInfo: master address and port, rank_offset, world_size, packed geometry), same
  rank rule (rank_offset + dp_index x TP*PP + rank), same update info (names, dtype_names, shapes) and the same
  packed chunks (shared/wire/weights/layout.py packed_layout, vLLM's cut), received from the trainer's broadcasts.
  What runs on CPU here is therefore the whole `vllm-nccl` protocol except PyNcclCommunicator itself.

Runs inside vLLM's worker process: the backend names `WorkerExtension` as vLLM's worker_extension_cls,
and importing this module there is what registers the engines.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from safetensors.torch import load_file
from vllm.distributed.weight_transfer.base import WeightTransferEngine, WeightTransferInitInfo, WeightTransferUpdateInfo
from vllm.distributed.weight_transfer.factory import WeightTransferEngineFactory
from vllm.distributed.weight_transfer.nccl_common import NCCLWeightTransferInitInfo
from vllm.distributed.weight_transfer.nccl_engine import NCCLWeightTransferUpdateInfo
from vllm.distributed.weight_transfer.packed_tensor import unpack_tensor

from scalerl.shared.wire.weights.dist import SRC_RANK, open_weight_group
from scalerl.shared.wire.weights.layout import packed_layout

BACKEND = "scalerl_file"
GLOO_BACKEND = "scalerl_gloo"


@dataclass
class FileInitInfo(WeightTransferInitInfo):
    """No rendezvous: the file system is the channel."""


@dataclass
class FileUpdateInfo(WeightTransferUpdateInfo):
    """Fields: path: a safetensors file of Hugging Face-named tensors (any subset of the model)."""

    path: str


def repack_moe_on_update(model: Any) -> int:
    """Make an MoE layer's weight update end in the kernel layout on CPU, as its first load does; returns how
    many layers it armed (idempotent: a layer armed once stays armed).

    vLLM 0.32's UnquantizedFusedMoEMethod._setup_kernel (layers/fused_moe/unquantized_fused_moe_method.py) runs
    `moe_kernel.fused_experts.process_weights_after_loading(layer)` only when `moe_kernel is None`, i.e. at the
    first load: a weight update copies the new experts into the parameters but skips that step. On CUDA the
    default step is a no-op; on CPU it is CPUUnquantizedExperts' prepack into the grouped-gemm layout
    (layers/fused_moe/experts/cpu_moe.py, cpu_prepack_moe_weight), so after an update the kernel would read
    unpacked weights as packed ones and every token's logprobs would be off (by 0.1 nats on the tiny MoE). Each
    MoE layer's quant method gets the step back after its own processing on an update; the layerwise reload then
    copies the packed tensors into the kernel's storage. CPU only: no GPU ran this (docs/vllm.md)."""
    from vllm.model_executor.layers.fused_moe.fused_moe_method_base import FusedMoEMethodBase
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return 0
    armed = 0
    for module in model.modules():
        method = getattr(module, "quant_method", None)
        if not isinstance(method, FusedMoEMethodBase) or getattr(method, "_scalerl_repacks", False):
            continue
        original = method.process_weights_after_loading

        def process(layer: Any, _method: Any = method, _original: Any = original) -> None:
            updating = getattr(_method, "moe_kernel", None) is not None
            _original(layer)
            if updating:
                _method.moe_kernel.fused_experts.process_weights_after_loading(layer)

        method.process_weights_after_loading = process
        method._scalerl_repacks = True
        armed += 1
    return armed


class _LayerwiseReload:
    """The official engines' lifecycle, with a fix for vLLM 0.32 on CPU."""

    model: Any
    model_config: Any

    def start_weight_update(self) -> None:
        # CPU kernels repack weights after loading and leave an empty `weight` parameter, so a bare
        # model.load_weights would fail; the layerwise reload restores it.
        from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

        repack_moe_on_update(self.model)
        initialize_layerwise_reload(self.model)

    def finish_weight_update(self) -> None:
        from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

        finalize_layerwise_reload(self.model, self.model_config)
        # vLLM 0.32 on CPU: a tied lm_head loads no weights of its own, so the reload never repacks it and
        # logits would still come from the old embedding.
        for module in self.model.modules():
            if isinstance(module, ParallelLMHead) and hasattr(module, "cpu_linear"):
                module.quant_method.process_weights_after_loading(module)


class FileWeightTransferEngine(_LayerwiseReload, WeightTransferEngine[FileInitInfo, FileUpdateInfo]):
    init_info_cls = FileInitInfo
    update_info_cls = FileUpdateInfo

    def init_transfer_engine(self, init_info: FileInitInfo) -> None:
        pass

    def update_weights(self, update_info: dict[str, Any]) -> None:
        # Not the base class's: it synchronises an accelerator first, which raises on CPU.
        self.receive_weights(self.parse_update_info(update_info))

    def receive_weights(self, update_info: FileUpdateInfo) -> None:
        self.model.load_weights(load_file(update_info.path).items())

    def shutdown(self) -> None:
        pass


def worker_rank(parallel_config: Any, rank_offset: int) -> int:
    """This worker's rank in the weight group: vLLM's rule (nccl_common.worker_init_process_group), unique across
    its data-parallel engines."""
    return parallel_config.data_parallel_index * parallel_config.world_size + parallel_config.rank + rank_offset


class GlooWeightTransferEngine(
    _LayerwiseReload, WeightTransferEngine[NCCLWeightTransferInitInfo, NCCLWeightTransferUpdateInfo]
):
    """vLLM's NCCLWeightTransferEngine with a gloo group: see the module docstring."""

    init_info_cls = NCCLWeightTransferInitInfo
    update_info_cls = NCCLWeightTransferUpdateInfo

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.group: Any = None
        self.packed = False
        self.packed_buffer_size_bytes = 0

    def init_transfer_engine(self, init_info: NCCLWeightTransferInitInfo) -> None:
        if init_info.nccl_unique_id_b64:
            raise ValueError(f"{GLOO_BACKEND}: a gloo group meets at master_address:master_port, not an NCCL id")
        self.packed = init_info.packed
        self.packed_buffer_size_bytes = init_info.packed_buffer_size_bytes
        rank = worker_rank(self.parallel_config, init_info.rank_offset)
        # Blocks until the trainer (rank 0, which hosts the store) and every other worker have joined.
        self.group = open_weight_group(
            f"tcp://{init_info.master_address}:{init_info.master_port}", rank, init_info.world_size, backend="gloo"
        )

    def update_weights(self, update_info: dict[str, Any]) -> None:
        # Not the base class's: it synchronises an accelerator first, which raises on CPU.
        self.receive_weights(self.parse_update_info(update_info))

    def receive_weights(self, update_info: NCCLWeightTransferUpdateInfo) -> None:
        if self.group is None:
            raise RuntimeError(f"{GLOO_BACKEND}: call init_weight_transfer_engine first")
        meta = {
            name: torch.empty(shape, dtype=getattr(torch, dtype), device="meta")
            for name, dtype, shape in zip(update_info.names, update_info.dtype_names, update_info.shapes)
        }
        if not self.packed:  # one broadcast per tensor, as the nccl engine's unpacked path
            for name, t in meta.items():
                weight = torch.empty(t.shape, dtype=t.dtype)
                self.group.broadcast(weight, SRC_RANK).wait()
                self.model.load_weights([(name, weight)])
            return
        sizes, specs = packed_layout(meta, self.packed_buffer_size_bytes)
        for i, size in enumerate(sizes):
            chunk = [s for s in specs if s.bucket == i]
            # A fresh buffer per chunk: the layerwise reload may keep the tensors it was given until the layer
            # is complete.
            buf = torch.empty(size, dtype=torch.uint8)
            self.group.broadcast(buf, SRC_RANK).wait()
            self.model.load_weights(
                unpack_tensor(
                    buf,
                    [s.name for s in chunk],
                    [list(s.shape) for s in chunk],
                    [meta[s.name].dtype for s in chunk],
                    [s.nbytes for s in chunk],
                )
            )

    def shutdown(self) -> None:
        self.group = None


for _name, _engine in ((BACKEND, FileWeightTransferEngine), (GLOO_BACKEND, GlooWeightTransferEngine)):
    if _name not in WeightTransferEngineFactory._registry:
        WeightTransferEngineFactory.register_engine(_name, _engine)


class WorkerExtension:
    """Mixed into vLLM's worker; its import registers the engine above before the worker builds one."""

    def scalerl_num_threads(self) -> int:
        import torch

        return torch.get_num_threads()
