"""`scalerl train --set run.trainer_procs=2` on CPU: two gloo ranks under torchrun, in real processes.

The children's environments are read back from /proc and compared with `--dry-run --json`. CUDA_VISIBLE_DEVICES
names four devices this machine does not have: torch still finds no CUDA and runs on CPU, while the plan has
blocks to hand out, so the test sees each child get its own.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import descendants

from scalerl.shared.models.tiny_model import ensure_tiny_model

FAKE_GPUS = "4,5,6,7"


@pytest.fixture(scope="module")
def tiny_model():
    return ensure_tiny_model()


def scalerl(*args):
    return [sys.executable, "-m", "scalerl.cli", *map(str, args)]


def run_env():
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    return {**env, "CUDA_VISIBLE_DEVICES": FAKE_GPUS, "PYTHONUNBUFFERED": "1"}


def environ(pid: int) -> tuple[list[str], dict[str, str]]:
    """(argv, environment) of a live process."""
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        argv = [a.decode() for a in f.read().split(b"\0") if a]
    with open(f"/proc/{pid}/environ", "rb") as f:
        pairs = [e.decode(errors="replace").split("=", 1) for e in f.read().split(b"\0") if b"=" in e]
    return argv, dict(pairs)


def wait_for_ranks(proc, n: int, timeout: float = 240) -> dict[int, tuple[list[str], dict[str, str]]]:
    """Every descendant of `proc` once `n` trainer ranks (RANK in their environment) are up."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        seen = {}
        for pid in descendants(proc.pid):
            try:
                seen[pid] = environ(pid)
            except OSError:
                continue
        if sum("RANK" in env for _, env in seen.values()) >= n:
            return seen
        time.sleep(0.3)
    raise AssertionError(f"{n} trainer ranks did not start within {timeout} s")


def role(argv: list[str]) -> str:
    if "torchrun" in argv:
        return "torchrun"
    if "trainer" in argv:
        return "rank"
    if "generator" in argv:
        return next(a.split("=", 1)[1] for a in argv if a.startswith("generator.peer_id="))
    if "evaluator" in argv:
        return "evaluator"
    return "other"


def latest(run) -> int:
    """The step of checkpoints/latest (a file naming the newest step directory)."""
    return int((run / "checkpoints" / "latest").read_text().strip().removeprefix("step-"))


def evals(run) -> dict[int, float]:
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return {x["step"]: x["pass_rate"] for x in lines if x["kind"] == "eval"}


