"""Output of the curve commands: rich tables for people, one JSON document for scripts.

Data goes to stdout; warnings go to stderr (in --json mode they are also inside the document).
The JSON shapes are a public interface, documented in docs/cli-json.md: add keys, never rename them.
"""

from __future__ import annotations

import json
import math
import sys

from rich.console import Console
from rich.table import Table

from scalerl.curvefit.forecast import times
from scalerl.curvefit.plot import percent
from scalerl.shared.errors import one_line

SCHEMA_VERSION = 1


def _stdout() -> Console:
    # Off a terminal (pipes, slurm logs) rich would wrap at 80 columns; tables are wider than that.
    return Console(file=sys.stdout, width=None if sys.stdout.isatty() else 200)


def _clean(v):
    """JSON has no NaN or inf: map them to null so every consumer can parse the document."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


def _print_json(doc: dict) -> None:
    sys.stdout.write(json.dumps(_clean({"schema": SCHEMA_VERSION, **doc}), indent=2) + "\n")


def warn(*parts: str) -> None:
    """One warning line on stderr, "warning: " and the parts joined by ": ". On one line whatever they hold: a run
    named with a line break (a quoted CSV field) split its warning over two lines, the second without the prefix."""
    print("warning: " + one_line(": ".join(str(p) for p in parts)), file=sys.stderr)


def warn_fits(fits, warnings=()) -> None:
    """The sources' warnings (not one run's, e.g. a sweep variant left out), then each run's, on stderr."""
    for w in warnings:
        warn(w)
    for f in fits:
        for w in f.warnings:
            warn(f.name, w)


INTERVAL_METHODS = {
    "selfcal": "moving-block residual bootstrap + rolling-origin extrapolation error",
    "bootstrap": "moving-block residual bootstrap",
    "variants": "moving-block residual bootstrap over the hull of fit variants",
}


def _uncertainty(opts) -> dict:
    return {
        "method": INTERVAL_METHODS[opts.interval],
        "interval": opts.interval,
        "n_boot": opts.n_boot,
        "level": opts.level,
        "seed": opts.seed,
    }


def sigmoid_json(f) -> dict:
    p = f.params
    prof = f.profile_A or {}
    return {
        "A": p.A,
        "B": p.B,
        "C_mid": p.c_mid,
        "R0": p.R0,
        "ci": {k: f.ci(k) for k in ("A", "B", "C_mid", "R0")},
        "profile_A": {k: prof.get(k) for k in ("interval", "reaches_bound", "n_eff")},
    }


def _extrapolation_json(f) -> dict | None:
    e = f.extrap
    if e is None:
        return None
    return {"k": e.k, "k_measured": e.k_measured, "sigma_noise": e.sigma_noise, "n_origins": e.n_origins}


def _persistence(f) -> dict:
    from scalerl.curvefit.forecast import persistence

    return persistence(f)


def _prior_json(prior) -> dict | None:
    """The shape prior the fit used: the corpus's, the other runs' (--prior peers) or none (null)."""
    if prior is None:
        return None
    return {
        "source": prior.source,
        "n_runs": prior.n_runs,
        "log_b": list(prior.log_b),
        "headroom": list(prior.headroom),
    }


def run_json(f) -> dict:
    pl = f.power_law
    excluded = f.x[~f.used]
    return {
        "name": f.name,
        "n_points": f.n_points,
        "n_excluded": f.n_excluded,
        "n_seeds": f.n_seeds,
        "x": f.x_label,
        "y": f.y_label,
        "excluded": {"below": f.threshold, "rule": f.exclusion_rule, "x": excluded.tolist()},
        "sigmoid": sigmoid_json(f),
        "power_law": {"A": pl.A, "D": pl.D, "B": pl.B},
        "r2": f.r2,
        "r2_all": f.r2_all,
        "forecast_basis": "sigmoid" if f.level_forecast is None else "recent level",
        "persistence": _persistence(f),
        "prior": _prior_json(f.options.prior),
        "noise_sd": f.noise_sd,
        "extrapolation_error": _extrapolation_json(f),
        "bootstrap_points": f.thinned or f.n_points,
        "warnings": list(f.warnings),
    }


def _ci(v, ci, fmt="{:.4g}") -> str:
    lo, hi = ci
    return f"{fmt.format(v)} [{fmt.format(lo)}, {fmt.format(hi)}]"


