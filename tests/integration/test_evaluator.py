"""The evaluator process (`scalerl evaluator`) against a stand-in trainer: each requested version is scored on
exactly its own weights, with the pass rate the in-trainer evaluation gives for the same weights and seeds."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import time
import weakref

import pytest
import torch

from scalerl.generator_service.heldout import InlineScorer
from scalerl.shared.eval_config import EvalConfig
from scalerl.shared.models.tiny_model import ensure_tiny_model, load_model_dir
from scalerl.shared.tasks.catalog import TaskConfig, load_task
from scalerl.shared.wire.messages import EvalRequest, EvalResult
from scalerl.shared.wire.sockets import ControlServer
from scalerl.shared.wire.weights.zmq import ZmqWeightReceiver, ZmqWeightSender
from scalerl.shared.wiring import RunWiring
from scalerl.trainer_service.config import TrainerConfig
from scalerl.trainer_service.evaluation import ProcessEvaluation
from scalerl.trainer_service.publisher import Publisher

PROMPTS, K = 12, 2


@pytest.fixture(scope="module")
def tiny_model():
    return ensure_tiny_model()


def versions(model) -> dict[int, dict[str, torch.Tensor]]:
    """Three versions whose scores differ: the model, and two noisier copies of it."""
    base = {k: v.detach().clone() for k, v in model.state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    out = {0: base}
    for v, scale in ((20, 0.02), (40, 0.05)):
        out[v] = {
            k: t + scale * torch.randn(t.shape, generator=gen) if t.is_floating_point() else t for k, t in base.items()
        }
    return out


def write_config(tmp_path, tiny_model, generator: str = "") -> tuple[str, str, str]:
    addr = {n: f"ipc://{tmp_path}/{n}" for n in ("request", "rollout", "control", "weights", "evalw")}
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        f"""
[wiring]
request_addr = "{addr["request"]}"
rollout_addr = "{addr["rollout"]}"
control_addr = "{addr["control"]}"
weights_addr = "{addr["weights"]}"
eval_weights_addr = "{addr["evalw"]}"

[generator]
threads = 1
peer_timeout_s = 60.0
{generator}

[trainer]
model = "{tiny_model}"

[eval]
prompts = {PROMPTS}
k = {K}
mode = "process"
"""
    )
    return str(cfg), addr["control"], addr["evalw"]


def results(server: ControlServer, n: int, timeout_s: float) -> dict[int, EvalResult]:
    got: dict[int, EvalResult] = {}
    deadline = time.monotonic() + timeout_s
    while len(got) < n and time.monotonic() < deadline:
        m = server.recv(timeout_ms=100)
        if m is not None and isinstance(m[1], EvalResult):
            got[m[1].version] = m[1]
    return got


def score_by_process(tmp_path, config, control_addr, evalw_addr, weights, timeout_s=60) -> dict[int, EvalResult]:
    """A stand-in trainer: every version published and requested at once, as a trainer racing ahead would, so the
    evaluator must keep the older ones aside and still score each on its own weights, not on the newest."""
    server = ControlServer(control_addr, heartbeat_interval=0.5)
    sender = ZmqWeightSender(evalw_addr, keep_latest=False)  # as the trainer's evaluation channel
    log = open(tmp_path / "evaluator.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "scalerl.cli", "evaluator", "--config", config],
        stderr=log,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    try:
        deadline = time.monotonic() + timeout_s
        while not server.peers:  # a failed start is reported at once, with its log, not after the timeout
            assert proc.poll() is None, (tmp_path / "evaluator.log").read_text()[-3000:]
            assert time.monotonic() < deadline, f"no Ready within {timeout_s} s"
            try:
                server.wait_for_peers(1, timeout_s=1.0)
            except TimeoutError:
                pass
        (peer,) = server.peers
        assert server.peers[peer].role == "evaluator"
        for v in sorted(weights):
            sender.publish(weights[v], v)
            assert server.send(peer, EvalRequest(version=v))
            time.sleep(0.3)  # a training step between two evaluations
        got = results(server, len(weights), timeout_s=timeout_s)
        assert sorted(got) == sorted(weights), (tmp_path / "evaluator.log").read_text()[-3000:]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        server.close()
        sender.close()
        log.close()
    assert proc.returncode == 0
    return got


def test_each_requested_version_is_scored_on_its_own_weights_as_in_trainer(tmp_path, tiny_model):
    torch.set_num_threads(1)
    model, tokenizer = load_model_dir(tiny_model)
    weights = versions(model)
    got = score_by_process(tmp_path, *write_config(tmp_path, tiny_model), weights)
    task = load_task(TaskConfig())
    cfg = TrainerConfig(model=str(tiny_model))
    inline = InlineScorer.from_config(EvalConfig(prompts=PROMPTS, k=K), cfg, tiny_model, tokenizer, task)
    expected = {v: inline.run(w, v) for v, w in weights.items()}
    for v, r in got.items():
        assert r.error == "" and r.n_samples == PROMPTS * K
        assert r.pass_rate == expected[v]["pass_rate"], (v, r.pass_rate, expected[v]["pass_rate"])
    # The versions really score differently, so a mix-up of weights would have shown.
    assert len({r.pass_rate for r in got.values()}) > 1


@pytest.mark.vllm
def test_vllm_evaluator_scores_each_version_on_its_own_weights(tmp_path, tiny_model):
    """The same with generator.backend = "vllm": v40 carries v0's weights again, so a pinned evaluation gives them
    the same score (same seeds), and v20's noisier weights another one."""
    pytest.importorskip("vllm")
    model, _ = load_model_dir(tiny_model)
    weights = versions(model)
    weights[40] = weights[0]
    vllm = 'backend = "vllm"\n[generator.vllm]\ncpu_kv_cache_gib = 1'
    got = score_by_process(tmp_path, *write_config(tmp_path, tiny_model, vllm), weights, timeout_s=240)
    assert all(r.error == "" and r.n_samples == PROMPTS * K for r in got.values())
    assert got[0].pass_rate == got[40].pass_rate != got[20].pass_rate


