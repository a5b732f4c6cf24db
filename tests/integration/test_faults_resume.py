"""Resume never goes backwards silently (issue 11): broken checkpoints, no checkpoint, cut metrics, a full disk.

Every test runs `scalerl train` as a user does (trainer and generator processes, sockets, files); one base run
with checkpoints at steps 2, 4 and 6 is copied and damaged per test.
"""

import json
import shutil
import subprocess
import sys
import uuid

import pytest

from scalerl.shared.models.tiny_model import ensure_tiny_model

SETS = [
    "--set",
    "trainer.checkpoint_every=2",
    "--set",
    "eval.every=2",
    "--set",
    "trainer.keep_checkpoints=3",
    "--set",
    "eval.prompts=50",
    "--set",
    "trainer.prompts_per_step=8",
]


def train(run, *args, timeout=300):
    cmd = [sys.executable, "-m", "scalerl.cli", "train", "--run-dir", str(run), *SETS, *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def records(run):
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def steps(run, kind):
    return [r["step"] for r in records(run) if r["kind"] == kind]


def assert_clean_history(run, last):
    """Every step once, every evaluation once, and a clock that never runs backwards (per kind: the evaluator
    process's eval lines come late, with the time of their step)."""
    assert steps(run, "train") == list(range(1, last + 1))
    assert steps(run, "eval") == list(range(0, last + 1, 2))
    for kind in ("train", "eval"):
        times = [r["time_s"] for r in records(run) if r["kind"] == kind]
        assert times == sorted(times)


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    ensure_tiny_model()
    run = tmp_path_factory.mktemp("base") / "run"
    r = train(run, "--max-steps", 6)
    assert r.returncode == 0, r.stderr[-2000:]
    assert sorted(p.name for p in (run / "checkpoints").glob("step-*")) == [
        "step-000002",
        "step-000004",
        "step-000006",
    ]
    return run


@pytest.fixture
def run(base_run, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(base_run, dst)
    return dst


def cut(path, frac=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * frac)])


def test_resume_past_a_checkpoint_without_state_takes_the_one_before(run):
    """Issue 11.1: `latest` names a checkpoint with no state.json; --resume used to restart at step 0 and exit 0."""
    ck = run / "checkpoints"
    (ck / "step-000006" / "state.json").unlink()
    r = train(run, "--resume", "--max-steps", 8)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"skipping step-000006: {ck / 'step-000006' / 'state.json'}: missing" in r.stderr
    assert f"resuming from {ck / 'step-000004'} (step 4)" in r.stderr
    # metrics cut back only to step 4, steps 5-8 redone once; no second step-0 evaluation
    assert_clean_history(run, 8)
    # the new checkpoints survive pruning, and the next resume continues from them
    assert sorted(p.name for p in ck.glob("step-*")) == ["step-000004", "step-000006", "step-000008"]
    assert (ck / "step-000006" / "state.json").exists() and (ck / "broken-step-000006").is_dir()
    assert (ck / "latest").read_text().strip() == "step-000008"


