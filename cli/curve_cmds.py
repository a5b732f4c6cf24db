"""`scalerl fit | forecast | plot | compare`: thin click wrappers over scalerl.curvefit."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import click

from scalerl.curvefit.errors import InputError
from scalerl.curvefit.limits import MAX_BOUND
from scalerl.curvefit.priors import CORPUS, NO_PRIOR, PEERS, PRIORS


class Finite(click.FloatRange):
    """A float in a range that is also finite: click's FloatRange lets nan through every bound (and inf through
    an open end), and a nan budget or level would reach the fit as a number."""

    name = "number"

    def convert(self, value, param, ctx):
        v = super().convert(value, param, ctx)
        if not math.isfinite(v):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return v

    def _describe_range(self) -> str:
        # click's FloatRange describes an unbounded range as "x<=None" in --help.
        return "" if self.min is None and self.max is None else super()._describe_range()


UNCERTAINTY_HELP = (
    "Intervals come from a moving-block residual bootstrap (blocks of about n^(1/3) points, because points "
    "along a run are autocorrelated; every replica is refitted), widened beyond the data by the run's own "
    "extrapolation error: prefixes of the run are refitted and their forecasts of the rest measure how fast "
    "the error grows with log-compute (--interval selfcal, the default). With --group, seeds are resampled "
    "too, so their spread widens the intervals."
)


def source_options(f):
    """Options shared by every curve command: where the points come from and how they are fitted."""
    opts = [
        click.argument("sources", nargs=-1, required=True, type=click.Path(path_type=Path)),
        click.option("--x", "x_col", metavar="COL", help="Compute column (default: gpu_hours, compute, x, step, ...)."),
        click.option("--y", "y_col", metavar="COL", help="Performance column (default: pass_rate, y, accuracy, ...)."),
        click.option(
            "--run-col", metavar="COL", help="Column naming the run, when one file holds several runs (default: run)."
        ),
        click.option(
            "--exclude-before",
            type=Finite(),
            metavar="X",
            help="Leave out points with compute < X (default: warm-up rule, see docs/curvefit.md).",
        ),
        click.option(
            "--warmup",
            type=Finite(0.0, 1.0, max_open=True),
            metavar="SHARE",
            help="Warm-up rule on an axis other than GPU-hours: leave out the first SHARE of the log-compute range "
            "(default 0.1; 0.6 fits the late run only, the default of issue 24's second to fifth rounds; see "
            "docs/curvefit.md).",
        ),
        click.option(
            "--r0",
            default="first",
            show_default=True,
            metavar="first|fit|VALUE",
            help="R0: the first evaluation, fitted, or a fixed value.",
        ),
        click.option(
            "--method",
            type=click.Choice(["fast", "paper"]),
            default="fast",
            show_default=True,
            help="fast: vectorised grid + bounded least squares, weighted by known sample counts, with the corpus "
            "shape prior; paper: the paper's A x C_mid grid with curve_fit for B, unweighted and without a prior.",
        ),
        click.option(
            "--group",
            is_flag=True,
            help="Treat all runs as seeds of one recipe: one pooled fit whose intervals include the seed spread.",
        ),
        click.option(
            "--group-glob",
            multiple=True,
            metavar="NAME=GLOB",
            help="Seeds of one recipe: runs whose name matches GLOB are pooled into the group NAME (repeatable).",
        ),
        click.option(
            "--group-by",
            metavar="COL",
            help="Pool runs into recipes by the value of column COL (its value on each run's first row).",
        ),
        click.option(
            "--interval",
            type=click.Choice(["selfcal", "bootstrap", "variants"]),
            default="selfcal",
            show_default=True,
            help="selfcal: bootstrap widened by the run's rolling-origin extrapolation error; bootstrap: noise "
            "around the fitted curve only; variants: bootstrap over the hull of fit variants (see docs/curvefit.md).",
        ),
        click.option(
            "--bound",
            type=Finite(0.0, MAX_BOUND, min_open=True),
            default=1.0,
            show_default=True,
            help="Upper bound of the metric (A <= bound); every value must lie in [0, bound].",
        ),
        click.option(
            "--level",
            type=Finite(0.5, 0.999),
            default=0.90,
            show_default=True,
            help="Probability of the central intervals.",
        ),
        click.option(
            "--n-boot", type=click.IntRange(50, 100000), default=1000, show_default=True, help="Bootstrap replicas."
        ),
        click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=0, show_default=True, help="Bootstrap seed."),
        click.option(
            "--samples-col",
            metavar="COL",
            help="Column with each evaluation's sample count (prompts x k), for the binomial noise weights "
            "(default: eval_samples or n_samples when present).",
        ),
        click.option(
            "--samples",
            type=Finite(1.0),
            metavar="N",
            help="Every evaluation's sample count (prompts x k), when the file has no column for it.",
        ),
        click.option(
            "--prior",
            type=click.Choice(PRIORS),
            default=CORPUS,
            show_default=True,
            help="corpus: empirical-Bayes prior on B and the headroom, learned on public RL runs; peers: that prior "
            "learned on the other runs fitted alongside (three or more runs or groups; not for compare); none: plain "
            "least squares (see docs/curvefit.md).",
        ),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def fitted_runs(
    sources,
    x_col,
    y_col,
    run_col,
    exclude_before,
    r0,
    method,
    group,
    group_glob,
    group_by,
    interval,
    bound,
    level,
    n_boot,
    seed,
    samples_col=None,
    samples=None,
    prior=CORPUS,
    warmup=None,
):
    """Read the sources and fit every run (or every group of seeds); returns (fits, curves, options, warnings).

    The warnings are about the sources as a whole (a sweep variant left out), not one fit: the caller prints them on
    stderr and puts them in its --json document's `warnings`, where a script reading only stdout sees them."""
    from scalerl.curvefit.corpus import MIN_PEERS
    from scalerl.curvefit.exclusion import GPU_HOURS_RULE
    from scalerl.curvefit.fit import FitOptions, fit_curves, parse_r0
    from scalerl.curvefit.groups import group_curves
    from scalerl.curvefit.priors import DEFAULT_PRIOR
    from scalerl.curvefit.readers import ReadOptions, read_sources

    if warmup is not None and exclude_before is not None:
        raise InputError("--warmup sets the warm-up rule that --exclude-before replaces; use one")
    r0_value = parse_r0(r0)
    if isinstance(r0_value, float) and not 0.0 <= r0_value < bound:
        # Checked here, before any file is read, so that the message names the option rather than the first run.
        why = "is not a finite number" if not math.isfinite(r0_value) else f"lies outside [0, --bound {bound:g})"
        raise InputError(f"--r0 {r0} {why}")
    read = ReadOptions(x=x_col, y=y_col, run_col=run_col, group_col=group_by, samples_col=samples_col, samples=samples)
    curves = read_sources(sources, read)
    warnings: list[str] = [w for c in curves for w in c.source_warnings]
    opts = FitOptions(
        r0=r0_value,
        exclude_before=exclude_before,
        bound=bound,
        method=method,
        n_boot=n_boot,
        level=level,
        seed=seed,
        interval=interval,
        prior=None if prior == NO_PRIOR else DEFAULT_PRIOR,
        **({} if warmup is None else {"warmup": warmup}),
    )
    peers = prior == PEERS
    n_fits = 1 if group else len(group_curves(curves, group_glob, group_by))
    if peers and n_fits <= MIN_PEERS:
        fitted = "one pooled fit" if group else f"{n_fits} fits"
        raise InputError(
            f"--prior peers takes each fit's shape prior from the other runs fitted alongside; these sources give "
            f"{fitted}, and it needs at least {MIN_PEERS + 1} (use --prior corpus)"
        )
    if group:
        if group_glob or group_by:
            raise InputError("--group pools every run; use it without --group-glob / --group-by")
        if len(curves) < 2:
            raise InputError(
                f"--group pools several runs as seeds of one recipe; the sources hold one ({curves[0].name})"
            )
        name = f"group of {len(curves)} seeds"
        _prepare_pool(name, curves)
        fits, kept = [fit_curves(curves, opts, name=name)], [curves]
    elif _sweep_plan(sources) is None:
        groups = group_curves(curves, group_glob, group_by)
        for name, members in groups:
            _prepare_pool(name, members)
        each = run_options(opts, [m for _, m in groups], peers)
        fits = [fit_curves(members, o, name=name) for (name, members), o in zip(groups, each)]
        kept = [m for _, m in groups]
    else:
        # A sweep still running, or a variant that got little compute: fit the variants that can be, name the others.
        fits, kept = [], []
        groups = group_curves(curves, group_glob, group_by)
        for (name, members), o in zip(groups, run_options(opts, [m for _, m in groups], peers)):
            try:
                fits.append(fit_curves(members, o, name=name))
                kept.append(members)
            except InputError as e:
                warnings.append(f"sweep variant left out: {e}")
        if not fits:
            raise InputError(f"{sources[0]}: no variant of this sweep can be fitted yet{_why_left_out(warnings)}")
    if warmup is not None:
        on_gpu_hours = [f.name for f in fits if f.exclusion_rule == GPU_HOURS_RULE]
        if on_gpu_hours:
            raise InputError(
                f"--warmup has no effect on {on_gpu_hours[0]}: its compute is in GPU-hours, where the paper's "
                "1,500 GPU-hour warm-up applies (use --exclude-before X to choose another)"
            )
    return fits, kept, opts, warnings