def test_evaluation_weights_arrive_in_the_generators_dtype_and_none_are_kept_after_delivery(tmp_path, tiny_model):
    """The trainer's side of eval_mode "process": the version streams out as an update does (Publisher.stream, in
    weights_dtype), and once the evaluator has it the channel holds none of its buckets."""
    torch.set_num_threads(1)
    model, _ = load_model_dir(tiny_model)  # FP32, as the trainer's master weights
    wiring = RunWiring(eval_weights_addr=f"ipc://{tmp_path}/evalw", weights_dtype="bfloat16")
    requests: list[EvalRequest] = []
    ev = ProcessEvaluation(wiring, lambda msg: requests.append(msg) or True)
    receiver = None
    try:
        ev.request(
            Publisher(wiring, 0, None).stream(model), 20, lambda *a, **k: None, {"gpu_hours": 0.0, "time_s": 0.0}
        )
        assert [m.version for m in requests] == [20]
        # Held until the evaluator asks (it has not connected yet): only bf16 buckets, half the FP32 model.
        _, _, _, buckets = ev.sender._latest
        refs = [weakref.ref(b) for b in buckets]
        state = model.state_dict()
        assert sum(b.numel() for b in buckets) <= sum(t.numel() * 2 for t in state.values()) + 64 * len(state)
        del buckets
        receiver = ZmqWeightReceiver(wiring.eval_weights_addr, peer_id="evaluator")
        got = receiver.receive(timeout_s=30)
        assert got is not None and got[0] == 20
        assert sorted(got[1]) == sorted(state)
        for name, t in got[1].items():
            assert t.dtype == torch.bfloat16 and torch.equal(t, state[name].to(torch.bfloat16)), name
        deadline = time.monotonic() + 10  # the serving thread drops them after the send; zmq then lets go
        while (ev.sender.holds_buckets() or any(r() is not None for r in refs)) and time.monotonic() < deadline:
            gc.collect()
            time.sleep(0.05)
        assert not ev.sender.holds_buckets() and all(r() is None for r in refs)
    finally:
        if receiver is not None:
            receiver.close()
        ev.close()


def test_a_held_out_prompt_too_long_for_the_model_is_exit_2_naming_it(tmp_path, tiny_model):
    train, val = tmp_path / "train.jsonl", tmp_path / "val.jsonl"
    train.write_text('{"prompt": "2+2=", "answer": "4"}\n{"prompt": "3+3=", "answer": "6"}\n')
    val.write_text('{"prompt": "1+1=", "answer": "2"}\n{"prompt": "' + "1" * 600 + '+1=", "answer": "2"}\n')
    config, _, _ = write_config(tmp_path, tiny_model)
    with open(config, "a") as f:
        f.write(f'\n[trainer.task]\nname = "jsonl"\npath = "{train}"\nval_path = "{val}"\nverifier = "numeric"\n')
    r = subprocess.run(
        [sys.executable, "-m", "scalerl.cli", "evaluator", "--config", config],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2, r.stderr[-2000:]
    assert f"{val}:2" in r.stderr and "max_seq_len 512" in r.stderr
