"""Defects found by user-acceptance testing of the curve commands, each pinned by the real CLI in a subprocess."""

import json

import numpy as np

from scalerl.curvefit.curves import sigmoid
from tests.conftest import peak_rss_mb


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_jsonl_with_a_run_key_splits_runs_as_a_csv_does(cli, tmp_path):
    """docs/curvefit.md: `--run-col` defaults to `run` when present, for JSONL as for CSV. Without it the seeds of a
    JSONL file were pooled into one curve, their points at the same x averaged (a silent wrong fit)."""
    rows = [
        {"run": f"seed{s}", "step": i, "pass_rate": 0.2 + (0.4 + 0.1 * s) * i / (i + 20)}
        for s in range(2)
        for i in range(60)
    ]
    p = _jsonl(tmp_path / "runs.jsonl", rows)
    r = cli("fit", p, "--json", "--n-boot", "50")
    assert r.returncode == 0, r.stderr
    assert [run["name"] for run in json.loads(r.stdout)["runs"]] == ["seed0", "seed1"]
    assert "duplicate x" not in r.stderr


def _peak_csv(tmp_path):
    """A run that rises and falls: the sigmoid does not beat persistence, so every forecast is a level forecast."""
    rng = np.random.default_rng(5)
    y = 0.3 + 0.3 * np.sin(np.pi * np.arange(1, 120) / 150) + rng.normal(0, 0.01, 119)
    p = tmp_path / "peak.csv"
    p.write_text("step,pass_rate\n" + "".join(f"{i},{v:.4f}\n" for i, v in enumerate(y, 1)))
    return p


def test_forecast_json_lists_each_warning_once(cli, tmp_path):
    """The level-forecast note rides on every budget beyond the data; the run's `warnings` held it once per budget."""
    r = cli("forecast", _peak_csv(tmp_path), "--budget", "1000", "--budget", "5000", "--json", "--n-boot", "50")
    assert r.returncode == 0, r.stderr
    warnings = json.loads(r.stdout)["runs"][0]["warnings"]
    assert any(w.startswith("level forecast") for w in warnings)
    assert len(warnings) == len(set(warnings)), warnings
    assert sorted(warnings) == sorted(line.split(": ", 2)[2] for line in r.stderr.splitlines())


def test_forecast_table_prints_a_far_budget_compactly(cli, tmp_path):
    """--budget 1e300 is a finite number; its extrapolation ratio filled the table with 300 digits."""
    r = cli("forecast", _peak_csv(tmp_path), "--budget", "1e300", "--n-boot", "50")
    assert r.returncode == 0, r.stderr
    assert "e+297x" in r.stdout and "0000000000" not in r.stdout, r.stdout


def test_wandb_export_of_every_metric_is_read_in_bounded_memory(tmp_path):
    """docs/curvefit.md: a W&B export of a long run is read in one streaming pass. The W&B reader kept every cell
    of the file as a string: 200k rows of 30 metrics for 2 runs peaked at 1 GB (measured), now about 380 MB."""
    x = np.arange(1, 200_001)
    cells = np.char.mod("%.5f", sigmoid(x, 0.6, 1.5, 2e4, 0.2))
    p = tmp_path / "wandb.csv"
    header = ["Step"] + [f"run{r} - m{k}" for r in range(2) for k in range(30)]
    with p.open("w") as f:
        f.write(",".join(header) + "\n")
        f.write("".join(f"{i}," + ",".join([c] * 60) + "\n" for i, c in zip(x, cells)))
    peak_mb, stdout, _ = peak_rss_mb("fit", p, "--y", "m0", "--json", "--n-boot", "50")
    assert [run["name"] for run in json.loads(stdout)["runs"]] == ["run0", "run1"]
    assert peak_mb < 700, peak_mb