def run_options(opts, groups, peers: bool) -> list:
    """The fit options of each group of curves fitted side by side: with `peers`, each group's shape prior comes
    from the other groups' runs (corpus.peer_priors; the corpus prior where there are too few of them)."""
    if not peers or opts.prior is None:
        return [opts] * len(groups)
    from scalerl.curvefit.corpus import peer_priors

    return [dataclasses.replace(opts, prior=p) for p in peer_priors(groups, opts.prior, opts.bound)]


def _why_left_out(warnings: list[str], shown: int = 3) -> str:
    """The reasons sweep variants were left out, for an error that ends the command: its warnings are printed only
    when it succeeds, and "the sources hold 1" alone did not say why the other variants were missing."""
    if not warnings:
        return ""
    more = f"; {len(warnings) - shown} more" if len(warnings) > shown else ""
    return " (" + "; ".join(w.removeprefix("sweep variant left out: ") for w in warnings[:shown]) + more + ")"


def _prepare_pool(name: str, members) -> None:
    """Seeds pooled into one fit share one compute axis: steps and GPU-hours on one curve are no curve at all.

    Their reading warnings become the pooled fit's, so each names its seed: two seeds' "rows were not sorted"
    would otherwise print twice, alike, under the group's name."""
    runs = mixed_axes(members)
    if runs:
        raise InputError(f"{name}: its runs have different compute columns: {runs}; pool runs on one axis")
    if len(members) > 1:
        for c in members:
            c.warnings = [f"{c.name}: {w}" for w in c.warnings]


