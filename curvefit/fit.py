"""Fit one run (or one group of seeds): warm-up exclusion, sigmoid, power law, bootstrap, diagnostics."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .bootstrap import bootstrap_sigmoid
from .data import Curve
from .errors import InputError
from .exclusion import MIN_FIT_POINTS, split_points, warmup_threshold
from .paper_method import fit_sigmoid_paper
from .power_law import PowerLawParams, fit_power_law
from .sigmoid_fit import B_RANGE, SigmoidParams, fit_sigmoid

METHODS = ("fast", "paper")


@dataclass
class FitOptions:
    r0: str | float = "first"  # "first", "fit", or a value
    exclude_before: float | None = None
    bound: float = 1.0  # the metric's upper bound (1 for pass rates)
    method: str = "fast"
    n_boot: int = 1000
    level: float = 0.90  # central interval probability
    seed: int = 0


@dataclass
class CurveFit:
    name: str
    x: np.ndarray  # every point (all seeds pooled for a group), sorted within each seed
    y: np.ndarray
    used: np.ndarray  # mask: points that entered the fit
    threshold: float
    exclusion_rule: str
    params: SigmoidParams
    boot: np.ndarray  # (n_boot, 4): A, B, C_mid, R0 per bootstrap replica
    resid: np.ndarray  # fit-point residuals
    power_law: PowerLawParams
    options: FitOptions
    n_seeds: int = 1
    first_y: float = float("nan")  # the first evaluation (mean over seeds): R0 unless --r0 says otherwise
    x_label: str = "compute"
    y_label: str = "pass_rate"
    warnings: list[str] = field(default_factory=list)

    @property
    def n_points(self) -> int:
        return int(self.used.sum())

    @property
    def n_excluded(self) -> int:
        return int((~self.used).sum())

    def interval(self, values) -> list[float]:
        tail = 50.0 * (1.0 - self.options.level)
        lo, hi = np.nanpercentile(values, [tail, 100.0 - tail])
        return [float(lo), float(hi)]

    def ci(self, param: str) -> list[float]:
        return self.interval(self.boot[:, ["A", "B", "C_mid", "R0"].index(param)])

    def replica_curves(self, c) -> np.ndarray:
        """Predicted R at compute c under every bootstrap replica: shape (n_boot, len(c))."""
        A, B, cm, R0 = (self.boot[:, i : i + 1] for i in range(4))
        with np.errstate(divide="ignore"):
            return R0 + (A - R0) / (1.0 + np.exp(np.clip(B * (np.log(cm) - np.log(np.asarray(c, float))), -700, 700)))

    def band(self, c) -> tuple[np.ndarray, np.ndarray]:
        """Confidence band of the mean curve at compute c."""
        tail = 50.0 * (1.0 - self.options.level)
        lo, hi = np.percentile(self.replica_curves(c), [tail, 100.0 - tail], axis=0)
        return lo, hi

    def prediction_band(self, c, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Band for a future *observed* point: curve uncertainty plus the evaluation noise seen in the residuals."""
        rng = np.random.default_rng(seed)
        noise = rng.choice(self.resid - self.resid.mean(), size=(len(self.boot), np.size(c)))
        tail = 50.0 * (1.0 - self.options.level)
        lo, hi = np.percentile(self.replica_curves(c) + noise, [tail, 100.0 - tail], axis=0)
        return lo, hi

    @property
    def r2(self) -> float:
        return _r2(self.y[self.used], self.params(self.x[self.used]))

    @property
    def r2_all(self) -> float:
        keep = self.x > 0
        return _r2(self.y[keep], self.params(self.x[keep]))


def _r2(y, pred) -> float:
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    return float(1.0 - np.sum((y - pred) ** 2) / ss_tot) if ss_tot > 0 else float("nan")


def parse_r0(value: str) -> str | float:
    if value in ("first", "fit"):
        return value
    try:
        return float(value)
    except ValueError:
        raise InputError(f"--r0 must be 'first', 'fit' or a number, not {value!r}") from None


