"""The curve commands as a user or a slurm script runs them: real subprocesses, stdout/stderr, exit codes."""

import json

import numpy as np
import pytest

from scalerl.curvefit.curves import sigmoid
from tests.conftest import peak_rss_mb, run_cli


@pytest.fixture
def synthetic_csv(tmp_path):
    rng = np.random.default_rng(0)
    rows = ["run,gpu_hours,pass_rate"]
    for name, A in (("base", 0.61), ("better", 0.70)):
        x = np.concatenate([[0.0], np.linspace(250, 40000, 160)])
        y = sigmoid(x, A, 1.5, 3000.0, 0.2) + rng.normal(0, 0.01, len(x))
        y[0] = 0.2
        rows += [f"{name},{a},{b}" for a, b in zip(x, y)]
    p = tmp_path / "runs.csv"
    p.write_text("\n".join(rows) + "\n")
    return p


def test_fit_json_shape(cli, synthetic_csv):
    r = cli("fit", synthetic_csv, "--json", "--n-boot", "200")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)  # exactly one JSON document
    assert [run["name"] for run in doc["runs"]] == ["base", "better"]
    run = doc["runs"][0]
    for key in ("name", "n_points", "n_excluded", "sigmoid", "power_law", "r2", "warnings"):
        assert key in run
    s = run["sigmoid"]
    assert set(s) >= {"A", "B", "C_mid", "R0", "ci"}
    assert s["ci"]["A"][0] <= s["A"] <= s["ci"]["A"][1]
    assert abs(s["A"] - 0.61) < 0.02 and s["R0"] == 0.2
    assert run["n_excluded"] == len(run["excluded"]["x"]) and run["excluded"]["below"] == 1500.0
    assert doc["uncertainty"]["method"] == "moving-block residual bootstrap + rolling-origin extrapolation error"
    prof = s["profile_A"]
    assert prof["interval"][0] <= 0.61 <= prof["interval"][1] and not prof["reaches_bound"]
    assert run["forecast_basis"] == "sigmoid" and run["extrapolation_error"]["k"] > 0


def test_fit_table_and_backtest(cli, synthetic_csv):
    r = cli("fit", synthetic_csv, "--n-boot", "200", "--backtest", "0.5")
    assert r.returncode == 0, r.stderr
    assert "sigmoid fits" in r.stdout and "backtest" in r.stdout and "better" in r.stdout
    r = cli("fit", synthetic_csv, "--n-boot", "200", "--backtest", "0.5", "--json")
    bt = json.loads(r.stdout)["runs"][0]["backtest"]
    # Two-sided: a 90% band that holds every one of > 50 later points is too wide to bet on (measured 0.975).
    assert bt["mae"] < 0.02 and 0.75 <= bt["coverage"] <= 0.99 and bt["n_test"] > 50


def test_forecast_budget_and_target(cli, synthetic_csv):
    r = cli(
        "forecast",
        synthetic_csv,
        "--budget",
        "400000",
        "--target",
        "0.6",
        "--target",
        "0.9",
        "--json",
        "--n-boot",
        "200",
    )
    assert r.returncode == 0, r.stderr
    base = json.loads(r.stdout)["runs"][0]
    (b,) = base["budgets"]
    assert b["ci"][0] <= b["pass_rate"] <= b["ci"][1] and abs(b["pass_rate"] - 0.61) < 0.02
    reach, above = base["targets"]
    assert reach["reachable"] and reach["compute"] > 0 and reach["ci"][0] <= reach["compute"]
    assert not above["reachable"] and above["compute"] is None and "above the fitted ceiling" in above["statement"]
    human = cli("forecast", synthetic_csv, "--target", "0.9", "--n-boot", "100")
    assert "above the fitted ceiling" in human.stdout


def test_compare_reports_ceilings_and_shared_a(cli, synthetic_csv, tmp_path):
    r = cli("compare", synthetic_csv, "--json", "--n-boot", "200")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    (pair,) = doc["pairs"]
    assert not pair["same_ceiling"] and pair["higher_ceiling"] == "better"
    r = cli("compare", synthetic_csv, "--json", "--n-boot", "200", "--a-tol", "0.2")
    (pair,) = json.loads(r.stdout)["pairs"]
    assert pair["same_ceiling"] and "shared_A" in pair and pair["more_efficient"] in ("base", "better")