def test_a_csv_with_two_columns_of_one_name_is_refused(cli, tmp_path):
    """Two `pass_rate` columns: the first was fitted silently, whichever of the two the user meant."""
    p = tmp_path / "dup.csv"
    p.write_text("step,pass_rate,pass_rate\n" + "".join(f"{i},{0.2 + 0.4 * i / (i + 30):.4f},0.9\n" for i in range(60)))
    r = cli("fit", p, "--n-boot", "50")
    assert r.returncode == 2 and r.stdout == "", r.stderr
    assert (
        r.stderr.strip() == f"scalerl: error: {p}: column 'pass_rate' appears 2 times in the header; rename the copies"
    )


def test_plot_says_a_missing_glyph_in_one_line(cli, tmp_path):
    """A CJK run name: matplotlib's font lacks the glyphs and warned in two lines per character, one of them a line of
    plot.py's source. Now one line naming the characters (when the font has them, nothing)."""
    x = np.arange(100)
    p = tmp_path / "cjk.csv"
    p.write_text("run,step,pass_rate\n" + "".join(f"日本,{i},{0.2 + 0.4 * i / (i + 30):.4f}\n" for i in x))
    out = tmp_path / "cjk.png"
    r = cli("plot", p, "-o", out, "--n-boot", "50")
    assert r.returncode == 0 and out.stat().st_size > 0, r.stderr
    lines = r.stderr.splitlines()
    assert all(line.startswith(("warning: ", "wrote ")) for line in lines), r.stderr
    assert len(lines) == len(set(lines)) and sum("no glyph for" in line for line in lines) <= 1, r.stderr


def test_negative_compute_is_warned_of(cli, tmp_path):
    """A step column shifted by 50: a quarter of the run sat at negative compute and was left out without a word
    (the table's 'excluded' column said only 'x < threshold')."""
    p = tmp_path / "shifted.csv"
    p.write_text("step,pass_rate\n" + "".join(f"{i - 50},{0.2 + 0.4 * i / (i + 30):.4f}\n" for i in range(200)))
    r = cli("fit", p, "--n-boot", "50")
    assert r.returncode == 0, r.stderr
    assert "warning: shifted: 50 point(s) at negative step (from -50)" in r.stderr, r.stderr


def _two_axes(tmp_path):
    rise = [0.2 + 0.4 * i / (i + 30) for i in range(100)]
    gh, steps = tmp_path / "gh.csv", tmp_path / "steps.csv"
    gh.write_text("gpu_hours,pass_rate\n" + "".join(f"{50 * i},{v:.4f}\n" for i, v in enumerate(rise)))
    steps.write_text("step,pass_rate\n" + "".join(f"{i},{v:.4f}\n" for i, v in enumerate(rise)))
    return gh, steps


def test_seeds_on_different_compute_axes_are_not_pooled(cli, tmp_path):
    """A GPU-hours run and a step run pooled as seeds of one recipe: an internal error (exit 1) from the bootstrap,
    or with equal lengths a fit of two units on one axis. Refused naming the runs and their columns."""
    gh, steps = _two_axes(tmp_path)
    for pool in (["--group"], ["--group-glob", "g=*"]):
        r = cli("fit", gh, steps, *pool, "--n-boot", "50")
        assert r.returncode == 2 and r.stdout == "", r.stderr
        assert "different compute columns: gh (gpu_hours), steps (step)" in r.stderr
        assert len(r.stderr.splitlines()) == 1, r.stderr


def test_compare_and_plot_warn_of_runs_on_different_compute_axes(cli, tmp_path):
    gh, steps = _two_axes(tmp_path)
    r = cli("compare", gh, steps, "--n-boot", "50", "--json")
    assert r.returncode == 0, r.stderr
    assert "warning: the runs are on different compute axes (gh (gpu_hours), steps (step))" in r.stderr
    # The document carries it too: a script reading only stdout must not compare C_mid across two units unwarned.
    (warning,) = json.loads(r.stdout)["warnings"]
    assert warning.startswith("the runs are on different compute axes (gh (gpu_hours), steps (step))")
    assert f"warning: {warning}" in r.stderr.splitlines()
    out = tmp_path / "mix.png"
    r = cli("plot", gh, steps, "-o", out, "--n-boot", "50")
    assert r.returncode == 0, r.stderr
    assert f"warning: {out}: runs on different compute axes" in r.stderr and "labelled gpu_hours" in r.stderr


