"""`scalerl train --config examples/multitask.toml`, briefly: two tasks of the built-in tiny model, offline, give one
held-out curve each (metrics.jsonl's `task` field), which `scalerl fit --json` fits apart and the live forecast
follows (its first task's)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _scalerl(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "scalerl.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def test_multitask_example_gives_one_curve_per_task(tmp_path):
    run = tmp_path / "mt"
    # 8 steps with an evaluation every 2: 5 points per task, the fewest a fit takes (about 30 s on 2 cores).
    r = _scalerl(
        "train", "--config", "examples/multitask.toml", "--run-dir", str(run), "--max-steps", "8",
        "--set", "eval.every=2", "--set", "eval.prompts=50",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [x for x in lines if x["kind"] == "eval"]
    assert [(x["step"], x["task"]) for x in evals] == [(s, t) for s in range(0, 9, 2) for t in ("gsm8k", "code")]
    assert all(x["n_samples"] == 50 * 4 and 0.0 <= x["pass_rate"] <= 1.0 for x in evals)
    assert all("task" not in x for x in lines if x["kind"] == "train")
    assert max(x.get("reward_mean", 0.0) for x in lines if x["kind"] == "train") > 0.05  # generators scored them
    # gsm8k's golds are "... #### 82": only its own verifier (numeric, reading after ####) ever passes one.
    assert all(x["pass_rate"] > 0.05 for x in evals)

    fit = _scalerl("fit", str(run), "--json", "--exclude-before", "0")
    assert fit.returncode == 0, fit.stderr[-2000:]
    runs = {x["name"]: x for x in json.loads(fit.stdout)["runs"]}
    assert set(runs) == {"mt/gsm8k", "mt/code"}
    assert all(x["n_points"] == 5 for x in runs.values())

    forecast = [json.loads(x) for x in (run / "forecast.jsonl").read_text().splitlines()]
    assert forecast and all(x.get("task") == "gsm8k" for x in forecast if "error" not in x)
    assert forecast[-1]["step"] == 8 and forecast[-1]["n_evals"] == 5

    png = tmp_path / "f.png"
    plot = _scalerl("plot", str(run), "-o", str(png), "--exclude-before", "0")
    assert plot.returncode == 0, plot.stderr[-2000:]
    assert png.stat().st_size > 10_000