def test_plot_writes_image(cli, synthetic_csv, tmp_path):
    out = tmp_path / "fig.png"
    r = cli("plot", synthetic_csv, "-o", out, "--budget", "1e6", "--n-boot", "100", "--power-law")
    assert r.returncode == 0, r.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 20000
    assert r.stdout == ""
    svg = tmp_path / "fig.svg"
    assert cli("plot", synthetic_csv, "-o", svg, "--n-boot", "100").returncode == 0
    assert svg.read_text().lstrip().startswith("<?xml")


def test_group_pools_seeds(cli, synthetic_csv):
    r = cli("fit", synthetic_csv, "--group", "--json", "--n-boot", "200")
    (run,) = json.loads(r.stdout)["runs"]
    assert run["n_seeds"] == 2 and run["name"] == "group of 2 seeds"


@pytest.mark.parametrize(
    "args, needle",
    [
        (["fit", "MISSING.csv"], "no such file"),
        (["fit", "{csv}", "--y", "nope"], "unknown column 'nope'"),
        (["fit", "{bad}"], "is not a number"),
        (["fit", "{few}"], "too few points"),
        (["fit", "{csv}", "--r0", "maybe"], "--r0 must be"),
        (["forecast", "{csv}"], "give --budget"),
        (["compare", "{few_ok}"], "at least two runs"),
        (["plot", "{csv}", "-o", "x.gif"], "unsupported plot format"),
        (["fit", "{csv}", "--no-such-flag"], "No such option"),
        (["fit", "{csv}", "--samples-col", "nope"], "unknown column 'nope' for --samples-col"),
        (["fit", "{csv}", "--samples", "0"], "Invalid value for '--samples'"),
        # Values outside the metric's range: the wrong --bound, or a metric on another scale.
        (["fit", "{high}"], "y = 1.05 at x = 19 lies outside [0, --bound 1] (21 such points)"),
        (["fit", "{csv}", "--bound", "0.5"], "lies outside [0, --bound 0.5]"),
        # Option values that are not finite, or out of range (click's FloatRange lets nan through).
        (["fit", "{csv}", "--seed", "-1"], "Invalid value for '--seed'"),
        (["fit", "{csv}", "--level", "nan"], "Invalid value for '--level': 'nan' is not a finite number"),
        (["fit", "{csv}", "--bound", "inf"], "Invalid value for '--bound'"),
        (["fit", "{csv}", "--bound", "0"], "Invalid value for '--bound'"),
        (["fit", "{csv}", "--bound", "1e200"], "Invalid value for '--bound'"),  # squared errors overflowed: exit 1
        (["fit", "{csv}", "--samples", "inf"], "Invalid value for '--samples'"),
        (["forecast", "{csv}", "--budget", "inf"], "Invalid value for '--budget'"),
        (["forecast", "{csv}", "--budget", "-5"], "Invalid value for '--budget'"),
        (["forecast", "{csv}", "--target", "nan"], "Invalid value for '--target'"),
        (["forecast", "{csv}", "--target", "1.5"], "--target 1.5 lies outside the metric's range [0, --bound 1]"),
        (["compare", "{csv}", "--a-tol", "-1"], "Invalid value for '--a-tol'"),
        (["fit", "{csv}", "--backtest", "0.001"], "--backtest 0.001 (fit up to"),
        # Settings that cannot take effect are refused, not ignored.
        (["plot", "{csv}", "-o", "p.png", "--budget", "100"], "--budget 100 extends no run"),
        (["fit", "{csv}", "--exclude-before", "10", "--warmup", "0.3"], "--exclude-before replaces; use one"),
        (["fit", "{csv}", "--warmup", "0.3"], "--warmup has no effect on base: its compute is in GPU-hours"),
        (["fit", "{counts}", "--samples", "100"], "counts: its source gives sample counts"),
        (["fit", "{counts}", "--samples", "100", "--samples-col", "n_samples"], "both give the sample counts"),
        (["fit", "{wandb}", "--group-by", "g"], "wandb.csv: a W&B export has a column per run and metric, none for"),
        (["fit", "{rundir}", "--group-by", "nosuch"], "unknown column 'nosuch' for --group-by"),
        # Damaged or unwritable files.
        (["compare", "{sweep}"], "sweep.json: not a sweep plan"),
        (["plot", "{csv}", "-o", "adir.png"], "adir.png: cannot write the plot"),
    ],
)
def test_bad_input_exit_2_one_line_no_stdout(cli, tmp_path, synthetic_csv, args, needle):
    (tmp_path / "bad.csv").write_text("x,y\n1,0.1\n2,oops\n")
    (tmp_path / "few.csv").write_text("x,y\n0,0.1\n1,0.2\n2,0.3\n")
    (tmp_path / "few_ok.csv").write_text("x,y\n" + "\n".join(f"{i},{0.1 + 0.01 * i}" for i in range(40)) + "\n")
    (tmp_path / "high.csv").write_text("x,y\n" + "\n".join(f"{i},{0.1 + 0.05 * i:g}" for i in range(40)) + "\n")
    (tmp_path / "counts.csv").write_text(
        "x,y,n_samples\n" + "\n".join(f"{i},{0.1 + 0.01 * i},500" for i in range(40)) + "\n"
    )
    rows = "\n".join(f"{i},{0.1 + 0.01 * i},{0.2 + 0.01 * i}" for i in range(40))
    (tmp_path / "wandb.csv").write_text("Step,runA - eval/acc,runB - eval/acc\n" + rows + "\n")
    rundir = tmp_path / "rundir"
    rundir.mkdir()
    evals = [{"kind": "eval", "step": i, "gpu_hours": i, "pass_rate": 0.1 + 0.01 * i} for i in range(40)]
    (rundir / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in evals))
    sweep = tmp_path / "sweep"
    (sweep / "a" / "run").mkdir(parents=True)
    (sweep / "a" / "run" / "metrics.jsonl").write_text((rundir / "metrics.jsonl").read_text())
    (sweep / "sweep.json").write_text(json.dumps({"variants": [{"name": "a"}, {"nam": "b"}], "baseline": "a"}))
    (tmp_path / "adir.png").mkdir()
    subs = {
        "{csv}": synthetic_csv,
        "{bad}": tmp_path / "bad.csv",
        "{few}": tmp_path / "few.csv",
        "{few_ok}": tmp_path / "few_ok.csv",
        "{high}": tmp_path / "high.csv",
        "{counts}": tmp_path / "counts.csv",
        "{wandb}": tmp_path / "wandb.csv",
        "{rundir}": rundir,
        "{sweep}": sweep,
    }
    r = cli(*[subs.get(a, a) for a in args], "--n-boot", "100", cwd=tmp_path)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert r.stdout == ""
    assert needle in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert [p.name for p in tmp_path.iterdir() if ".tmp" in p.name] == []  # no half-written plot left behind