def test_a_level_between_whole_percents_is_printed_as_given(cli, tmp_path):
    """--level 0.999 was printed as '100% intervals' and 'nominal 100%': a promise no interval makes."""
    p = tmp_path / "rise.csv"
    p.write_text("step,pass_rate\n" + "".join(f"{i},{0.2 + 0.4 * i / (i + 30):.4f}\n" for i in range(100)))
    r = cli("fit", p, "--level", "0.999", "--backtest", "0.5", "--n-boot", "50")
    assert r.returncode == 0, r.stderr
    assert "99.9% intervals" in r.stdout and "(nominal 99.9%)" in r.stdout and "100% interval" not in r.stdout
    r = cli("fit", _peak_csv(tmp_path), "--level", "0.975", "--backtest", "0.5", "--n-boot", "50", "--json")
    assert "is off the nominal 97.5% by" in json.loads(r.stdout)["runs"][0]["backtest"]["calibration_warning"]


def test_a_fixed_r0_out_of_range_is_refused_naming_the_option(cli, tmp_path):
    """--r0 nan / 1.5 were refused only once the first run was fitted, as 'RUN: R0 = nan is outside [0, 1)'."""
    p = tmp_path / "rise.csv"
    p.write_text("step,pass_rate\n" + "".join(f"{i},{0.2 + 0.4 * i / (i + 30):.4f}\n" for i in range(100)))
    for value, why in (("nan", "is not a finite number"), ("1.5", "lies outside [0, --bound 1)")):
        r = cli("fit", p, "--r0", value, "--n-boot", "50")
        assert r.returncode == 2 and r.stdout == "", r.stderr
        assert r.stderr.strip() == f"scalerl: error: --r0 {value} {why}", r.stderr


def test_a_long_run_dir_is_read_without_holding_its_train_lines(cli, tmp_path):
    """A run dir's metrics.jsonl is mostly train lines: 60k of them (62 MB) around 300 evaluations peaked at 550 MB
    (every line held as a dict before the eval lines were picked), now about 125 MB. A truncated last line is still
    ignored with a warning, and a bad line before the end is still an error naming it."""
    run = tmp_path / "run"
    run.mkdir()
    stats = {f"stat_{k}": 0.123456789 + k for k in range(40)}
    with (run / "metrics.jsonl").open("w") as f:
        for i in range(60_000):
            f.write(json.dumps({"kind": "train", "step": i, "gpu_hours": i * 0.05, **stats}) + "\n")
            if i % 200 == 0:
                gh = i * 0.05
                f.write(json.dumps({"kind": "eval", "step": i, "gpu_hours": gh, "pass_rate": 0.2 + gh / (gh + 900)}))
                f.write("\n")
        f.write('{"kind": "eval", "st')
    peak_mb, stdout, stderr = peak_rss_mb("fit", run, "--json", "--n-boot", "50")
    (fit,) = json.loads(stdout)["runs"]
    assert fit["n_points"] + fit["n_excluded"] == 300
    assert "ignored a truncated last line (metrics.jsonl:60301)" in stderr
    assert peak_mb < 300, peak_mb
    with (run / "metrics.jsonl").open("a") as f:  # the partial line is no longer the last
        f.write("\n" + json.dumps({"kind": "eval", "step": 1}) + "\n")
    r = cli("fit", run, "--n-boot", "50")
    assert r.returncode == 2 and r.stdout == "", r.stderr
    assert r.stderr.startswith(f"scalerl: error: {run / 'metrics.jsonl'}:60301: invalid JSON ("), r.stderr


