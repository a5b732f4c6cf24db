"""bench/gpu_check.sh's mechanics: one JSON line per step, printed and appended to OUT, a closing "total" line, and
exit 1 when a step fails. Two cheap steps only; CI runs every CPU step (.ci/run, stage gpu_check_cpu)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def gpu_check(tmp_path, device, limits):
    out = tmp_path / "check.jsonl"
    env = dict(os.environ, DEVICE=device, OUT=str(out), WORK=str(tmp_path / "work"), GPU_CHECK_LIMITS=limits)
    # The script runs `python3`: this interpreter's, as an activated venv would give it.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    r = subprocess.run(["bash", str(ROOT / "bench/gpu_check.sh")], capture_output=True, text=True, env=env, timeout=600)
    printed = [json.loads(x) for x in r.stdout.splitlines() if x.strip()]
    written = [json.loads(x) for x in out.read_text().splitlines()]
    assert printed == written, r.stderr[-2000:]
    return r, written


def test_cpu_steps_print_one_json_line_each(tmp_path):
    r, lines = gpu_check(tmp_path, "cpu", "versions:300 publish:300")
    assert [x["step"] for x in lines] == ["versions", "publish", "total"], r.stderr[-2000:]
    assert all(x["ok"] is True for x in lines), lines
    assert lines[1]["to_gpu"] == "needs CUDA" and lines[1]["broadcast"]["backend"] == "gloo"
    assert r.returncode == 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="tests the failure path where there is no GPU")
def test_a_failed_step_is_a_line_and_the_next_still_runs(tmp_path):
    r, lines = gpu_check(tmp_path, "cuda", "versions:300 dcp:300")
    assert [x["step"] for x in lines] == ["versions", "dcp", "total"]
    assert [x["ok"] for x in lines] == [False, False, False]
    assert all(x["error"] for x in lines[:2]) and lines[2]["failed"] == ["versions", "dcp"]
    assert r.returncode == 1
