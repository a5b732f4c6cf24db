"""Weight updates that cannot leak: the vLLM backend always finishes an update it started, and the LM head travels
in the generators' dtype on every transport.

vLLM is not installed beside these tests (CI's vllm stage has it: tests/integration/test_vllm_backend.py runs the
same failure against a real engine), so the backend's update runs here against a small engine class that records
the calls vLLM's AsyncLLM would get, in their order.
"""

from __future__ import annotations

import asyncio

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from scalerl.generator_service.vllm.backend import VllmBackend
from scalerl.shared.wire.weights.layout import make_update
from scalerl.shared.wire.weights.registry import WEIGHT_TRANSPORT_NAMES, weight_transport
from scalerl.shared.wiring import RunWiring
from scalerl.trainer_service.config import TrainerConfig
from scalerl.trainer_service.publisher import LM_HEAD, Publisher


class RecordingEngine:
    """AsyncLLM's RL methods as the backend calls them; update_weights fails when told to."""

    def __init__(self, fail_with: BaseException | None = None) -> None:
        self.calls: list[tuple] = []
        self.fail_with = fail_with

    async def pause_generation(self, mode: str, clear_cache: bool) -> None:
        self.calls.append(("pause",))

    async def start_weight_update(self) -> None:
        self.calls.append(("start",))

    async def update_weights(self, request) -> None:
        self.calls.append(("update", request))
        if self.fail_with is not None:
            raise self.fail_with

    async def finish_weight_update(self, weight_version: str) -> None:
        self.calls.append(("finish", weight_version))

    async def resume_generation(self) -> None:
        self.calls.append(("resume",))


def backend_on(engine: RecordingEngine, version: int) -> VllmBackend:
    """The backend's update path without starting vLLM: only the attributes _swap reads."""
    backend = VllmBackend.__new__(VllmBackend)
    backend._engine = engine
    backend._version = version
    return backend


def test_finish_weight_update_runs_after_an_injected_failure():
    engine = RecordingEngine(fail_with=RuntimeError("worker lost a tensor"))
    backend = backend_on(engine, 4)
    with pytest.raises(RuntimeError, match="worker lost a tensor"):
        asyncio.run(backend._swap({"path": "/dev/shm/x"}, 5))
    names = [c[0] for c in engine.calls]
    assert names == ["pause", "start", "update", "finish", "resume"]
    # The failed load is not stamped as the new version, and the backend still reports the old one.
    assert ("finish", "4") in engine.calls and backend._version == 4


def test_a_good_update_is_finished_with_its_version():
    engine = RecordingEngine()
    backend = backend_on(engine, 4)
    pause = asyncio.run(backend._swap({"path": "/dev/shm/x"}, 5))
    assert [c[0] for c in engine.calls] == ["pause", "start", "update", "finish", "resume"]
    assert ("finish", "5") in engine.calls and backend._version == 5 and pause >= 0


def untied_model() -> Qwen2ForCausalLM:
    torch.manual_seed(0)
    cfg = Qwen2Config(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        tie_word_embeddings=False,
    )
    return Qwen2ForCausalLM(cfg)


@pytest.mark.parametrize("transport", WEIGHT_TRANSPORT_NAMES)
def test_the_published_lm_head_is_in_the_generators_dtype_even_with_fp32_lm_head(transport):
    model = untied_model()  # FP32 master weights, as the trainer's
    assert TrainerConfig().loss.fp32_lm_head  # the trainer's loss keeps its FP32 head; the generators get bf16
    meta, pairs = Publisher(RunWiring(weights_transport=transport, weights_dtype="bfloat16"), 1, None).stream(model)
    update, _, _ = make_update(meta, 1, transport, "", 256 << 20)
    dtypes = {s.name: s.dtype for s in update.manifest}
    assert dtypes[LM_HEAD] == "bfloat16" and set(dtypes.values()) == {"bfloat16"}
    assert weight_transport(transport).packed == (update.bucket_sizes == (sum(s.nbytes for s in update.manifest),))
    sent = dict(pairs)
    # Bit for bit what the receiver's own cast of an FP32 head would give (torch engine: param.copy_).
    want = torch.empty_like(model.lm_head.weight, dtype=torch.bfloat16).copy_(model.lm_head.weight)
    assert sent[LM_HEAD].dtype == torch.bfloat16 and torch.equal(sent[LM_HEAD], want)