def test_two_gloo_ranks_learn_with_the_planned_environments(tmp_path, tiny_model):
    run = tmp_path / "run"
    args = ["--run-dir", run, "--set", "run.trainer_procs=2", "--set", "eval.every=10"]
    args += ["--set", "eval.prompts=50", "--max-steps", 60]
    plan = subprocess.run(scalerl("train", "--dry-run", "--json", *args), capture_output=True, text=True, env=run_env())
    assert plan.returncode == 0, plan.stderr
    planned = {p["name"]: p for p in json.loads(plan.stdout)["processes"]}
    # The trainer's ranks take two of the four; the built-in torch engine (generator, evaluator) runs on CPU and is
    # kept off the GPUs.
    assert {n: p["env"]["CUDA_VISIBLE_DEVICES"] for n, p in planned.items()} == {
        "trainer": "4,5",
        "gen-0": "",
        "evaluator": "",
    }

    t0 = time.monotonic()
    proc = subprocess.Popen(
        scalerl("train", *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=run_env()
    )
    try:
        seen = wait_for_ranks(proc, 2)
        by_role: dict[str, list[tuple[list[str], dict[str, str]]]] = {}
        for argv, env in seen.values():
            by_role.setdefault(role(argv), []).append((argv, env))
        out, err = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            proc.kill()
    wall = time.monotonic() - t0
    assert proc.returncode == 0, err[-3000:]

    # The supervisor started exactly the planned command lines, with the planned devices.
    ((torchrun_argv, torchrun_env),) = by_role["torchrun"]
    assert torchrun_argv == planned["trainer"]["argv"]
    assert torchrun_env["CUDA_VISIBLE_DEVICES"] == "4,5"
    for name in ("gen-0", "evaluator"):
        ((argv, env),) = by_role[name]
        assert (
            argv == planned[name]["argv"]
            and env["CUDA_VISIBLE_DEVICES"] == planned[name]["env"]["CUDA_VISIBLE_DEVICES"]
        )
    ranks = sorted(
        (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"], env["CUDA_VISIBLE_DEVICES"]) for _, env in by_role["rank"]
    )
    assert ranks == [("0", "2", "0", "4,5"), ("1", "2", "1", "4,5")]

    # Two ranks really trained: gpu_hours charged 2 ranks + the generator + the evaluator, and the run learned.
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in records if x["kind"] == "train"] == list(range(1, 61))
    assert {x["devices"] for x in records} == {4} == {json.loads(plan.stdout)["gpu_hours_devices"]}
    rates = evals(run)
    gain = rates[60] - rates[0]
    print(f"2 ranks: {wall:.0f} s, pass rate {rates[0]:.3f} -> {rates[60]:.3f} (+{gain:.3f})")
    assert round(gain, 9) >= 0.1, rates  # rates are counts over 200 samples: 0.21 - 0.11 is 0.0999... in floats

    status = subprocess.run(scalerl("status", run, "--json"), capture_output=True, text=True, timeout=60)
    doc = json.loads(status.stdout)
    assert status.returncode == 0 and doc["state"] == "finished" and doc["step"] == 60 and doc["checkpoint"]
    assert latest(run) == 60
    assert "held-out pass rate" in out


@pytest.mark.slow
def test_two_ranks_stop_on_sigterm_and_resume(tmp_path, tiny_model):
    run = tmp_path / "run"
    proc = subprocess.Popen(
        scalerl("train", "--run-dir", run, "--set", "run.trainer_procs=2", "--max-steps", 5000),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=run_env(),
    )
    metrics = run / "metrics.jsonl"
    try:
        wait_for_ranks(proc, 2)
        deadline = time.time() + 240
        while time.time() < deadline and (not metrics.exists() or metrics.read_text().count('"train"') < 3):
            time.sleep(0.3)
        kids = descendants(proc.pid)
        assert len(kids) >= 5  # torchrun, its two ranks, the generator, the evaluator
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err[-3000:]
    time.sleep(0.5)
    alive = [k for k in kids if os.path.exists(f"/proc/{k}") and "zombie" not in open(f"/proc/{k}/status").read()]
    assert alive == []
    saved = latest(run)
    status = subprocess.run(scalerl("status", run, "--json"), capture_output=True, text=True, timeout=60)
    assert status.returncode == 4 and json.loads(status.stdout)["checkpoint"]

    r = subprocess.run(
        scalerl("train", "--run-dir", run, "--resume", "--set", "run.trainer_procs=2", "--max-steps", saved + 3),
        capture_output=True,
        text=True,
        timeout=400,
        env=run_env(),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"(step {saved})" in r.stderr and "resuming from" in r.stderr
    steps = [json.loads(x)["step"] for x in metrics.read_text().splitlines() if '"train"' in x]
    assert steps == list(range(1, saved + 4))
    assert latest(run) == saved + 3


def test_a_failed_rank_passes_its_exit_code_and_line_through_torchrun(tmp_path):
    """torchrun alone would exit 1 with a traceback and a report after the rank's own error line."""
    r = subprocess.run(
        [sys.executable, "-m", "scalerl.cli.launcher", "torchrun", "--standalone", "--nproc_per_node=2"]
        + ["-m", "scalerl.cli", "trainer", "--config", tmp_path / "missing.toml"],
        capture_output=True,
        text=True,
        timeout=120,
        env=run_env(),
    )
    assert r.returncode == 2, r.stderr[-2000:]
    assert "scalerl: error:" in r.stderr and "missing.toml" in r.stderr
    assert "Traceback" not in r.stderr and r.stderr.rstrip().endswith("exited with code 2")