def mixed_axes(runs) -> str | None:
    """A run on each compute axis, when there are several (steps and GPU-hours do not share an axis); runs: curves
    or fits."""
    axes = {r.x_label: r.name for r in runs}
    return None if len(axes) < 2 else ", ".join(f"{run} ({axis})" for axis, run in axes.items())


def json_option(f):
    return click.option(
        "--json",
        "as_json",
        is_flag=True,
        help="Print exactly one JSON document on stdout (shapes in docs/cli-json.md).",
    )(f)


def _fit_args(kw):
    keys = (
        "sources",
        "x_col",
        "y_col",
        "run_col",
        "exclude_before",
        "r0",
        "method",
        "group",
        "group_glob",
        "group_by",
        "interval",
        "bound",
        "level",
        "n_boot",
        "seed",
        "samples_col",
        "samples",
        "prior",
        "warmup",
    )
    return {k: kw.pop(k) for k in keys}


@click.command(epilog=UNCERTAINTY_HELP)
@source_options
@click.option(
    "--backtest",
    type=Finite(0.0, 1.0, min_open=True, max_open=True),  # checked before the fits, not after them
    metavar="F",
    help="Also fit on the first fraction F of compute and score the forecast on the rest.",
)
@json_option
def fit(**kw):
    """Fit R(C) = R0 + (A - R0) / (1 + (C_mid/C)^B) to each run, with intervals.

    SOURCES are run directories (their metrics.jsonl) or CSV / JSONL files, W&B CSV exports or HF
    trainer_state.json files. A power law A - D/C^B is fitted alongside for contrast.
    """
    from . import render

    fa, backtest_f, as_json = _fit_args(kw), kw.pop("backtest"), kw.pop("as_json")
    fits, groups, opts, warnings = fitted_runs(**fa)
    backtests: list[dict | None] | None = None
    if backtest_f is not None:
        from scalerl.curvefit.backtest import backtest, cut_heads

        # The peers' prior of a backtest comes from the peers' own first parts: their later points are the future.
        each = run_options(opts, [cut_heads(g, backtest_f)[1] for g in groups], fa["prior"] == PEERS)
        backtests, failed = [], []
        for f, curves, o in zip(fits, groups, each):
            # One run too short at the cut (or with nothing after it) loses its own backtest, not every run's.
            try:
                backtests.append(backtest(curves, o, backtest_f, name=f.name))
            except InputError as e:
                backtests.append(None)
                failed.append(e)
                why = str(e).replace(f": {f.name}: ", ": ", 1).removeprefix(f"{f.name}: ")
                warnings.append(f"no backtest for {f.name}: {why}")
        if len(failed) == len(fits):
            raise failed[0]
    render.emit_fit(fits, backtests, opts, as_json, warnings)