def fit_curves(curves: list[Curve], opts: FitOptions, name: str | None = None) -> CurveFit:
    """Fit one curve, or several seeds of one recipe pooled (their spread enters the intervals)."""
    if opts.method not in METHODS:
        raise InputError(f"unknown --method {opts.method!r} (choose from {', '.join(METHODS)})")
    warnings = [w for c in curves for w in c.warnings]
    for c in curves:
        if len(c) == 0:
            raise InputError(f"{c.name}: no numeric points to fit")
    # One threshold for the whole group, from the pooled compute axis.
    pooled_x = np.sort(np.concatenate([c.x for c in curves]))
    threshold, rule = warmup_threshold(pooled_x, curves[0].x_label, opts.exclude_before)
    xs, ys, used, groups = [], [], [], []
    for k, c in enumerate(curves):
        xs.append(c.x), ys.append(c.y), used.append(split_points(c.x, threshold)), groups.append(np.full(len(c), k))
    x, y, used, groups = map(np.concatenate, (xs, ys, used, groups))
    label = name or curves[0].name
    n_fit = int(used.sum())
    if n_fit < MIN_FIT_POINTS:
        raise InputError(
            f"{label}: too few points to fit ({n_fit} after excluding x < {threshold:g} by {rule}; "
            f"need {MIN_FIT_POINTS})"
        )
    R0 = _resolve_r0(curves, opts.r0, label)
    if R0 is not None and not (0.0 <= R0 < opts.bound):
        raise InputError(f"{label}: R0 = {R0:g} is outside [0, {opts.bound:g})")
    xf, yf, gf = x[used], y[used], groups[used]
    if opts.method == "paper":
        if R0 is None:
            raise InputError("--method paper holds R0 fixed; use --r0 first or --r0 VALUE")
        params = fit_sigmoid_paper(xf, yf, R0, opts.bound)
    else:
        params = fit_sigmoid(xf, yf, R0, opts.bound)
    boot, resid = bootstrap_sigmoid(
        xf, yf, gf if len(curves) > 1 else None, params, R0 is None, opts.bound, opts.n_boot, opts.seed
    )
    fit = CurveFit(
        name=label,
        x=x,
        y=y,
        used=used,
        threshold=threshold,
        exclusion_rule=rule,
        params=params,
        boot=boot,
        resid=resid,
        power_law=fit_power_law(xf, yf, opts.bound),
        options=opts,
        n_seeds=len(curves),
        x_label=curves[0].x_label,
        y_label=curves[0].y_label,
        warnings=warnings,
        first_y=float(np.mean([c.y[0] for c in curves])),
    )
    fit.warnings.extend(diagnose(fit))
    return fit


def _resolve_r0(curves, r0, label):
    if r0 == "fit":
        return None
    if r0 == "first":
        # The first evaluation is the policy before RL (step 0); with seeds, their mean.
        return float(np.mean([c.y[0] for c in curves]))
    return float(r0)


def diagnose(fit: CurveFit) -> list[str]:
    """Flags for fits that must not be trusted silently."""
    out = []
    p, bound = fit.params, fit.options.bound
    a_lo, a_hi = fit.ci("A")
    if a_hi >= bound - 1e-3:
        out.append(f"ceiling not identified: the interval for A runs to the bound {bound:g}")
    x_last = float(fit.x[fit.used].max())
    if p.c_mid > x_last:
        out.append(
            f"data never bend: C_mid = {p.c_mid:.4g} lies beyond the last fitted point ({x_last:.4g}); "
            "A is an extrapolation"
        )
    if p.B <= B_RANGE[0] * 1.01 or p.B >= B_RANGE[1] * 0.99:
        out.append(f"B = {p.B:.3g} sits at its search limit {B_RANGE}; the curve shape is not identified")
    if abs(p.A - p.R0) < 1e-3:
        out.append("flat fit: A equals R0, no gain is detected")
    if fit.options.r0 == "fit":
        # A free R0 can latch onto a late, small rise and describe that instead of the run.
        if abs(p.R0 - fit.first_y) > max(0.05, 0.25 * abs(p.A - fit.first_y)):
            out.append(
                f"degenerate fit: fitted R0 = {p.R0:.3g} is far from the first evaluation {fit.first_y:.3g}; "
                "the sigmoid describes part of the run only (try --r0 first)"
            )
        elif p.R0 <= 1e-9 or p.R0 >= bound - 1e-9:
            out.append(f"fitted R0 = {p.R0:.3g} sits at its bound")
    if fit.n_points < 3 * 5:
        out.append(f"only {fit.n_points} points in the fit; intervals are rough")
    return out
