"""`scalerl sweep` end to end: a grid of two variants runs, survives a kill, resumes, and `compare` reads it."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from scalerl.shared.models.tiny_model import ensure_tiny_model
from tests.conftest import run_cli


@pytest.fixture(scope="module")
def tiny_model():
    return ensure_tiny_model()


@pytest.mark.slow  # two short runs, a kill and a resume: about 2-3 minutes on 2 cores
def test_grid_sweep_runs_resumes_after_a_kill_and_compares(tmp_path, tiny_model):
    sweep = tmp_path / "sweep"
    args = ["--grid", "trainer.loss.kind=cispo,dapo", "--max-steps", "10"]
    args += ["--set", "eval.every=2", "--set", "eval.prompts=20", "--set", "trainer.checkpoint_every=2"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "scalerl.cli", "sweep", str(sweep), *args],
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "sweep.log", "w"),
    )
    second = sweep / "kind=dapo" / "run" / "metrics.jsonl"
    deadline = time.time() + 400
    while time.time() < deadline and not (second.exists() and second.read_text().count('"train"') >= 3):
        time.sleep(0.2)
    assert (sweep / "kind=cispo" / "done.json").exists(), (tmp_path / "sweep.log").read_text()[-2000:]
    os.kill(proc.pid, signal.SIGKILL)  # no goodbye: its scalerl train dies with it (parent-death signal)
    proc.wait()
    assert not (sweep / "kind=dapo" / "done.json").exists()

    again = run_cli("sweep", sweep, "--resume", timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "kind=cispo: done already" in again.stderr and "--resume-from-scratch" in again.stderr
    # The killed sweep's train may still be writing its checkpoint then: the resume waits for it, not fails.
    assert "scalerl compare" in again.stdout
    for name in ("kind=cispo", "kind=dapo"):
        records = [json.loads(x) for x in (sweep / name / "run" / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in records if r["kind"] == "train"] == list(range(1, 11)), name
        assert (sweep / name / "run" / "forecast.jsonl").exists()
    resolved = (sweep / "kind=dapo" / "run" / "config.toml").read_text()
    assert 'kind = "dapo"' in resolved

    cmp = run_cli("compare", sweep, "--json", "--n-boot", 200, "--exclude-before", 0)
    assert cmp.returncode == 0, cmp.stderr
    doc = json.loads(cmp.stdout)
    assert [r["name"] for r in doc["runs"]] == ["kind=cispo", "kind=dapo"] and len(doc["pairs"]) == 1