@click.command(epilog=UNCERTAINTY_HELP)
@source_options
@click.option(
    "--budget",
    type=Finite(0.0, min_open=True),
    multiple=True,
    metavar="X",
    help="Forecast the performance at compute X (repeatable).",
)
@click.option(
    "--target",
    type=Finite(),
    multiple=True,
    metavar="R",
    help="Forecast the compute needed to reach performance R (repeatable).",
)
@json_option
def forecast(**kw):
    """Forecast performance at a bigger budget, or the compute needed for a target."""
    from scalerl.curvefit.forecast import forecast_budget, forecast_target

    from . import render

    fa, budgets, targets, as_json = _fit_args(kw), kw.pop("budget"), kw.pop("target"), kw.pop("as_json")
    if not budgets and not targets:
        raise click.UsageError("give --budget X or --target R")
    for t in targets:
        if not 0.0 <= t <= fa["bound"]:
            raise InputError(f"--target {t:g} lies outside the metric's range [0, --bound {fa['bound']:g}]")
    fits, _, opts, warnings = fitted_runs(**fa)
    results = [([forecast_budget(f, b) for b in budgets], [forecast_target(f, t) for t in targets]) for f in fits]
    render.emit_forecast(fits, results, opts, as_json, warnings)


@click.command(epilog=UNCERTAINTY_HELP)
@source_options
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="Image file: .png, .svg or .pdf.")
@click.option(
    "--budget", type=Finite(0.0, min_open=True), metavar="X", help="Extend the fitted curves (dotted) out to compute X."
)
@click.option("--power-law", is_flag=True, help="Also draw the power-law fits, for contrast.")
@click.option("--title", help="Figure title.")
def plot(**kw):
    """Draw the runs and their fits on a log-compute axis (the paper's Figure 1 style)."""
    from scalerl.curvefit.plot import check_output, plot_fits

    from .render import warn, warn_fits

    fa = _fit_args(kw)
    check_output(kw["output"])  # before the fit: a typo should fail fast
    fits, _, _, warnings = fitted_runs(**fa)
    drawn = plot_fits(fits, kw["output"], budget=kw["budget"], power_law=kw["power_law"], title=kw["title"])
    warn_fits(fits, warnings)  # plot has no --json: stderr is where its warnings go
    mixed = mixed_axes(fits)
    if mixed:
        warn(kw["output"], f"runs on different compute axes ({mixed}) are drawn on one axis labelled {fits[0].x_label}")
    for w in drawn:
        warn(kw["output"], w)
    click.echo(f"wrote {kw['output']}", err=True)


