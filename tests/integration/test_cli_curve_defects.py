"""Curve CLI defects found in use: each test runs the real command in a subprocess."""

import numpy as np

from scalerl.curvefit.curves import sigmoid


def _seeds_csv(tmp_path):
    rng = np.random.default_rng(3)
    rows = ["run,gpu_hours,pass_rate"]
    for run in ("slow_seed0", "slow_seed1", "fast_seed0"):
        x = np.concatenate([[0.0], np.linspace(250, 40000, 60)])
        y = sigmoid(x, 0.62, 1.5, 3000.0, 0.2) + rng.normal(0, 0.01, len(x))
        y[0] = 0.2
        rows += [f"{run},{a},{b}" for a, b in zip(x, y)]
    p = tmp_path / "seeds.csv"
    p.write_text("\n".join(rows) + "\n")
    return p


def test_overlapping_group_globs_name_both_and_the_run(cli, tmp_path):
    p = _seeds_csv(tmp_path)
    r = cli("fit", p, "--group-glob", "all=*_seed*", "--group-glob", "slow=slow_*", "--n-boot", "50")
    assert r.returncode == 2, r.stderr
    assert r.stdout == "" and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "all=*_seed*" in r.stderr and "slow=slow_*" in r.stderr and "'slow_seed0'" in r.stderr, r.stderr
    assert "no run matches" not in r.stderr
