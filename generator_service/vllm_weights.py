"""Worker side of in-flight weight updates for the vLLM backend.

vLLM's RL path is `init_weight_transfer_engine`, then per update `start_weight_update`, `update_weights`,
`finish_weight_update` (vllm/distributed/weight_transfer/). Its built-in transfer engines (nccl, ipc,
sparse_nccl, sharded_rdt, nccl_m2n) all need CUDA, and the base class's update_weights synchronises an
accelerator, which raises on a CPU-only host. This module registers one more engine with vLLM's own
factory: the generator writes the new tensors to a safetensors file on a tmpfs and sends only its path,
so nothing crossing the process boundary is pickled, and it works on CPU and GPU alike.

Runs inside vLLM's worker process: the backend names `WorkerExtension` as vLLM's worker_extension_cls,
and importing this module there is what registers the engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from safetensors.torch import load_file
from vllm.distributed.weight_transfer.base import WeightTransferEngine, WeightTransferInitInfo, WeightTransferUpdateInfo
from vllm.distributed.weight_transfer.factory import WeightTransferEngineFactory

BACKEND = "scalerl_file"


@dataclass
class FileInitInfo(WeightTransferInitInfo):
    """No rendezvous: the file system is the channel."""


@dataclass
class FileUpdateInfo(WeightTransferUpdateInfo):
    """Fields: path: a safetensors file of Hugging Face-named tensors (any subset of the model)."""

    path: str


class FileWeightTransferEngine(WeightTransferEngine[FileInitInfo, FileUpdateInfo]):
    init_info_cls = FileInitInfo
    update_info_cls = FileUpdateInfo

    def init_transfer_engine(self, init_info: FileInitInfo) -> None:
        pass

    def start_weight_update(self) -> None:
        # The official engines' lifecycle. CPU kernels repack weights after loading and leave an empty
        # `weight` parameter, so a bare model.load_weights would fail; the layerwise reload restores it.
        from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

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

    def update_weights(self, update_info: dict[str, Any]) -> None:
        # Not the base class's: it synchronises an accelerator first, which raises on CPU.
        self.receive_weights(self.parse_update_info(update_info))

    def receive_weights(self, update_info: FileUpdateInfo) -> None:
        self.model.load_weights(load_file(update_info.path).items())

    def shutdown(self) -> None:
        pass


if BACKEND not in WeightTransferEngineFactory._registry:
    WeightTransferEngineFactory.register_engine(BACKEND, FileWeightTransferEngine)


class WorkerExtension:
    """Mixed into vLLM's worker; its import registers the engine above before the worker builds one."""

    def scalerl_num_threads(self) -> int:
        import torch

        return torch.get_num_threads()
