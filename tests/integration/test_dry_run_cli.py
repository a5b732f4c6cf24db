"""What `scalerl train --dry-run [--json]` reports of the device plan (cli/device_plan.py): a real subprocess of the
CLI, nothing started. The plan itself: tests/unit/test_device_plan.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys

EIGHT = [str(i) for i in range(8)]


def dry_run(tmp_path, *args, cuda=None, slurm_env=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    if cuda is not None:
        env["CUDA_VISIBLE_DEVICES"] = cuda
    env.update(slurm_env or {})
    return subprocess.run(
        [sys.executable, "-m", "scalerl.cli", "train", "--dry-run", "--run-dir", str(tmp_path / "run"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_dry_run_json_is_one_document_and_starts_nothing(tmp_path):
    r = dry_run(
        tmp_path,
        "--json",
        "--set",
        "run.trainer_procs=4",
        "--set",
        "run.n_generators=2",
        "--set",
        "generator.backend='vllm'",
        "--set",
        "generator.vllm.tensor_parallel_size=2",
        "--set",
        "eval.mode='inline'",
        cuda=",".join(EIGHT),
    )
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    procs = {p["name"]: p for p in doc["processes"]}
    assert {n: p["env"].get("CUDA_VISIBLE_DEVICES") for n, p in procs.items()} == {
        "trainer": "0,1,2,3",
        "gen-0": "4,5",
        "gen-1": "6,7",
    }
    trainer = procs["trainer"]["argv"]
    assert trainer[1:5] == ["-m", "scalerl.cli.launcher", "torchrun", "--standalone"]
    assert "--nproc_per_node=4" in trainer and trainer[-3:] == [
        "trainer",
        "--config",
        str(tmp_path / "run" / "config.toml"),
    ]
    assert procs["gen-1"]["argv"][-4:] == ["--set", "generator.peer_id=gen-1", "--set", "generator.seed=1"]
    assert doc["gpu_hours_devices"] == 8 and doc["visible_devices"] == EIGHT
    assert not (tmp_path / "run").exists()  # nothing written, nothing locked


def test_dry_run_text_and_cpu_only(tmp_path):
    r = dry_run(tmp_path, "--set", "run.trainer_procs=2", cuda="")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("devices visible: none (CPU only); asked for: 0; gpu_hours counts 4\n")
    assert "trainer    node localhost  devices - ranks 2" in r.stdout
    assert "CUDA_VISIBLE_DEVICES" not in r.stdout  # CPU-only children keep their environment


def test_over_subscribed_run_exits_2_before_anything_starts(tmp_path):
    r = dry_run(tmp_path, "--set", "run.trainer_procs=5", cuda="2,3,6,7")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip() == (
        "scalerl: error: device plan: 4 device(s) visible on localhost (2,3,6,7), 5 asked for: trainer 5 (5 ranks)"
    )
    # the real run too: refused before the run dir is created
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "scalerl.cli",
            "train",
            "--run-dir",
            str(tmp_path / "run"),
            "--set",
            "run.trainer_procs=5",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": "2,3,6,7"},
        timeout=120,
    )
    assert r.returncode == 2 and "5 asked for" in r.stderr and not (tmp_path / "run").exists()


def test_json_needs_dry_run(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "scalerl.cli", "train", "--json"], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 2 and "--json needs --dry-run" in r.stderr


def test_dry_run_under_srun_prints_the_step_once(tmp_path):
    base = {
        "SLURM_NTASKS": "8",
        "SLURM_STEP_NUM_TASKS": "8",
        "SLURM_JOB_NODELIST": "n[1-2]",
        "SLURM_TASKS_PER_NODE": "4(x2)",
        "SLURM_JOB_ID": "7",
    }
    sets = ["--set", "run.trainer_nodes=1", "--set", "run.trainer_procs=4", "--set", "eval.mode='process'"]
    sets += ["--set", "generator.backend='vllm'"]  # vLLM engines take GPUs (the torch engine runs on CPU)
    r = dry_run(tmp_path, "--json", *sets, cuda="0,1,2,3", slurm_env={**base, "SLURM_PROCID": "0"})
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    rows = [(p["node"], p["role"], p["env"].get("CUDA_VISIBLE_DEVICES")) for p in doc["processes"]]
    assert rows == [("n1", "trainer", "0,1,2,3")] + [("n1", "idle", None)] * 3 + [
        ("n2", "generator", "0"),
        ("n2", "generator", "1"),
        ("n2", "generator", "2"),
        ("n2", "evaluator", "3"),
    ]
    assert doc["processes"][0]["argv"][1:4] == ["-m", "torch.distributed.run", "--standalone"]
    other = dry_run(tmp_path, "--json", *sets, cuda="0,1,2,3", slurm_env={**base, "SLURM_PROCID": "5"})
    assert other.returncode == 0 and other.stdout == ""


def test_dry_run_under_srun_shows_each_trainer_nodes_own_torchrun(tmp_path):
    # Task 0 printed its own torchrun command (--node_rank=0) for the first task of every trainer node.
    step = {
        "SLURM_PROCID": "0",
        "SLURM_STEP_NUM_TASKS": "24",
        "SLURM_JOB_NODELIST": "gpu[01-03]",
        "SLURM_TASKS_PER_NODE": "8(x3)",
    }
    sets = ["--set", "run.trainer_nodes=2", "--set", "run.trainer_procs=8", "--set", "generator.backend='vllm'"]
    r = dry_run(tmp_path, "--json", *sets, cuda="0,1,2,3,4,5,6,7", slurm_env=step)
    assert r.returncode == 0, r.stderr[-2000:]
    trainers = [p for p in json.loads(r.stdout)["processes"] if p["role"] == "trainer"]
    assert [(p["name"], p["node"]) for p in trainers] == [("task-0", "gpu01"), ("task-8", "gpu02")]
    assert [[a for a in p["argv"] if a.startswith("--node_rank")] for p in trainers] == [
        ["--node_rank=0"],
        ["--node_rank=1"],
    ]
