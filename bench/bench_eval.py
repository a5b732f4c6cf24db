"""Trainer steps/s with held-out evaluation every 20 steps: in the trainer (eval.mode inline) against the evaluator
process (eval.mode process, off the critical path), the same `scalerl train` run otherwise.

Per mode: steps/s over the whole run, and the duration of the steps right after an evaluation step (where an inline
evaluation blocks the loop: the step after step e carries it) against the median of all the others. Reported as
ratios: process over inline for steps/s, and for each mode its after-evaluation step time over its typical one
(1.0 = evaluation costs training nothing). Each run's evaluation uses the embedded default's 200 prompts,
eval_k samples each.

Run: flock /tmp/scalerl-heavy.lock python bench/bench_eval.py [steps] [eval_every] [eval_k]   (defaults 60 20 4;
eval_k 32 makes each evaluation take several seconds, as a real share of the run)
On a 2-core CPU machine the evaluator shares the cores with the trainer and the generator, so the process
mode's steps near an evaluation are slowed by contention rather than blocked; on a GPU node it has a device of
its own.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def run(mode: str, steps: int, eval_every: int, eval_k: int, root: Path) -> tuple[list[dict], float]:
    run_dir = root / mode
    t0 = time.monotonic()
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "scalerl.cli",
            "train",
            "--run-dir",
            str(run_dir),
            "--max-steps",
            str(steps),
            "--set",
            f"eval.mode='{mode}'",
            "--set",
            f"eval.every={eval_every}",
            "--set",
            f"eval.k={eval_k}",
            "--set",
            "run.live_forecast=false",
        ],
        check=False,
        stdout=subprocess.DEVNULL,
        stderr=open(root / f"{mode}.log", "w"),
    )
    wall = time.monotonic() - t0
    if r.returncode != 0:
        sys.exit(f"{mode} run failed ({r.returncode}): {(root / f'{mode}.log').read_text()[-2000:]}")
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()], wall


def summarize(records: list[dict], eval_every: int) -> dict:
    train = sorted((r for r in records if r["kind"] == "train"), key=lambda r: r["step"])
    evals = sorted((r for r in records if r["kind"] == "eval"), key=lambda r: r["step"])
    t = {r["step"]: r["time_s"] for r in train}
    # Step s's duration: from the train line of s-1 to that of s. Step 1 also carries start-up and the step-0
    # evaluation, so it is left out of both sides.
    durations = {s: t[s] - t[s - 1] for s in t if s - 1 in t and s > 1}
    after_eval = [d for s, d in durations.items() if (s - 1) % eval_every == 0]
    others = [d for s, d in durations.items() if (s - 1) % eval_every != 0]
    first, last = min(t), max(t)
    return {
        "steps_per_s": (last - first) / (t[last] - t[first]),
        "step_s_typical": float(np.median(others)),
        "step_s_after_eval": float(np.mean(after_eval)) if after_eval else float("nan"),
        "evals": [(r["step"], round(r["pass_rate"], 4)) for r in evals],
        "eval_s": [round(r.get("eval_s", float("nan")), 1) for r in evals],
        "gpu_hours": train[-1]["gpu_hours"],
        "devices": train[-1]["devices"],
    }


def main() -> None:
    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 60
    eval_every = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    eval_k = int(sys.argv[3]) if len(sys.argv) > 3 else 4
    with tempfile.TemporaryDirectory() as d:
        out = {}
        for mode in ("inline", "process"):
            records, wall = run(mode, steps, eval_every, eval_k, Path(d))
            out[mode] = {**summarize(records, eval_every), "wall_s": wall}
            s = out[mode]
            print(
                f"{mode:8s}: {s['steps_per_s']:.3f} steps/s; step after an evaluation {s['step_s_after_eval']:.2f} s "
                f"vs typical {s['step_s_typical']:.2f} s ({s['step_s_after_eval'] / s['step_s_typical']:.2f}x); "
                f"wall {wall:.0f} s; devices {s['devices']}; evals {s['evals']}"
            )
    inline, process = out["inline"], out["process"]
    print(
        f"eval every {eval_every} steps (200 prompts x {eval_k}), {steps} steps: trainer steps/s process / inline = "
        f"{process['steps_per_s'] / inline['steps_per_s']:.2f}x; step after an evaluation / typical step: "
        f"inline {inline['step_s_after_eval'] / inline['step_s_typical']:.2f}x, "
        f"process {process['step_s_after_eval'] / process['step_s_typical']:.2f}x"
    )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