def test_json_mode_still_prints_warnings_on_stderr(cli, synthetic_csv):
    """docs/cli-json.md: warnings go to stderr, and in --json mode also inside the document."""
    r = cli("forecast", synthetic_csv, "--budget", "1e7", "--json", "--n-boot", "100")
    assert r.returncode == 0, r.stderr
    inside = [w for run in json.loads(r.stdout)["runs"] for w in run["warnings"]]
    assert inside and all(f"warning: {name}: " in r.stderr for name in ("base", "better"))
    assert "1e+07 is" in r.stderr


def test_plot_draws_dollar_signs_as_typed(cli, synthetic_csv, tmp_path):
    """matplotlib reads $...$ as mathtext; a title or run name is text, not math."""
    r = cli("plot", synthetic_csv, "-o", tmp_path / "t.png", "--title", "gain $\\foo$ in $", "--n-boot", "100")
    assert r.returncode == 0 and (tmp_path / "t.png").stat().st_size > 0, r.stderr


def test_target_already_reached_says_so(cli, synthetic_csv):
    r = cli("forecast", synthetic_csv, "--target", "0.05", "--json", "--n-boot", "100")
    (t,) = json.loads(r.stdout)["runs"][0]["targets"]
    assert t["reachable"] and "already reached where the run starts" in t["statement"], t


