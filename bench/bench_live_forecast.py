"""Step time of `scalerl train` with the live forecast on and off (run.live_forecast), embedded default.

The refit after each evaluation runs in its own nice-19 process, so on a busy machine it should take only idle
cycles: the ratio of step times (on / off) should be near 1. Runs alternate off, on, off, on, ... so that drift of
the machine hits both alike. Step time: the median and the mean of the gaps between consecutive train lines
(`time_s`), evaluations excluded (a step that follows an evaluation carries it). Also reported: how many refits
ran, and their median duration.

Run: python bench/bench_live_forecast.py [steps] [repeats] [eval_every]   (defaults 150, 2, 20)
"""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np


def run(on: bool, steps: int, eval_every: int, root: Path, i: int) -> tuple[np.ndarray, list[dict]]:
    run_dir = root / f"{'on' if on else 'off'}-{i}"
    cmd = [sys.executable, "-m", "scalerl.cli", "train", "--run-dir", str(run_dir), "--max-steps", str(steps)]
    cmd += ["--set", f"run.live_forecast={'true' if on else 'false'}", "--set", f"eval.every={eval_every}"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=open(root / f"{run_dir.name}.log", "w"))
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = {r["step"]: r["time_s"] for r in records if r["kind"] == "train"}
    evals = {r["step"] for r in records if r["kind"] == "eval"}
    gaps = [train[s] - train[s - 1] for s in sorted(train) if s - 1 in train and (s - 1) not in evals]
    path = run_dir / "forecast.jsonl"
    forecasts = [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []
    return np.array(gaps), forecasts


def main():
    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 150
    repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    eval_every = int(sys.argv[3]) if len(sys.argv) > 3 else 20
    root = Path(tempfile.mkdtemp(prefix="bench-live-forecast-"))
    gaps = {False: [], True: []}
    refits = []
    for i in range(repeats):
        for on in (False, True):
            load = os.getloadavg()[0]  # other work on the machine shows up here, and in the step times
            g, f = run(on, steps, eval_every, root, i)
            gaps[on].append(g)
            refits += f if on else []
            print(
                f"run {i} forecast {'on ' if on else 'off'}: median step {np.median(g):.3f} s, mean {g.mean():.3f} s "
                f"(load before {load:.2f})",
                flush=True,
            )
    off, on = np.concatenate(gaps[False]), np.concatenate(gaps[True])
    fit_s = [f["fit_s"] for f in refits if "A" in f] or [0.0]
    print(f"steps per run {steps}, eval every {eval_every}, {repeats} runs each; run dirs in {root}")
    m_off, m_on = np.median(off), np.median(on)
    print(f"median step time: off {m_off:.3f} s, on {m_on:.3f} s, ratio {m_on / m_off:.3f}")
    print(f"mean step time:   off {off.mean():.3f} s, on {on.mean():.3f} s, ratio {on.mean() / off.mean():.3f}")
    print(f"refits: {len(refits)} forecast lines, median fit {np.median(fit_s):.2f} s wall (nice 19, one BLAS thread)")
    per_run = [np.median(a) / np.median(b) for a, b in zip(gaps[True], gaps[False])]
    print("per-pair median ratios (on / off): " + ", ".join(f"{r:.3f}" for r in per_run))


if __name__ == "__main__":
    main()
