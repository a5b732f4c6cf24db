"""Acceptance leftovers of the curve commands, each pinned by the real CLI in a subprocess."""

import re
import subprocess
import sys

import numpy as np

from scalerl.curvefit.curves import sigmoid


def _long_csv(path, n):
    rng = np.random.default_rng(0)
    x = np.linspace(1.0, 50000.0, n)
    y = sigmoid(x, 0.61, 1.5, 3000.0, 0.2) + rng.normal(0, 0.01, n)
    path.write_text("step,pass_rate\n" + "\n".join(f"{a:.3f},{b:.5f}" for a, b in zip(x, y)) + "\n")
    return path


def test_plot_of_a_long_run_writes_a_bounded_svg(cli, tmp_path):
    """200k points drew 200k markers: a 22 MB SVG. Now at most a few thousand bin means, said on stderr."""
    p = _long_csv(tmp_path / "long.csv", 200_000)
    out = tmp_path / "long.svg"
    r = cli("plot", p, "-o", out, "--n-boot", "50")
    assert r.returncode == 0, r.stderr
    assert out.read_text().lstrip().startswith("<?xml")
    assert out.stat().st_size < 1_500_000, out.stat().st_size  # measured 0.7 MB
    # At most 2,000 markers for the fitted points and 2,000 for the warm-up's (how many of each depends on the rule).
    drawn = re.search(
        rf"warning: {re.escape(str(out))}: long: 200000 points drawn as (\d+) means of consecutive", r.stderr
    )
    assert drawn and 2000 <= int(drawn.group(1)) <= 4000, r.stderr
    assert r.stdout == ""


def test_two_plots_to_one_output_at_once(tmp_path):
    """Both finish, the figure is whole, and no temporary file is left beside it."""
    p = _long_csv(tmp_path / "runs.csv", 400)
    out = tmp_path / "fig.svg"
    cmd = [sys.executable, "-m", "scalerl.cli", "plot", str(p), "-o", str(out), "--n-boot", "50"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    assert out.read_text().rstrip().endswith("</svg>")
    assert sorted(q.name for q in tmp_path.iterdir()) == ["fig.svg", "runs.csv"]
