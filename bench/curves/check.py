"""Validate every curve CSV in this folder (numpy/csv only).

Checks per file: header starts with run,x,y; every x and y parses as a finite number;
within each run x is strictly increasing; y lies in [0, 1]; each run has >= 10 points.
Exit status 1 if any check fails.  Usage: python bench/curves/check.py [folder]
"""

import csv
import glob
import os
import sys

import numpy as np

MIN_POINTS = 10


def check_file(path):
    errors = []
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or header[:3] != ["run", "x", "y"]:
            return [f"header must start with run,x,y (got {header})"], {}
        runs = {}
        for lineno, row in enumerate(reader, start=2):
            if len(row) != len(header):
                errors.append(f"line {lineno}: {len(row)} fields, header has {len(header)}")
                continue
            try:
                x, y = float(row[1]), float(row[2])
            except ValueError:
                errors.append(f"line {lineno}: x or y is not a number: {row[1]!r}, {row[2]!r}")
                continue
            runs.setdefault(row[0], []).append((lineno, x, y))
    for run, pts in runs.items():
        xs = np.array([p[1] for p in pts])
        ys = np.array([p[2] for p in pts])
        if not (np.all(np.isfinite(xs)) and np.all(np.isfinite(ys))):
            errors.append(f"run {run}: non-finite x or y")
        bad = np.nonzero(np.diff(xs) <= 0)[0]
        if bad.size:
            errors.append(f"run {run}: x not strictly increasing at line {pts[bad[0] + 1][0]}")
        out = np.nonzero((ys < 0) | (ys > 1))[0]
        if out.size:
            errors.append(f"run {run}: y outside [0,1] at line {pts[out[0]][0]} (y={ys[out[0]]})")
        if len(pts) < MIN_POINTS:
            errors.append(f"run {run}: only {len(pts)} points (< {MIN_POINTS})")
    return errors, runs


def main(folder):
    paths = sorted(glob.glob(os.path.join(folder, "*.csv")))
    if not paths:
        print(f"no CSV files in {folder}")
        return 1
    failed = 0
    total_runs = total_points = 0
    for path in paths:
        errors, runs = check_file(path)
        n_pts = sum(len(v) for v in runs.values())
        total_runs += len(runs)
        total_points += n_pts
        lens = [len(v) for v in runs.values()] or [0]
        status = "OK  " if not errors else "FAIL"
        print(f"{status} {os.path.basename(path)}: {len(runs)} runs, {n_pts} points (per run {min(lens)}-{max(lens)})")
        for e in errors[:20]:
            print("     " + e)
        failed += bool(errors)
    sources = sorted({os.path.basename(p).split("_")[0] for p in paths})
    print(
        f"{len(paths)} files, {len(sources)} sources ({', '.join(sources)}), "
        f"{total_runs} runs, {total_points} points; {failed} file(s) failed"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))))