@click.command(epilog=UNCERTAINTY_HELP)
@source_options
@click.option(
    "--a-tol",
    type=Finite(0.0),
    help="Ceilings closer than this count as equal; such pairs are refitted with a shared A and compared by B "
    "(default: 0.02 of --bound, the paper's 0.02 on a pass rate).",
)
@json_option
def compare(**kw):
    """Compare runs: A, B, C_mid with intervals, shared-A refits, and where curves cross.

    A sweep dir (`scalerl sweep`) compares its variants; after a leave-one-out sweep each variant is compared
    with the baseline only and the verdict on the ingredient it drops is given (docs/sweeps.md).
    """
    from scalerl.curvefit.compare import A_TOLERANCE, compare_fits

    from . import render

    fa, a_tol, as_json = _fit_args(kw), kw.pop("a_tol"), kw.pop("as_json")
    if a_tol is None:
        # The paper's 0.02 is in pass-rate units; on a metric in percent (--bound 100) it would call two ceilings
        # 0.03 points apart different.
        a_tol = A_TOLERANCE * fa["bound"]
    if fa["group"]:
        raise click.UsageError(
            "--group pools runs into one fit; compare recipes with --group-glob NAME=GLOB or --group-by COL"
        )
    if fa["prior"] == PEERS:
        # Each run's shape pulled towards the others' would make the runs look more alike than their data say.
        raise InputError("--prior peers ties each run's shape to the others'; compare fits them apart (use corpus)")
    fits, groups, opts, left_out = fitted_runs(**fa)
    if len(fits) < 2:
        runs = sum(len(g) for g in groups)
        if runs > 1:  # "the sources hold 1" would be false: they hold several, pooled into one group
            raise InputError(f"compare needs at least two runs; --group-glob / --group-by pooled all {runs} into one")
        raise InputError(f"compare needs at least two runs; the sources hold {len(fits)}{_why_left_out(left_out)}")
    plan = _sweep_plan(fa["sources"]) if not (fa["group_glob"] or fa["group_by"]) else None
    baseline = plan.get("baseline") if plan else None
    # Warnings about the comparison as a whole, not one run: render prints them on stderr and --json keeps them in
    # the document, since a script reading only stdout would otherwise compare C_mid across two units unwarned.
    warnings = list(left_out)
    if baseline is not None and baseline not in [f.name for f in fits]:
        warnings.append(f"the sweep's baseline {baseline!r} has no evaluations yet: comparing every pair")
        baseline = None
    result = compare_fits(fits, a_tol=a_tol, baseline=baseline)
    mixed = mixed_axes(fits)
    if mixed:
        warnings.append(
            f"the runs are on different compute axes ({mixed}): their ceilings A compare, "
            "their C_mid and crossovers do not"
        )
    result["warnings"] = warnings
    if baseline is not None and plan is not None:  # a baseline comes only from a sweep plan
        result["sweep"] = _sweep_verdicts(fa["sources"][0], plan, result["pairs"], result["runs"])
    render.emit_compare(result, opts, as_json)


def _sweep_plan(sources) -> dict | None:
    """The plan of a sweep dir when it is the only source (`scalerl compare SWEEP_DIR`)."""
    from scalerl.curvefit.readers import SWEEP_FILE, sweep_variants

    if len(sources) == 1 and (Path(sources[0]) / SWEEP_FILE).is_file():
        return sweep_variants(Path(sources[0]))
    return None


def _sweep_verdicts(path, plan: dict, pairs: list[dict], runs: list[dict]) -> dict:
    from scalerl.curvefit.compare import ingredient_verdict

    info = {v["name"]: v for v in plan["variants"]}
    identified = {r["name"]: r["identified"] for r in runs}
    rows = []
    for pair in pairs:
        name = pair["runs"][1]
        v = info.get(name, {})
        rows.append(
            {
                "variant": name,
                "ingredient": v.get("ingredient"),
                "alternative": v.get("alternative"),
                "changes": v.get("changes", {}),
                **ingredient_verdict(pair, plan["baseline"], identified),
                "verdict": pair["verdict"],
            }
        )
    return {"dir": str(path), "kind": plan.get("kind"), "baseline": plan["baseline"], "ingredients": rows}