def test_a_run_dir_without_evaluations_says_so(cli, tmp_path):
    """A run that has trained but not evaluated yet was refused as 'metrics.jsonl: no records'."""
    run = tmp_path / "run"
    run.mkdir()
    _jsonl(run / "metrics.jsonl", [{"kind": "train", "step": i, "gpu_hours": 0.1 * i} for i in range(10)])
    r = cli("fit", run)
    assert r.returncode == 2 and r.stdout == "", r.stderr
    assert r.stderr.strip() == f"scalerl: error: {run / 'metrics.jsonl'}: no evaluations yet (no eval line)"


def test_a_blank_run_name_is_refused_naming_the_line(cli, tmp_path):
    """A blank run cell (CSV) or a null run (JSONL) made a run named '' or 'None', fitted and printed as such."""
    csv = tmp_path / "blank.csv"
    csv.write_text("run,step,pass_rate\n" + "".join(f"{'' if i == 7 else 'a'},{i},0.{i + 10}\n" for i in range(60)))
    rows = [{"run": None if i == 7 else "a", "step": i, "pass_rate": 0.2 + 0.004 * i} for i in range(60)]
    jsonl = _jsonl(tmp_path / "null.jsonl", rows)
    for p, line in ((csv, 9), (jsonl, 8)):
        r = cli("fit", p, "--n-boot", "50")
        assert r.returncode == 2 and r.stdout == "", r.stderr
        assert r.stderr.strip() == f"scalerl: error: {p}:{line}: blank run name in 'run'", r.stderr


def test_group_of_one_run_is_refused(cli, tmp_path):
    """--group over a single run cannot take effect (there is no seed spread to resample): it printed 'group of 1
    seeds' and fitted the run alone."""
    p = tmp_path / "one.csv"
    p.write_text("step,pass_rate\n" + "".join(f"{i},{0.2 + 0.4 * i / (i + 30):.4f}\n" for i in range(100)))
    r = cli("fit", p, "--group", "--n-boot", "50")
    assert r.returncode == 2 and r.stdout == "", r.stderr
    assert (
        r.stderr.strip()
        == "scalerl: error: --group pools several runs as seeds of one recipe; the sources hold one (one)"
    )


def test_fit_table_shows_an_undefined_r2_as_a_dash(cli, tmp_path):
    """R² of a run that never moves is 0/0: null in the JSON, but 'nan' in the table."""
    p = tmp_path / "flat.csv"
    p.write_text("step,pass_rate\n" + "".join(f"{i},0.5\n" for i in range(60)))
    r = cli("fit", p, "--n-boot", "50")
    assert r.returncode == 0, r.stderr
    assert "nan" not in r.stdout, r.stdout


def test_wandb_export_without_a_step_column_asks_for_x(cli, tmp_path):
    """No known compute column in a W&B export read as "unknown column None for --x"."""
    p = tmp_path / "wandb.csv"
    p.write_text("Epoch,runA - acc\n" + "".join(f"{i},{0.1 + 0.01 * i}\n" for i in range(40)))
    r = cli("fit", p, "--n-boot", "50")
    assert r.returncode == 2 and r.stdout == "", r.stderr
    assert r.stderr.strip() == f"scalerl: error: {p}: no column for --x; name one with --x (columns: Epoch, runA - acc)"


def test_a_run_dirs_metrics_file_reads_as_its_run_dir(cli, tmp_path):
    """RUN/metrics.jsonl named instead of RUN was read as a plain JSONL and refused at its first train line
    ("metrics.jsonl:1: missing 'pass_rate'")."""
    run = tmp_path / "myrun"
    run.mkdir()
    rows = []
    for i in range(60):
        rows.append({"kind": "train", "step": i, "gpu_hours": 0.1 * i, "loss": 1.0})
        rows.append({"kind": "eval", "step": i, "gpu_hours": 0.1 * i, "pass_rate": 0.2 + 0.4 * i / (i + 20)})
    _jsonl(run / "metrics.jsonl", rows)
    by_file = cli("fit", run / "metrics.jsonl", "--json", "--n-boot", "50")
    assert by_file.returncode == 0, by_file.stderr
    assert by_file.stdout == cli("fit", run, "--json", "--n-boot", "50").stdout
    assert json.loads(by_file.stdout)["runs"][0]["name"] == "myrun"


