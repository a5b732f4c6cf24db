"""Which early points the fit leaves out (the warm-up rule).

The paper (ScaleRL, Sec. 2) excludes roughly the first 1.5k GPU-hours, about one epoch of near-linear rise
that the sigmoid is not meant to describe. Rules, in order:
1. --exclude-before X: points with x < X are left out (0 keeps everything).
2. x measured in GPU-hours (the column name contains "gpu_hour"): x < 1500, if at least
   max(MIN_FIT_POINTS, 25% of the points) remain.
3. otherwise: the first 10% (WARMUP_SHARE, `--warmup`) of the compute range *on the log axis the sigmoid lives
   on*, x < x_lo * (x_last / x_lo)^0.1 with x_lo the first positive x. Issue 24's second to fifth rounds left out
   60%, the paper's share of its log axis (1.5k of ~50-100k GPU-hours after a first evaluation near 10), chosen by
   the interval score on backtests cut at 0.3, 0.5 and 0.7 of the compute range. Scored as the issue scores its
   held-back curves (each cut at half its points, every later point), 60% beat both naive forecasters on fewer runs
   (0.36 against 0.47 of 117 backtests) at about the same interval score (0.81 against 0.82 of the naive
   forecasters'), and it cost clean sigmoids 20% of error (docs/curvefit.md, sixth round). A share above 10% leaves
   at least max(MIN_FIT_POINTS, 25% of the points) (else 10%, RANGE_FRACTION). An earlier rule took 10% of the
   *linear* range; on a run spanning three decades (1e2 to 2e5 seconds) that is everything below 2e4, the whole
   rise.
   A share above 10% never leaves fewer than MIN_WARMUP_KEEP (15) positive points (all of them if there are fewer):
   its threshold is lowered to the 15th point from the end. A shorter fit has fewer than three rolling origins to
   score the sigmoid against the level on (extrapolation.py: prefixes of at least MIN_PREFIX = 8 points at 55%, 70%
   and 85% of the fitted ones), so its forecast leans on the sigmoid alone, with the widest intervals; on short
   versions of the development runs (30 points, cut at half) the 60% share without this floor scored 0.86 of the
   naive interval score, 10% 0.69, 60% with it 0.63 (docs/curvefit.md).
Points at x <= 0 never enter the fit (the log-compute axis has no place for them); the first evaluation
still sets R0.
"""

from __future__ import annotations

import numpy as np

GPU_HOURS_WARMUP = 1500.0
GPU_HOURS_RULE = "gpu-hours warm-up (1500)"
RANGE_FRACTION = 0.10  # the fallback share (and the rule before issue 24's second round)
# The default share of rule 3 (FitOptions.warmup, `--warmup`): the rule of issue 14, back since issue 24's sixth round
# (bench/bench_forecast.py --protocol half, docs/curvefit.md "Which points are fitted").
WARMUP_SHARE = RANGE_FRACTION
MIN_FIT_POINTS = 5
# Rule 3 keeps at least this many positive points: one above the fewest (14) for which three rolling origins of
# extrapolation.py form (prefixes of MIN_PREFIX = 8 points at 55%, 70% and 85% of the fitted points; MIN_ORIGINS).
MIN_WARMUP_KEEP = 15


def warmup_threshold(
    x: np.ndarray, x_label: str, exclude_before: float | None, fraction: float = WARMUP_SHARE
) -> tuple[float, str]:
    """Returns (threshold, rule): points with x < threshold are excluded.

    fraction: rule 3's share of the log range (FitOptions.warmup). A share above RANGE_FRACTION that would leave
    fewer than max(MIN_FIT_POINTS, 25% of the points) falls back to RANGE_FRACTION, as rule 2 does; then, if fewer
    than MIN_WARMUP_KEEP positive points remain, a share above RANGE_FRACTION drops its threshold to keep the last
    MIN_WARMUP_KEEP (all of them in a shorter run); RANGE_FRACTION itself keeps the rule it had before issue 24's
    second round."""
    if exclude_before is not None:
        return float(exclude_before), "--exclude-before"
    if "gpu_hour" in x_label.lower().replace("-", "_"):
        remaining = int(np.sum(x >= GPU_HOURS_WARMUP))
        if remaining >= max(MIN_FIT_POINTS, 0.25 * len(x)):
            return GPU_HOURS_WARMUP, GPU_HOURS_RULE
    pos = x[x > 0]
    if len(pos) == 0:
        return float(x[-1]) + 1.0, "no positive compute"
    lo, hi = float(pos[0]), float(pos[-1])
    if fraction > RANGE_FRACTION and np.sum(pos >= lo * (hi / lo) ** fraction) < max(MIN_FIT_POINTS, 0.25 * len(x)):
        fraction = RANGE_FRACTION
    threshold, rule = float(lo * (hi / lo) ** fraction), f"first {fraction:.0%} of the log-compute range"
    # A run with fewer than MIN_WARMUP_KEEP positive points keeps them all; one or two rolling origins then score the
    # members, and extrapolation.MIN_ORIGINS keeps the widest intervals until three origins exist.
    keep = min(MIN_WARMUP_KEEP, len(pos))
    if fraction > RANGE_FRACTION and np.sum(pos >= threshold) < keep:
        threshold = float(np.sort(pos)[-keep])
        rule += f", lowered to keep the last {keep} points"
    return threshold, rule


def split_points(x, threshold):
    """Mask of the points used for the fit."""
    return (x >= threshold) & (x > 0)