def test_help_and_version(cli):
    r = cli("--help")
    assert r.returncode == 0 and "fit" in r.stdout and "Exit codes" in r.stdout
    r = cli("fit", "--help")
    assert "block bootstrap" in r.stdout.replace("\n", " ").replace("  ", " ") or "bootstrap" in r.stdout
    # A group alone prints its help page (it was squashed into one 'error:' line, exit 2).
    for group in ([], ["config"]):
        r = cli(*group)
        assert r.returncode == 0 and r.stdout.startswith("Usage: scalerl") and "Commands:" in r.stdout, r.stderr
        assert r.stderr == ""


def test_every_help_page_describes_its_ranges():
    """An option without bounds once read "[x<=None]" in --help (click's FloatRange with neither end)."""
    from click.testing import CliRunner

    from scalerl.cli.main import cli as group

    for name in sorted(group.commands):
        r = CliRunner().invoke(group, [name, "--help"])
        assert r.exit_code == 0 and "None]" not in r.output, (name, r.output)


def test_cli_does_not_import_torch_numpy_or_scipy_for_help():
    import subprocess
    import sys

    # numpy was a quarter of `scalerl --help`'s 0.2 s, through the config's wire checks (shared/wire/values.py).
    code = (
        "import sys; from scalerl.cli.main import cli; from scalerl.cli import run_config; "
        "print([m for m in ('torch', 'numpy', 'scipy', 'matplotlib', 'zmq') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


HOSTILE = {
    "random.csv": None,  # filled with random bytes
    "random.json": None,
    "random.jsonl": None,
    "empty.csv": b"",
    "empty.jsonl": b"",
    "nul.csv": b"x,y\n1,0.1\x00\n2,0.2\n",
    "truncated.csv": b"x,y\n1,0.1\n2,0.2\n3",
    "header_only.csv": b"x,y\n",
    # An integer past float's range (OverflowError), nesting past Python's stack (RecursionError), a compute axis of
    # 285 decades (overflow in the power law's grid): each was an internal error, exit 1.
    "bigint.jsonl": b"".join(b'{"x": %d, "y": 0.%d}\n' % (i, i) for i in range(1, 9))
    + b'{"x": 1'
    + b"0" * 400
    + b', "y": 0.5}\n',
    "deep.jsonl": b"[" * 100_000 + b"]" * 100_000 + b"\n",
    "decades.csv": b"x,y\n" + b"".join(b"1e%d,0.%d\n" % (15 * i, i) for i in range(1, 10)),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
@pytest.mark.parametrize("cmd", [["fit"], ["forecast", "--budget", "10"], ["plot", "-o", "out.png"], ["compare"]])
def test_hostile_files_exit_2_naming_the_file(cli, tmp_path, name, cmd):
    content = HOSTILE[name]
    if content is None:
        content = np.random.default_rng(len(name)).integers(0, 256, 4000, dtype=np.uint8).tobytes()
    (tmp_path / name).write_bytes(content)
    r = cli(*cmd, name, "--n-boot", "50", cwd=tmp_path)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert r.stdout == "" and "Traceback" not in r.stderr
    # A file that reads but cannot be fitted is named by its run: a file of x and y alone is one run, its stem.
    named = name.removesuffix(".csv") + ": x spans" if name == "decades.csv" else name
    assert len(r.stderr.strip().splitlines()) == 1 and named in r.stderr, r.stderr


def test_plot_refuses_a_missing_directory(cli, synthetic_csv, tmp_path):
    out = tmp_path / "typo" / "deeper" / "fig.png"
    r = cli("plot", synthetic_csv, "-o", out, "--n-boot", "50")
    assert r.returncode == 2 and r.stdout == ""
    assert f"directory {tmp_path / 'typo'} does not exist" in r.stderr
    assert not (tmp_path / "typo").exists()


def test_backtest_prints_coverage_beside_nominal(cli, synthetic_csv):
    r = cli("fit", synthetic_csv, "--n-boot", "100", "--backtest", "0.3")
    assert r.returncode == 0, r.stderr
    assert "(nominal 90%)" in r.stdout
    doc = json.loads(cli("fit", synthetic_csv, "--n-boot", "100", "--backtest", "0.3", "--json").stdout)
    for run in doc["runs"]:
        bt = run["backtest"]
        warned = bt["calibration_warning"] is not None
        assert warned == (abs(bt["coverage"] - 0.9) > 0.10)
        assert warned == (f"warning: {run['name']}: backtest coverage" in r.stderr)


def test_forecast_far_budget_warns_and_widens(cli, synthetic_csv):
    r = cli("forecast", synthetic_csv, "--budget", "2e6", "--json", "--n-boot", "100")
    assert r.returncode == 0, r.stderr
    (b,) = json.loads(r.stdout)["runs"][0]["budgets"]
    assert b["extrapolation"] > 10 and b["widening"] > 1.0
    assert b["ci"][1] - b["ci"][0] > b["ci_bootstrap"][1] - b["ci_bootstrap"][0]
    assert any("beyond the last fitted point" in w for w in b["warnings"])
    human = cli("forecast", synthetic_csv, "--budget", "2e6", "--n-boot", "100")
    assert "wider than the bootstrap" in human.stderr and "widening" in human.stdout


def test_forecast_of_a_flat_run_has_no_widening_ratio(cli, tmp_path):
    """A perfectly flat run read "213448946541.2x wider" (its bootstrap interval has no width): null in the JSON,
    "undefined" in the table, and the warning says why."""
    p = tmp_path / "flat.csv"
    p.write_text("step,pass_rate\n" + "".join(f"{10 * i},0.5\n" for i in range(40)))
    r = cli("forecast", p, "--budget", "4000", "--json", "--n-boot", "100")
    assert r.returncode == 0, r.stderr
    (b,) = json.loads(r.stdout)["runs"][0]["budgets"]
    assert b["widening"] is None and b["ci"][1] - b["ci"][0] > 0.01
    human = cli("forecast", p, "--budget", "4000", "--n-boot", "100")
    assert human.returncode == 0, human.stderr
    assert "the bootstrap interval has no width" in human.stderr and "wider than" not in human.stderr
    assert "undefined (the bootstrap interval has no width)" in human.stdout


def test_compare_seed_groups_by_glob(cli, tmp_path):
    rng = np.random.default_rng(3)
    rows = ["run,gpu_hours,pass_rate,recipe"]
    for recipe, B in (("slow", 1.0), ("fast", 2.5)):
        for s in range(2):
            x = np.concatenate([[0.0], np.linspace(250, 40000, 120)])
            y = sigmoid(x, 0.62, B, 3000.0, 0.2) + rng.normal(0, 0.01, len(x))
            y[0] = 0.2
            rows += [f"{recipe}_seed{s},{a},{b},{recipe}" for a, b in zip(x, y)]
    p = tmp_path / "seeds.csv"
    p.write_text("\n".join(rows) + "\n")
    r = cli("compare", p, "--group-glob", "slow=slow_*", "--group-glob", "fast=fast_*", "--json", "--n-boot", "100")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert [run["name"] for run in doc["runs"]] == ["slow", "fast"]
    (pair,) = doc["pairs"]
    assert pair["more_efficient"] == "fast" and pair["significant"]
    r = cli("compare", p, "--group-by", "recipe", "--json", "--n-boot", "100")
    assert [run["name"] for run in json.loads(r.stdout)["runs"]] == ["recipe=slow", "recipe=fast"]


def test_fit_memory_is_bounded_on_a_long_csv(tmp_path):
    """200k rows: the old code needed ~20 GB (110 KB a point); now about O(n) small arrays."""
    rng = np.random.default_rng(0)
    x = np.linspace(1.0, 50000.0, 200_000)
    y = sigmoid(x, 0.61, 1.5, 3000.0, 0.2) + rng.normal(0, 0.01, len(x))
    p = tmp_path / "long.csv"
    p.write_text("step,pass_rate\n" + "\n".join(f"{a:.3f},{b:.5f}" for a, b in zip(x, y)) + "\n")
    peak_mb, stdout, _ = peak_rss_mb("fit", p, "--json")
    (run,) = json.loads(stdout)["runs"]
    assert run["bootstrap_points"] == 2000 and any("bins of consecutive points" in w for w in run["warnings"])
    assert abs(run["sigmoid"]["A"] - 0.61) < 0.01
    assert peak_mb < 700, peak_mb  # measured ~340 MB, most of it numpy/scipy themselves


def test_forecast_says_whether_the_sigmoid_beats_persistence(cli, tmp_path, synthetic_csv):
    """A clean sigmoid beats holding the level on its own backtest; a run that peaks and declines does not, and its
    forecast is labelled a level forecast."""
    r = cli("forecast", synthetic_csv, "--budget", "80000", "--n-boot", "100", "--json")
    assert r.returncode == 0, r.stderr
    run = json.loads(r.stdout)["runs"][0]
    per = run["persistence"]
    assert per["sigmoid_beats_persistence"] is True and run["forecast_basis"] == "sigmoid"
    assert per["mse"]["sigmoid"] < per["mse"]["level"] and abs(sum(per["weights"].values()) - 1) < 1e-9
    rng = np.random.default_rng(5)
    flat = tmp_path / "peak.csv"
    y = 0.3 + 0.3 * np.sin(np.pi * np.arange(1, 120) / 150) + rng.normal(0, 0.01, 119)
    flat.write_text("step,pass_rate\n" + "".join(f"{i},{v:.4f}\n" for i, v in enumerate(y, 1)))
    r = cli("forecast", flat, "--budget", "1000", "--n-boot", "100")
    assert r.returncode == 0, r.stderr
    assert "does not beat persistence" in r.stdout and "level forecast" in r.stdout
    assert "level forecast: the sigmoid does not beat persistence" in r.stderr
    doc = json.loads(cli("forecast", flat, "--budget", "1000", "--n-boot", "100", "--json").stdout)
    assert doc["runs"][0]["forecast_basis"] == "recent level"
    assert doc["runs"][0]["persistence"]["sigmoid_beats_persistence"] is False


def test_backtest_scores_intervals_against_the_naive_forecasts(cli, synthetic_csv):
    r = cli("fit", synthetic_csv, "--n-boot", "100", "--backtest", "0.4", "--samples", "2000", "--json")
    assert r.returncode == 0, r.stderr
    run = json.loads(r.stdout)["runs"][0]
    bt = run["backtest"]
    assert run["noise_sd"] is not None and 0.005 < run["noise_sd"] < 0.02  # binomial sd at p ~ 0.6, n = 2000
    assert bt["interval_score"] >= bt["mean_width"] > 0
    assert set(bt["naive"]) == {"last value", "last-3 mean"}
    assert bt["beats_naive"] == (bt["mae"] < min(v["mae"] for v in bt["naive"].values()))
    human = cli("fit", synthetic_csv, "--n-boot", "100", "--backtest", "0.4")
    assert "interval score" in human.stdout and "naive MAE" in human.stdout


def test_a_run_name_with_a_line_break_keeps_each_warning_on_one_line(tmp_path):
    # A quoted CSV field may hold a line break; the run's warnings were printed with it, the second half of each on
    # a line of its own without the "warning: " prefix.
    rows = "".join(f'"a\nb",{x},{y}\n' for x, y in [(2, 0.3), (1, 0.2), (3, 0.35), (4, 0.4), (5, 0.42), (6, 0.45)])
    src = tmp_path / "nl.csv"
    src.write_text("run,x,y\n" + rows)
    for args in (["fit", src], ["forecast", src, "--budget", "100"], ["plot", src, "-o", tmp_path / "p.png"]):
        r = run_cli(*args)
        assert r.returncode == 0, r.stderr
        lines = r.stderr.splitlines()
        assert "warning: a b: rows were not sorted by x; sorted them" in lines, r.stderr
        assert all(x.startswith(("warning: ", "wrote ")) for x in lines), lines
