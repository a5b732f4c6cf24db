"""Review of the curve tools (fit, readers, plot, compare): what they refuse and warn must be true."""

from pathlib import Path

import numpy as np
import pytest

from scalerl.curvefit.errors import InputError
from scalerl.curvefit.readers import ReadOptions, read_sources


def _write(path: Path, header: str, rows) -> Path:
    path.write_text(header + "\n" + "".join(",".join(str(v) for v in r) + "\n" for r in rows))
    return path


def _rise(n=61):
    x = np.arange(n) * 5.0
    y = 0.2 + 0.5 / (1.0 + (400.0 / np.maximum(x, 1e-9)) ** 1.2)
    return x, y


def test_samples_is_refused_for_a_file_whose_count_column_has_a_blank_cell(tmp_path):
    x, y = _rise()
    counts = ["500"] * len(x)
    counts[3] = ""  # one blank cell: the run's counts become unknown, but the file still has its own
    path = _write(tmp_path / "samp.csv", "x,y,eval_samples", zip(x, np.round(y, 4), counts))
    with pytest.raises(InputError, match="its source gives sample counts .*blank on some rows.*drop --samples"):
        read_sources([path], ReadOptions(samples=100))
    (c,) = read_sources([path], ReadOptions())
    assert c.samples is None and c.counted
    # a file without a count column still takes --samples
    bare = _write(tmp_path / "bare.csv", "x,y", zip(x, np.round(y, 4)))
    (c,) = read_sources([bare], ReadOptions(samples=100))
    assert c.samples is not None and np.all(c.samples == 100)


def _fit(x, y, **kw):
    from scalerl.curvefit.data import clean_curve
    from scalerl.curvefit.fit import FitOptions, fit_curves

    return fit_curves([clean_curve("run", x, y, "x", "y")], FitOptions(n_boot=50, **kw))


def test_a_fixed_r0_above_every_fitted_point_warns():
    x, y = _rise()
    fit = _fit(x, y, r0=0.9)
    assert fit.r2 < 0
    (w,) = [m for m in fit.warnings if "above every fitted point" in m]
    assert w.startswith("R0 = 0.9 (fixed by --r0) lies above every fitted point") and "\n" not in w
    assert f"R^2 = {fit.r2:.3g}" in w
    assert not any("above every fitted point" in m or m.startswith("R^2") for m in _fit(x, y).warnings)


def test_a_negative_r2_warns_on_its_own():
    from scalerl.curvefit.fit import diagnose

    x, y = _rise()
    fit = _fit(x, y)
    # the same fit scored against points it does not describe: R0 below them, R^2 negative
    fit.y = fit.y[::-1].copy()
    assert fit.r2 < 0
    assert any(m.startswith(f"R^2 = {fit.r2:.3g} is negative") for m in diagnose(fit))


@pytest.mark.parametrize("level", [0.4, 0.123456789, 0.7])
def test_r2_of_a_constant_run_is_undefined(level):
    x = np.arange(61) * 5.0
    fit = _fit(x, np.full(len(x), level))
    assert np.isnan(fit.r2) and np.isnan(fit.r2_all)


def test_an_all_zero_run_is_called_flat():
    x = np.arange(61) * 5.0
    fit = _fit(x, np.zeros(len(x)))
    (w,) = [m for m in fit.warnings if m.startswith("flat fit")]
    assert "no gain is detected" in w and f"A = {fit.params.A:.4g} is not measured" in w
    x, y = _rise()
    assert not any(m.startswith("flat fit") for m in _fit(x, y).warnings)


def test_plot_output_under_a_file_says_it_is_not_a_directory(tmp_path):
    from scalerl.curvefit.plot import check_output

    (tmp_path / "good.csv").write_text("x,y\n")
    for out in (tmp_path / "good.csv" / "out.png", tmp_path / "good.csv" / "sub" / "out.png"):
        with pytest.raises(InputError) as e:
            check_output(out)
        assert str(e.value) == f"{out}: {tmp_path / 'good.csv'} is not a directory"
    with pytest.raises(InputError, match="directory .*nope does not exist"):
        check_output(tmp_path / "nope" / "out.png")


def test_compare_seed_reaches_the_shared_a_bootstrap():
    from dataclasses import replace

    from scalerl.curvefit.compare import compare_pair, shared_a_fit

    x = np.arange(61) * 5.0
    noise = np.random.default_rng(3).normal(0, 0.01, (2, len(x)))
    ya = 0.2 + 0.5 / (1.0 + (100.0 / np.maximum(x, 1e-9)) ** 1.2) + noise[0]
    yb = 0.2 + 0.5 / (1.0 + (120.0 / np.maximum(x, 1e-9)) ** 1.0) + noise[1]
    a, b = _fit(x, ya), _fit(x, yb)
    a.options = replace(a.options, seed=7)
    pair = compare_pair(a, b, 0.02, 1e5)
    assert "shared_A" in pair
    want = shared_a_fit(a, b, 1.0, a.options.level, seed=7)
    other = shared_a_fit(a, b, 1.0, a.options.level, seed=0)
    assert pair["shared_A"]["A_ci"] == want["A_ci"] and want["A_ci"] != other["A_ci"]


def test_the_same_column_for_x_and_y_is_refused(tmp_path):
    x, y = _rise()
    path = _write(tmp_path / "good.csv", "x,y", zip(x, np.round(y, 4)))
    with pytest.raises(InputError, match="^--x and --y both name column 'y'"):
        read_sources([path], ReadOptions(x="y", y="y"))
    # a default picked for the other axis can be the same column
    with pytest.raises(InputError, match="both read column 'y'; name the other with --y COL"):
        read_sources([path], ReadOptions(x="y"))
    jsonl = tmp_path / "good.jsonl"
    jsonl.write_text("".join(f'{{"x": {a}, "y": {b}}}\n' for a, b in zip(x, y)))
    with pytest.raises(InputError, match="both read column 'x'; name the other with --x COL"):
        read_sources([jsonl], ReadOptions(y="x"))