def test_plot_legend_names_the_band_of_the_chosen_interval(cli, tmp_path):
    """--interval bootstrap draws the bootstrap band alone, but the legend called it 'bootstrap + extrapolation
    error'. (A matplotlibrc in the working directory keeps the SVG's text as text, so the legend can be read.)"""
    (tmp_path / "matplotlibrc").write_text("svg.fonttype: none\n")
    p = tmp_path / "rise.csv"
    p.write_text("step,pass_rate\n" + "".join(f"{i},{0.2 + 0.4 * i / (i + 30):.4f}\n" for i in range(100)))
    for interval, legend in (("bootstrap", "90% band (bootstrap)"), ("selfcal", "bootstrap + extrapolation error")):
        r = cli("plot", p, "-o", "out.svg", "--interval", interval, "--budget", "1000", "--n-boot", "50", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        svg = (tmp_path / "out.svg").read_text()
        assert legend in svg and (interval == "selfcal" or "extrapolation error" not in svg)


def test_compare_of_one_pooled_group_says_the_runs_were_pooled(cli, tmp_path):
    """Two runs pooled by --group-glob into one group: compare said 'the sources hold 1'."""
    p = tmp_path / "two.csv"
    rows = "".join(f"{run},{i},{0.2 + 0.4 * i / (i + 30):.4f}\n" for run in ("a", "b") for i in range(100))
    p.write_text("run,step,pass_rate\n" + rows)
    r = cli("compare", p, "--group-glob", "g=*", "--n-boot", "50")
    assert r.returncode == 2 and r.stdout == "", r.stderr
    assert (
        r.stderr.strip()
        == "scalerl: error: compare needs at least two runs; --group-glob / --group-by pooled all 2 into one"
    )


def test_plot_refuses_an_unknown_format_before_fitting(cli, tmp_path):
    """-o fig.gif was refused only after every run was fitted (minutes on a long export); a bad source then hid it."""
    bad = tmp_path / "bad.csv"
    bad.write_text("x,y\n1,0.1\n2,oops\n")
    r = cli("plot", bad, "-o", tmp_path / "fig.gif", "--n-boot", "50")
    assert r.returncode == 2 and r.stdout == "", r.stderr
    assert "unsupported plot format '.gif'" in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr


def test_backtest_fraction_is_checked_before_fitting(cli, tmp_path):
    """--backtest 1.5 was refused only after every run was fitted; a bad source then hid it."""
    bad = tmp_path / "bad.csv"
    bad.write_text("x,y\n1,0.1\n2,oops\n")
    for value in ("1.5", "0", "nan"):
        r = cli("fit", bad, "--backtest", value)
        assert r.returncode == 2 and r.stdout == "", r.stderr
        assert "Invalid value for '--backtest'" in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr


def test_pooled_seeds_warnings_name_their_seed_once_each(cli, tmp_path):
    """Two unsorted seeds pooled by --group printed 'warning: group of 2 seeds: rows were not sorted by x' twice."""
    rows = [f"{run},{i},{0.2 + 0.4 * i / (i + 30):.4f}" for run in ("a", "b") for i in reversed(range(100))]
    p = tmp_path / "unsorted.csv"
    p.write_text("run,step,pass_rate\n" + "\n".join(rows) + "\n")
    r = cli("fit", p, "--group", "--n-boot", "50")
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == len(set(lines)), r.stderr
    for seed in ("a", "b"):
        assert f"warning: group of 2 seeds: {seed}: rows were not sorted by x; sorted them" in lines, r.stderr


def test_duplicate_evaluations_are_averaged_by_their_sample_counts(cli, tmp_path):
    """A 1-sample rerun (pass rate 0) at the x of a 10,000-sample evaluation halved that point: the counts were pooled
    (10,001 samples, a tight binomial weight) but the values averaged as equals, a heavy outlier for the fit."""
    rows = [f"{i},{0.2 + 0.4 * i / (i + 30):.5f},10000" for i in range(100)] + ["60,0.0,1"]
    p = tmp_path / "rerun.csv"
    p.write_text("step,pass_rate,eval_samples\n" + "\n".join(rows) + "\n")
    r = cli("fit", p, "--json", "--n-boot", "50")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["runs"][0]["r2"] > 0.999


def _sweep_with_a_short_variant(tmp_path):
    """A grid sweep dir: variants a and b with 40 evaluations each, c with 3 (too few to fit: it is left out)."""
    sweep = tmp_path / "sweep"
    for name, points, ceiling in (("a", 40, 0.6), ("b", 40, 0.5), ("c", 3, 0.5)):
        run = sweep / name / "run"
        run.mkdir(parents=True)
        evals = [
            {"kind": "eval", "step": i, "gpu_hours": i, "pass_rate": round(0.1 + ceiling * i / (i + 10), 4)}
            for i in range(1, points + 1)
        ]
        (run / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in evals))
    (sweep / "sweep.json").write_text(json.dumps({"variants": [{"name": n} for n in "abc"], "kind": "grid"}))
    return sweep