def emit_fit(fits, backtests, opts, as_json: bool, warnings=()) -> None:
    warn_fits(fits, warnings)
    for f, bt in zip(fits, backtests or []):
        if bt is not None and bt["calibration_warning"]:
            warn(f.name, bt["calibration_warning"])
    if as_json:
        runs = [run_json(f) for f in fits]
        for r, bt in zip(runs, backtests or []):
            r["backtest"] = None if bt is None else {k: v for k, v in bt.items() if k != "fit"}
        doc = {"method": opts.method, "uncertainty": _uncertainty(opts), "runs": runs, "warnings": list(warnings)}
        _print_json(doc)
        return
    pct = percent(opts.level)
    t = Table(title=f"sigmoid fits ({pct}% intervals, {opts.method} method)")
    for col in ("run", "points", "excluded", f"A [{pct}%]", "A profile", "B", "C_mid", "R0", "R²", "power-law A"):
        t.add_column(col, overflow="fold")
    for f in fits:
        p = f.params
        plo, phi = f.profile_A["interval"]
        t.add_row(
            f.name,
            str(f.n_points),
            f"{f.n_excluded} (x < {f.threshold:.4g})",
            _ci(p.A, f.ci("A"), "{:.3f}"),
            f"[{plo:.3f}, {phi:.3f}]" + (" to bound" if f.profile_A["reaches_bound"] else ""),
            _ci(p.B, f.ci("B"), "{:.3g}"),
            _ci(p.c_mid, f.ci("C_mid"), "{:.3g}"),
            f"{p.R0:.3f}",
            f"{f.r2:.3f}" if math.isfinite(f.r2) else "-",  # undefined on a constant run
            f"{f.power_law.A:.3f}",
        )
    console = _stdout()
    console.print(t)
    if backtests:
        bt_t = Table(title="backtest: fit on the first part of compute, score the rest")
        cols = (
            "run",
            "fit up to",
            "train / test points",
            "MAE",
            "naive MAE (last / last-3)",
            "max error",
            "coverage",
            f"{pct}% interval score (naive)",
            "width",
            "basis",
        )
        for col in cols:
            bt_t.add_column(col)
        for f, bt in zip(fits, backtests):
            if bt is None:  # the reason is in the warnings on stderr ("no backtest for RUN: ...")
                bt_t.add_row(f.name, "no backtest (warning on stderr)", *["-"] * (len(cols) - 2))
                continue
            nv = bt.get("naive")
            naive_is = min(v["interval_score"] for v in nv.values()) if nv else None
            bt_t.add_row(
                f.name,
                f"{bt['cut']:.4g}",
                f"{bt['n_train']} / {bt['n_test']}",
                f"{bt['mae']:.4f}" + ("" if bt.get("beats_naive") is None else (" *" if bt["beats_naive"] else "")),
                "-" if not nv else f"{nv['last value']['mae']:.4f} / {nv['last-3 mean']['mae']:.4f}",
                f"{bt['max_abs_error']:.4f}",
                f"{bt['coverage']:.0%} (nominal {pct}%)" + (" !" if bt["calibration_warning"] else ""),
                f"{bt['interval_score']:.4f}" + ("" if naive_is is None else f" ({naive_is:.4f})"),
                f"{bt['mean_width']:.4f}",
                bt["basis"],
            )
        console.print(bt_t)


