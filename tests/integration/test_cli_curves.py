"""The curve commands as a user or a slurm script runs them: real subprocesses, stdout/stderr, exit codes."""

import json

import numpy as np
import pytest

from scalerl.curvefit.curves import sigmoid


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
    assert bt["mae"] < 0.02 and 0.5 <= bt["coverage"] <= 1.0 and bt["n_test"] > 50


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
    ],
)
def test_bad_input_exit_2_one_line_no_stdout(cli, tmp_path, synthetic_csv, args, needle):
    (tmp_path / "bad.csv").write_text("x,y\n1,0.1\n2,oops\n")
    (tmp_path / "few.csv").write_text("x,y\n0,0.1\n1,0.2\n2,0.3\n")
    (tmp_path / "few_ok.csv").write_text("x,y\n" + "\n".join(f"{i},{0.1 + 0.01 * i}" for i in range(40)) + "\n")
    subs = {
        "{csv}": synthetic_csv,
        "{bad}": tmp_path / "bad.csv",
        "{few}": tmp_path / "few.csv",
        "{few_ok}": tmp_path / "few_ok.csv",
    }
    r = cli(*[subs.get(a, a) for a in args], "--n-boot", "100", cwd=tmp_path)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert r.stdout == ""
    assert needle in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_help_and_version(cli):
    r = cli("--help")
    assert r.returncode == 0 and "fit" in r.stdout and "Exit codes" in r.stdout
    r = cli("fit", "--help")
    assert "block bootstrap" in r.stdout.replace("\n", " ").replace("  ", " ") or "bootstrap" in r.stdout


def test_cli_does_not_import_torch_or_scipy_for_help():
    import subprocess
    import sys

    code = (
        "import sys; from scalerl.cli.main import cli; "
        "print('torch' in sys.modules, 'scipy' in sys.modules, 'matplotlib' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.split()
    assert out == ["False", "False", "False"]
