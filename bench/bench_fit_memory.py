"""Peak memory and wall time of `scalerl fit` on long CSVs and JSONL files (W&B exports of long runs reach 1M rows).

Run: python bench/bench_fit_memory.py [--rows 20000 100000 1000000] [--format csv jsonl] [--code PATH]
Generates the file itself (a noisy sigmoid; a JSONL line also carries a run name and two metrics that are not
fitted, as a generic metrics log does), then runs `/usr/bin/time -v scalerl fit FILE --json` in a subprocess and
prints the peak RSS and the wall time. --code PATH measures another checkout of the repository (for example
`git worktree add /tmp/wt-old HEAD~5`) through a throwaway `scalerl` package that points at its folders.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np


def write_csv(path: Path, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    x = np.linspace(1.0, 50000.0, n)
    y = 0.2 + 0.41 / (1.0 + (3000.0 / x) ** 1.5) + rng.normal(0, 0.01, n)
    with path.open("w") as f:
        f.write("step,pass_rate\n")
        for a, b in zip(x, y):
            f.write(f"{a:.3f},{b:.5f}\n")


def write_jsonl(path: Path, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    x = np.linspace(1.0, 50000.0, n)
    y = 0.2 + 0.41 / (1.0 + (3000.0 / x) ** 1.5) + rng.normal(0, 0.01, n)
    loss = rng.uniform(0.1, 2.0, n)
    with path.open("w") as f:
        for i, (a, b, c) in enumerate(zip(x, y, loss)):
            f.write(f'{{"run": "r0", "step": {a:.3f}, "pass_rate": {b:.5f}, "loss": {c:.5f}, "lr": 1e-06, "i": {i}}}\n')


WRITERS = {"csv": write_csv, "jsonl": write_jsonl}


def shim_for(code: Path, root: Path) -> Path:
    """A `scalerl` package whose sub-packages are the folders of another checkout (found before the editable one)."""
    pkg = root / "scalerl"
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text("")
    for d in ("curvefit", "cli", "shared"):
        link = pkg / d
        if not link.exists():
            link.symlink_to(code / d)
    return root


def measure(source: Path, pythonpath: str | None) -> tuple[float, float, int]:
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "scalerl.cli", "fit", str(source), "--json"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", r.stderr).group(1))
    wall = re.search(r"Elapsed \(wall clock\) time.*: (?:(\d+):)?(\d+):([\d.]+)", r.stderr)
    h, m, s = (float(g) if g else 0.0 for g in wall.groups())
    return rss_kb / 1024.0, 3600 * h + 60 * m + s, r.returncode


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, nargs="+", default=[20000, 100000, 1000000])
    ap.add_argument("--format", nargs="+", choices=sorted(WRITERS), default=["csv", "jsonl"])
    ap.add_argument("--code", type=Path, help="another checkout to measure instead of the installed one")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pythonpath = str(shim_for(args.code.resolve(), tmp / "shim")) if args.code else None
        print(f"code: {args.code or 'installed scalerl'}; one BLAS thread; `scalerl fit FILE --json`")
        head = (
            ("format", 6),
            ("rows", 9),
            ("file MB", 8),
            ("peak RSS MB", 12),
            ("KB / row", 9),
            ("wall s", 7),
            ("exit", 5),
        )
        print(" ".join(f"{h:>{w}s}" for h, w in head))
        for fmt in args.format:
            for n in args.rows:
                source = tmp / f"long_{n}.{fmt}"
                WRITERS[fmt](source, n)
                mb, wall, rc = measure(source, pythonpath)
                size = source.stat().st_size / 1e6
                print(f"{fmt:>6s} {n:9d} {size:8.1f} {mb:12.0f} {mb * 1024 / n:9.1f} {wall:7.1f} {rc:5d}", flush=True)
                source.unlink()


if __name__ == "__main__":
    main()
