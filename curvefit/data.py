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
    group: str | None = None  # the run's value of the --group-by column

    def __len__(self) -> int:
        return len(self.x)


def clean_curve(name, x, y, x_label, y_label, warnings=None) -> Curve:
    """Skip non-finite rows, sort by x and average duplicate x, recording a warning for each fix."""
    warnings = list(warnings or [])
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    finite = np.isfinite(x) & np.isfinite(y)
    if not finite.all():
        warnings.append(f"skipped {int((~finite).sum())} row(s) with NaN or inf values")
        x, y = x[finite], y[finite]
    if len(x) and np.any(np.diff(x) < 0):
        order = np.argsort(x, kind="stable")
        x, y = x[order], y[order]
        warnings.append("rows were not sorted by x; sorted them")
    ux, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    if len(ux) < len(x):
        y = np.bincount(inverse, weights=y) / counts
        warnings.append(f"averaged {len(x) - len(ux)} row(s) with duplicate x")
        x = ux
    return Curve(name=name, x=x, y=y, x_label=x_label, y_label=y_label, warnings=warnings)