def test_a_sweep_variant_left_out_is_in_every_json_document(cli, tmp_path):
    """'sweep variant left out' went to stderr only: a script reading fit, forecast or compare --json saw two runs of
    three and no word of the third. It is in the document's top-level warnings now, and still on stderr."""
    sweep = _sweep_with_a_short_variant(tmp_path)
    for args in (["fit"], ["forecast", "--budget", "100"], ["compare"]):
        r = cli(*args, sweep, "--json", "--n-boot", "50")
        assert r.returncode == 0, r.stderr
        doc = json.loads(r.stdout)  # exactly one document
        assert [run["name"] for run in doc["runs"]] == ["a", "b"], args
        left_out = [w for w in doc["warnings"] if w.startswith("sweep variant left out: ")]
        assert len(left_out) == 1 and left_out[0].startswith("sweep variant left out: c: "), (args, doc["warnings"])
        assert f"warning: {left_out[0]}" in r.stderr.splitlines(), (args, r.stderr)
    r = cli("plot", sweep, "-o", tmp_path / "s.png", "--n-boot", "50")  # no --json: stderr alone, as before
    assert r.returncode == 0 and f"warning: {left_out[0]}" in r.stderr.splitlines(), r.stderr
    r = cli("fit", tmp_path / "sweep" / "a" / "run", "--json", "--n-boot", "50")
    assert json.loads(r.stdout)["warnings"] == []  # the key is there when nothing was left out


def test_an_error_after_sweep_variants_were_left_out_says_why(cli, tmp_path):
    """The left-out reasons are printed only when the command succeeds: compare of a sweep with one fittable variant
    said 'the sources hold 1', and a sweep with none 'no variant can be fitted yet', without a word of why."""
    sweep = _sweep_with_a_short_variant(tmp_path)
    for name in ("b", "a"):  # a keeps 40 points; b and c get 3
        metrics = sweep / name / "run" / "metrics.jsonl"
        metrics.write_text("".join(metrics.read_text().splitlines(keepends=True)[:3]))
        r = cli("compare" if name == "b" else "fit", sweep, "--n-boot", "50")
        assert r.returncode == 2, r.stderr
        (line,) = r.stderr.strip().splitlines()
        assert line.startswith("scalerl: error: ") and " c: " in line and (" b: " in line or name == "b"), line
    assert "no variant of this sweep can be fitted yet (a: too few points" in line, line


