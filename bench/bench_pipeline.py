"""Asynchronous `pipeline` (PipelineRL-k) against the paper's `ppo_off_policy` baseline, same settings, one run each.

Reports the wall time each mode needs to raise the held-out pass rate by DELTA over its step-0 value (on a
3-evaluation running mean, to damp evaluation noise), and the throughput, as ratios against ppo_off_policy.
PipelineRL reports about 2x on GPUs and AReaL 2.77x. Run: python bench/bench_pipeline.py [minutes] [delta] [k]
"""

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np


def run(mode: str, minutes: float, k: int, root: Path) -> list[dict]:
    run_dir = root / mode
    subprocess.run(
        [
            sys.executable,
            "-m",
            "scalerl.cli",
            "train",
            "--run-dir",
            str(run_dir),
            "--max-minutes",
            str(minutes),
            "--set",
            f"trainer.mode={mode}",
            "--set",
            f"trainer.max_off_policy={k}",
            "--set",
            "eval.every=20",
        ],
        check=False,
        stdout=subprocess.DEVNULL,
        stderr=open(root / f"{mode}.log", "w"),
    )
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def time_to_gain(records, delta):
    evals = [r for r in records if r["kind"] == "eval"]
    t = np.array([r["time_s"] for r in evals])
    y = np.array([r["pass_rate"] for r in evals])
    smooth = np.convolve(y, np.ones(3) / 3, mode="valid")
    hit = np.flatnonzero(smooth >= y[0] + delta)
    return float(t[hit[0] + 2]) if hit.size else float("nan"), float(y[0]), float(smooth.max())


def main():
    minutes = float(sys.argv[1]) if len(sys.argv) > 1 else 5.0
    delta = float(sys.argv[2]) if len(sys.argv) > 2 else 0.05
    k = int(sys.argv[3]) if len(sys.argv) > 3 else 2
    with tempfile.TemporaryDirectory() as d:
        rows = {}
        for mode in ("ppo_off_policy", "pipeline"):
            recs = run(mode, minutes, k, Path(d))
            train = [r for r in recs if r["kind"] == "train"]
            t_hit, r0, best = time_to_gain(recs, delta)
            rows[mode] = dict(
                steps=len(train),
                steps_per_s=len(train) / train[-1]["time_s"],
                t_hit=t_hit,
                r0=r0,
                best=best,
                staleness=np.mean([r.get("staleness_mean", 0) for r in train]),
            )
    base = rows["ppo_off_policy"]
    print(f"{minutes:g} min per mode, k = {k}, target: +{delta:g} over step 0 (3-eval running mean), 2 CPU cores")
    print(
        f"{'mode':16s} {'steps':>6s} {'steps/s':>8s} {'speed ratio':>11s} {'t to target':>12s} {'time ratio':>10s} "
        f"{'R0':>6s} {'best':>6s} {'staleness':>9s}"
    )
    for mode, r in rows.items():
        print(
            f"{mode:16s} {r['steps']:6d} {r['steps_per_s']:8.2f} {r['steps_per_s'] / base['steps_per_s']:11.2f} "
            f"{r['t_hit']:12.1f} {base['t_hit'] / r['t_hit']:10.2f} {r['r0']:6.3f} {r['best']:6.3f} "
            f"{r['staleness']:9.2f}"
        )


if __name__ == "__main__":
    main()