def test_resume_past_truncated_checkpoint_files_falls_back_and_names_them(run):
    """Issue 11.8: a truncated model.safetensors / state.json ended in `internal error: SafetensorError`."""
    ck = run / "checkpoints"
    weights = ck / "step-000006" / "model.safetensors"
    if not weights.exists():  # another checkpoint layout: its largest file
        weights = max((p for p in (ck / "step-000006").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    cut(weights)
    cut(ck / "step-000004" / "state.json")
    r = train(run, "--resume", "--max-steps", 6)
    assert r.returncode == 0, r.stderr[-2000:]
    assert any(str(weights) in line and "truncated" in line for line in r.stderr.splitlines()), r.stderr[-2000:]
    assert f"{ck / 'step-000004' / 'state.json'}: not valid JSON" in r.stderr
    assert f"resuming from {ck / 'step-000002'} (step 2)" in r.stderr
    log = (run / "logs" / "trainer.log").read_text()
    assert "skipping step-000006" in log and "continuing from" in log and "step-000002" in log
    assert_clean_history(run, 6)


def test_resume_without_a_checkpoint_refuses_and_from_scratch_starts_over_once(run):
    """Issue 11.1/12: `latest` names a missing directory and no checkpoint is left: --resume restarted at step 0,
    exit 0, with a second step-0 evaluation."""
    for d in (run / "checkpoints").glob("step-*"):
        shutil.rmtree(d)
    assert (run / "checkpoints" / "latest").read_text().strip() == "step-000006"
    before = (run / "metrics.jsonl").read_bytes()
    r = train(run, "--resume", "--max-steps", 2)
    assert r.returncode == 2
    errors = [line for line in r.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and str(run / "checkpoints") in errors[0] and "--resume-from-scratch" in errors[0]
    assert (run / "metrics.jsonl").read_bytes() == before  # refusing touches nothing
    r = train(run, "--resume-from-scratch", "--max-steps", 2)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "starting over at step 0" in r.stderr
    assert_clean_history(run, 2)
    # Two evaluations fit no curve: no "next: scalerl plot/forecast" that would exit 2 with too few points.
    assert "no curve to fit yet" in r.stderr and "next:" not in r.stdout, r.stdout


def test_resume_reports_torn_lines_and_gaps_in_metrics(run):
    """Issue 11.12: metrics.jsonl cut mid-file, or with a torn line inside, resumed with a silent gap."""
    path = run / "metrics.jsonl"
    # In step order (the evaluator process's eval lines may come after later train lines), so that the damage
    # below hits the same steps in either eval mode.
    lines = sorted(path.read_text().splitlines(), key=lambda x: (json.loads(x)["step"], '"eval"' in x))
    kinds = [(r["kind"], r["step"]) for r in map(json.loads, lines)]
    assert kinds[:6] == [("eval", 0), ("train", 1), ("train", 2), ("eval", 2), ("train", 3), ("train", 4)]
    lines[1] = lines[1][:20]  # train step 1 torn inside the file
    path.write_text("\n".join(lines[:5]) + "\n" + lines[5][:30])  # cut in the middle of step 4
    r = train(run, "--resume", "--max-steps", 7)  # one step more: the trainer reports and repairs too
    assert r.returncode == 0, r.stderr[-2000:]
    log = (run / "logs" / "trainer.log").read_text()
    for needle in (
        f"{path}:2: torn line (inside the file)",
        f"{path}:6: torn line (the last line",
        f"{path}: no train line for step(s) 1, 4-6 up to the checkpoint at step 6",
        f"{path}: no eval line for step(s) 4, 6",
    ):
        assert needle in r.stderr and needle in log, needle
    assert steps(run, "train") == [2, 3, 7]  # nothing can refill the gap, but it was said, and the torn lines are gone


@pytest.fixture
def tiny_disk(tmp_path):
    mnt = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    mnt.mkdir()
    # 2 MiB: config, metrics and logs fit; the tiny model's checkpoint (about 12 MB) does not.
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs needs root")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_full_disk_says_so_with_the_path_and_exits_2(tiny_disk):
    """Issue 11.9: ENOSPC while checkpointing ended in `inline_container.cc: unexpected pos`, exit 1."""
    ensure_tiny_model()
    run = tiny_disk / "run"
    r = train(run, "--max-steps", 2)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = [line for line in r.stderr.splitlines() if "no space left on device" in line]
    assert len(lines) == 1, r.stderr[-2000:]
    assert f"no space left on device: {run / 'checkpoints'}" in lines[0]
    assert "internal error" not in r.stderr and "unexpected pos" not in r.stderr
    assert not list((run / "checkpoints").glob(".tmp-*"))  # the half checkpoint is gone, its space freed


def test_a_resumed_run_samples_its_first_step_from_the_checkpoint(run):
    # Restarted generators load the model directory (version 0). They took requests before the checkpoint's weights
    # arrived, and every token they sampled was older than max_off_policy: the first step after the resume dropped
    # half its groups as stale (16 of 32 in a review). Now they wait for the weights, which the trainer publishes
    # before it issues anything.
    r = train(run, "--resume", "--max-steps", 8)
    assert r.returncode == 0, r.stderr[-2000:]
    first = next(x for x in records(run) if x["kind"] == "train" and x["step"] == 7)
    assert first["stale_dropped"] == 0 and first["groups"] == 8, first
    log = (run / "logs" / "gen-0.log").read_text().splitlines()
    applied = [x for x in log if "weights v6 applied" in x]
    assert applied and applied[0].endswith("with 0 sequences running"), applied