# The Dr. GRPO Qwen2.5-1.5B run of bench/curves/drgrpo_qwen25_1p5b_avg5bench_acc.csv: 10 evaluations, 3 fitted at a
# cut at half its compute.
SHORT_RUN = (
    "0,0.0149;16,0.19522;32,0.22592;48,0.24858;64,0.2269;80,0.22134;96,0.25322;112,0.23581;128,0.2339;144,0.22794"
)


def test_a_run_too_short_at_the_backtest_cut_loses_its_own_backtest_only(cli, tmp_path):
    """`fit FILE --backtest 0.5` exited 2 when one run was too short at the cut, losing every other run's backtest.
    That run now gets none ("backtest": null, a warning naming it and why, a row saying so); the command refuses
    only when no run can be backtested."""
    p = tmp_path / "runs.csv"
    long = [f"long,{i},{0.2 + 0.5 * i / (i + 30):.4f}" for i in range(0, 200, 2)]
    short = [f"short,{pt}" for pt in SHORT_RUN.split(";")]
    p.write_text("run,step,pass_rate\n" + "\n".join(long + short) + "\n")
    r = cli("fit", p, "--backtest", "0.5", "--json", "--n-boot", "50")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    runs = {run["name"]: run for run in doc["runs"]}
    assert runs["short"]["backtest"] is None and runs["long"]["backtest"]["n_test"] > 0
    (warning,) = [w for w in doc["warnings"] if w.startswith("no backtest for short: ")]
    assert "--backtest 0.5 (fit up to 72): too few points to fit (3 after" in warning
    assert f"warning: {warning}" in r.stderr
    r = cli("fit", p, "--backtest", "0.5", "--n-boot", "50")
    assert r.returncode == 0 and "no backtest (warning on stderr)" in r.stdout and "long" in r.stdout, r.stderr
    p.write_text("run,step,pass_rate\n" + "\n".join(short) + "\n")  # no run can be: refused in one line, as before
    r = cli("fit", p, "--backtest", "0.5", "--n-boot", "50")
    assert r.returncode == 2 and r.stdout == "", r.stderr
    assert r.stderr.strip() == (
        "scalerl: error: --backtest 0.5 (fit up to 72): short: too few points to fit (3 after excluding x < 18.3792 "
        "by first 10% of the log-compute range; need 5)"
    )


def test_r0_from_a_trainer_state_first_eval_at_step_50_warns(cli, tmp_path):
    """TRL logs its first evaluation at eval_steps (50), after training began; R0 = that evaluation biased the fit
    without a word. The warning is in the run's JSON warnings and on stderr; with an evaluation at step 0 it is not."""
    rng = np.random.default_rng(0)

    def state(first):
        steps = np.arange(first, 1001, 50)
        acc = 0.2 + 0.5 / (1 + (200 / np.maximum(steps, 1e-9)) ** 1.5) + rng.normal(0, 0.01, len(steps))
        history = [{"step": int(s), "loss": 0.5, "learning_rate": 1e-6} for s in range(10, 1001, 10)]
        history += [{"step": int(s), "eval_accuracy": float(a), "eval_loss": 0.3} for s, a in zip(steps, acc)]
        history.sort(key=lambda r: r["step"])
        d = tmp_path / f"first{first}"
        d.mkdir()
        (d / "trainer_state.json").write_text(json.dumps({"global_step": 1000, "log_history": history}))
        return d / "trainer_state.json"

    r = cli("fit", state(50), "--json", "--n-boot", "50")
    assert r.returncode == 0, r.stderr
    (w,) = [w for w in json.loads(r.stdout)["runs"][0]["warnings"] if w.startswith("R0 = ")]
    assert "at step = 50, not at zero compute" in w and "--r0 fit" in w
    assert f"warning: first50: {w}" in r.stderr
    r = cli("fit", state(0), "--json", "--n-boot", "50")
    assert r.returncode == 0 and "R0 = " not in r.stderr, r.stderr
