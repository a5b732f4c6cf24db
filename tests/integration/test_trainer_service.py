"""Trainer and generator as real processes over real sockets: learning, kill-and-resume, SIGTERM."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import free_port

from scalerl.shared.models.tiny_model import ensure_tiny_model

ADDRS = ("request_addr", "rollout_addr", "control_addr", "weights_addr")


@pytest.fixture(scope="module")
def tiny_model():
    return ensure_tiny_model()  # cached under ~/.cache/scalerl (or $SCALERL_CACHE) after the first build


def write_config(tmp_path, model, every=5, prompts=50, **trainer):
    """[trainer] keys as keyword arguments (a dict: a nested table); `every` and `prompts`: the [eval] section's."""
    sock = tmp_path / "s"
    sock.mkdir(exist_ok=True)
    addrs = "".join(f'{a} = "ipc://{sock}/{a[:3]}"\n' for a in ADDRS)
    t = {
        "run_dir": str(tmp_path / "run"),
        "model": str(model),
        "max_steps": 20,
        "checkpoint_every": 5,
        "max_off_policy": 2,
        "peer_timeout_s": 30.0,
        **trainer,
    }
    lines = "".join(f"{k} = {json.dumps(v)}\n" for k, v in t.items() if not isinstance(v, dict))
    extra = "".join(
        f"[trainer.{k}]\n" + "".join(f"{kk} = {json.dumps(vv)}\n" for kk, vv in v.items())
        for k, v in t.items()
        if isinstance(v, dict)
    )
    text = (
        f'[generator]\nmodel = "{model}"\nmax_batch = 128\npeer_timeout_s = 10.0\n'
        f'[wiring]\n{addrs}secret_file = "{t["run_dir"]}/.secret"\n'
        f"[trainer]\n{lines}{extra}"
        f"[eval]\nevery = {every}\nprompts = {prompts}\n"
    )
    path = tmp_path / "cfg.toml"
    path.write_text(text)
    return path


def start(tmp_path, cfg, resume=False, tag=""):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    gen = subprocess.Popen(
        [sys.executable, "-m", "scalerl.cli", "generator", "--config", str(cfg)],
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / f"gen{tag}.log", "w"),
        env=env,
    )
    args = [sys.executable, "-m", "scalerl.cli", "trainer", "--config", str(cfg)] + (["--resume"] if resume else [])
    trainer = subprocess.Popen(
        args, stdout=subprocess.DEVNULL, stderr=open(tmp_path / f"trainer{tag}.log", "w"), env=env
    )
    return gen, trainer


def records(tmp_path, kind):
    path = tmp_path / "run" / "metrics.jsonl"
    if not path.exists():
        return []
    return [r for r in map(json.loads, path.read_text().splitlines()) if r["kind"] == kind]


def finish(procs, timeout=300):
    codes = []
    for p in procs:
        try:
            codes.append(p.wait(timeout=timeout))
        except subprocess.TimeoutExpired:
            p.kill()
            raise
    return codes


def test_kill_and_resume_loses_and_duplicates_no_step(tmp_path, tiny_model):
    cfg = write_config(tmp_path, tiny_model, max_steps=24)
    gen, trainer = start(tmp_path, cfg)
    deadline = time.time() + 240
    while len(records(tmp_path, "train")) < 13 and trainer.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    trainer.send_signal(signal.SIGKILL)  # no chance to checkpoint: the last periodic one (step 10) counts
    trainer.wait()
    gen.wait(timeout=60)  # the generator notices the silent trainer and exits by itself
    assert gen.returncode != 0
    killed_at = max(r["step"] for r in records(tmp_path, "train"))
    assert killed_at >= 13
    retired_at_10 = next(r["npr_retired"] for r in records(tmp_path, "train") if r["step"] == 10)

    gen, trainer = start(tmp_path, cfg, resume=True, tag="2")
    assert finish([trainer, gen]) == [0, 0], (tmp_path / "trainer2.log").read_text()[-2000:]
    steps = [r["step"] for r in records(tmp_path, "train")]
    assert steps == list(range(1, 25))  # every step exactly once, in order
    evals = [r["step"] for r in records(tmp_path, "eval")]
    assert evals == [0, 5, 10, 15, 20, 24]
    resumed = next(r for r in records(tmp_path, "train") if r["step"] == 11)
    assert resumed["npr_retired"] >= retired_at_10  # the prompt pipeline's state came back, not a fresh one
    times = [r["time_s"] for r in records(tmp_path, "train")]
    assert times == sorted(times)  # the clock continues across the resume


def test_sigterm_writes_checkpoint_and_exits_143(tmp_path, tiny_model):
    cfg = write_config(tmp_path, tiny_model, max_steps=500, checkpoint_every=1000)
    gen, trainer = start(tmp_path, cfg)
    deadline = time.time() + 240
    while len(records(tmp_path, "train")) < 3 and time.time() < deadline:
        time.sleep(0.2)
    trainer.send_signal(signal.SIGTERM)
    assert finish([trainer, gen]) == [143, 0]
    last = max(r["step"] for r in records(tmp_path, "train"))
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text().strip() == f"step-{last:06d}"


def test_existing_run_dir_needs_resume(tmp_path, tiny_model):
    cfg = write_config(tmp_path, tiny_model)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text('{"kind": "eval", "step": 0, "gpu_hours": 0, "time_s": 0}\n')
    r = subprocess.run(
        [sys.executable, "-m", "scalerl.cli", "trainer", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and "pass --resume" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_held_out_pass_rate_goes_up(tmp_path, tiny_model):
    # The embedded defaults (lr 2e-5, eps 1e-8, k = 2): measured here, 0.175 -> 0.835 by step 300.
    cfg = write_config(
        tmp_path,
        tiny_model,
        max_steps=300,
        every=100,
        prompts=200,
        checkpoint_every=1000,
        optim={"lr": 2e-5, "eps": 1e-8},
    )
    gen, trainer = start(tmp_path, cfg)
    assert finish([trainer, gen], timeout=1200) == [0, 0]
    evals = records(tmp_path, "eval")
    assert [r["step"] for r in evals] == [0, 100, 200, 300]
    first, best = evals[0]["pass_rate"], max(r["pass_rate"] for r in evals[-2:])
    assert best >= first + 0.3, [r["pass_rate"] for r in evals]


def test_two_rank_trainer_under_torchrun(tmp_path, tiny_model):
    """The service wiring of data parallelism: rank 0 drives, rank 1 follows its broadcast batches."""
    import shutil

    cfg = write_config(tmp_path, tiny_model, max_steps=6, every=3, checkpoint_every=3)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    gen = subprocess.Popen(
        [sys.executable, "-m", "scalerl.cli", "generator", "--config", str(cfg)],
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "gen.log", "w"),
        env=env,
    )
    torchrun = shutil.which("torchrun") or os.path.join(os.path.dirname(sys.executable), "torchrun")
    trainer = subprocess.Popen(
        [
            torchrun,
            "--nproc_per_node",
            "2",
            "--master_port",
            str(free_port()),
            "-m",
            "scalerl.cli",
            "trainer",
            "--config",
            str(cfg),
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "trainer.log", "w"),
        env=env,
    )
    assert finish([trainer, gen]) == [0, 0], (tmp_path / "trainer.log").read_text()[-3000:]
    assert [r["step"] for r in records(tmp_path, "train")] == list(range(1, 7))
    # gpu_hours counts every process: 2 trainer ranks + 1 generator
    last = records(tmp_path, "train")[-1]
    assert last["gpu_hours"] * 3600 / last["time_s"] == pytest.approx(3.0, rel=0.02)
