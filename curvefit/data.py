"""A curve as read from any source, and the cleaning every reader shares."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Curve:
    """One run: performance y against compute x, sorted by x with unique x."""

    name: str
    x: np.ndarray
    y: np.ndarray
    x_label: str = "compute"
    y_label: str = "pass_rate"
    warnings: list[str] = field(default_factory=list)
    # What concerns the source the run was read from, not the run (a sweep's variants with no evaluations yet): the
    # curve commands move them into their document's `warnings`, where a sweep's missing variant is no run's fault.
    source_warnings: list[str] = field(default_factory=list)
    group: str | None = None  # the run's value of the --group-by column
    # Samples behind each evaluation (prompts x k for mean@k); None when unknown. The binomial variance it implies
    # weights the fit (fit.py); unknown, the noise is estimated from the residuals.
    samples: np.ndarray | None = None
    # The source gives sample counts for this run (a count column with at least one count), decided as read, before
    # cleaning: a blank count on one row makes `samples` unknown, but the file still has its own counts, which
    # --samples N must not replace.
    counted: bool = False
    # The first point is the policy before any training step although its x is above zero: a scalerl run's step-0
    # evaluation carries the compute of the seconds before it. fit.py's late-R0 warning skips it.
    starts_before_training: bool = False

    def __len__(self) -> int:
        return len(self.x)


def clean_curve(name, x, y, x_label, y_label, warnings=None, samples=None) -> Curve:
    """Skip non-finite rows, sort by x and average duplicate x, recording a warning for each fix.

    samples: per-row sample counts (or None); rows without a positive count make the whole curve's count unknown.
    """
    warnings = list(warnings or [])
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    n = None if samples is None else np.asarray(samples, dtype=float)
    counted = n is not None and bool(np.any(np.isfinite(n)))
    finite = np.isfinite(x) & np.isfinite(y)
    if not finite.all():
        warnings.append(f"skipped {int((~finite).sum())} row(s) with NaN or inf values")
        x, y = x[finite], y[finite]
        n = None if n is None else n[finite]
    if len(x) and np.any(np.diff(x) < 0):
        order = np.argsort(x, kind="stable")
        x, y = x[order], y[order]
        n = None if n is None else n[order]
        warnings.append("rows were not sorted by x; sorted them")
    ux, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    if len(ux) < len(x):
        if n is not None and np.all(np.isfinite(n)) and np.all(n > 0):
            # Evaluations pool their samples, so their mean weighs each by its count: a 32-sample rerun of a
            # 4,096-sample evaluation must not move it halfway.
            y = np.bincount(inverse, weights=y * n) / np.bincount(inverse, weights=n)
        else:
            y = np.bincount(inverse, weights=y) / counts
        n = None if n is None else np.bincount(inverse, weights=n)
        warnings.append(f"averaged {len(x) - len(ux)} row(s) with duplicate x")
        x = ux
    if np.any(x < 0):
        # Compute cannot be negative: likely a shifted or mislabelled column, and these points are silently unfitted.
        warnings.append(
            f"{int((x < 0).sum())} point(s) at negative {x_label} (from {x[0]:.4g}); compute cannot be negative, "
            "and points at x <= 0 are never fitted"
        )
    if n is not None and not (np.all(np.isfinite(n)) and np.all(n > 0)):
        warnings.append("sample counts missing or not positive on some rows; the noise is estimated from residuals")
        n = None
    return Curve(name=name, x=x, y=y, x_label=x_label, y_label=y_label, warnings=warnings, samples=n, counted=counted)