def emit_forecast(fits, results, opts, as_json: bool, warnings=()) -> None:
    warn_fits(fits, warnings)
    for f, (budgets, _) in zip(fits, results):
        for w in dict.fromkeys(w for b in budgets for w in b["warnings"]):
            warn(f.name, w)
    if as_json:
        runs = [
            {
                "name": f.name,
                "sigmoid": sigmoid_json(f),
                "forecast_basis": "sigmoid" if f.level_forecast is None else "recent level",
                "persistence": _persistence(f),
                "prior": _prior_json(f.options.prior),
                "budgets": b,
                "targets": t,
                # Every budget beyond the data repeats the run's level-forecast note: keep it once, as on stderr.
                "warnings": list(dict.fromkeys(list(f.warnings) + [w for x in b for w in x["warnings"]])),
            }
            for f, (b, t) in zip(fits, results)
        ]
        _print_json(
            {"method": opts.method, "uncertainty": _uncertainty(opts), "runs": runs, "warnings": list(warnings)}
        )
        return
    pct = percent(opts.level)
    console = _stdout()
    for f, (budgets, targets) in zip(fits, results):
        if budgets:
            t = Table(title=f"{f.name}: performance at budget ({pct}% prediction intervals)")
            for col in ("budget", "forecast", "gain over last fitted point", "extrapolation", "basis", "widening"):
                t.add_column(col)
            for b in budgets:
                t.add_row(
                    f"{b['budget']:.4g}",
                    _ci(b["pass_rate"], b["ci"], "{:.4f}"),
                    _ci(b["gain"], b["gain_ci"], "{:+.4f}"),
                    times(b["extrapolation"]),
                    "sigmoid" if b["basis"] == "sigmoid" else "level forecast (sigmoid does not beat persistence)",
                    "undefined (the bootstrap interval has no width)"
                    if b["widening"] is None
                    else f"{times(b['widening'])} the bootstrap's",
                )
            console.print(t)
        console.print(f"{f.name}: {_persistence(f)['statement']}")
        for tg in targets:
            if tg["reachable"]:
                lo, hi = tg["ci"]
                hi_s = f"{hi:.4g}" if hi is not None else "unbounded"
                lo_s = f"{lo:.4g}" if lo is not None else "unbounded"
                console.print(
                    f"{f.name}: {tg['statement']} [{pct}% interval {lo_s} to {hi_s}; "
                    f"{tg['p_reachable']:.0%} of bootstrap ceilings reach it]"
                )
            else:
                # The point forecast misses it; how many bootstrap ceilings still reach it says how sure that is.
                console.print(f"{f.name}: {tg['statement']} [{tg['p_reachable']:.0%} of bootstrap ceilings reach it]")


def emit_compare(result: dict, opts, as_json: bool) -> None:
    for w in result.get("warnings", []):
        warn(w)
    for r in result["runs"]:
        for w in r["warnings"]:
            warn(r["name"], w)
    if as_json:
        _print_json({"method": opts.method, "uncertainty": _uncertainty(opts), **result})
        return
    pct = percent(opts.level)
    t = Table(title=f"runs ({pct}% intervals)")
    for col in ("run", "A", "B", "C_mid"):
        t.add_column(col, overflow="fold")
    for r in result["runs"]:
        t.add_row(
            r["name"],
            _ci(r["A"], r["ci"]["A"], "{:.3f}"),
            _ci(r["B"], r["ci"]["B"], "{:.3g}"),
            _ci(r["C_mid"], r["ci"]["C_mid"], "{:.3g}"),
        )
    console = _stdout()
    console.print(t)
    p = Table(title=f"pairs (ceilings within {result['a_tolerance']:g} are refitted with a shared A)")
    for col in ("runs", "ΔA", f"B under shared A [{pct}%]", "verdict", "crossovers"):
        p.add_column(col, overflow="fold")
    for pair in result["pairs"]:
        cross = "; ".join(_crossing(c, pct) for c in pair["crossovers"]) or "none"
        shared = pair.get("shared_A")
        b_col = (
            "; ".join(f"{n}: {_ci(shared['B'][n], shared['B_ci'][n], '{:.3g}')}" for n in pair["runs"])
            if shared
            else "-"
        )
        p.add_row(" vs ".join(pair["runs"]), f"{pair['delta_A']:+.3f}", b_col, pair["verdict"], cross)
    console.print(p)
    sweep = result.get("sweep")
    if sweep:
        t = Table(title=f"leave-one-out against {sweep['baseline']}: does each ingredient help?")
        for col in ("ingredient", "replaced by", "variant", "ΔA (baseline - variant)", "effect", "on"):
            t.add_column(col, overflow="fold")
        delta = {pair["runs"][1]: pair["delta_A"] for pair in result["pairs"]}
        for row in sweep["ingredients"]:
            t.add_row(
                row["ingredient"] or "-",
                row["alternative"] or "-",
                row["variant"],
                f"{delta[row['variant']]:+.3f}",
                row["effect"],
                row["basis"] or "-",
            )
        console.print(t)


def _crossing(c, pct) -> str:
    lo, hi = c["ci"]
    span = f" [{pct}%: {lo:.3g} to {hi:.3g}, {c['p_cross']:.0%} of replica pairs cross]" if lo is not None else ""
    return f"at {c['compute']:.4g} {c['ahead_after']} moves ahead{span}"
