"""Figure-1-style plot: performance against log compute, fit solid over the data, dotted extrapolation."""

from __future__ import annotations

import os
import re
import tempfile
import warnings
from pathlib import Path

import numpy as np

from .errors import InputError
from .fit import CurveFit
from .thin import MAX_DRAWN_POINTS, thin_for_drawing

FORMATS = (".png", ".svg", ".pdf")
# What the band of the mean curve holds under each --interval: only selfcal widens it beyond the data.
BAND_SOURCES = {
    "selfcal": "bootstrap + extrapolation error",
    "bootstrap": "bootstrap",
    "variants": "bootstrap + hull of fit variants",
}


def plot_fits(
    fits: list[CurveFit], out: Path, budget: float | None = None, power_law: bool = False, title: str | None = None
) -> list[str]:
    """Write the figure to `out`; returns what matplotlib warned, one line each, for the caller to print."""
    check_output(out)
    if budget is not None:  # a positive, finite number: the CLI's option type
        first_end = min(float(f.x.max()) for f in fits)
        if budget <= first_end:
            # A budget extends only the runs that end before it; one that extends none is refused, not drawn as nothing.
            raise InputError(f"--budget {budget:g} extends no run: every run's data reach {first_end:g} or beyond")
    # matplotlib warns in two lines, with a line of our source, per character its font lacks (a CJK run name).
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        thinned = _figure(fits, out, budget, power_law, title)
    glyph = re.compile(r"Glyph (\d+) .*missing from font")
    missing = dict.fromkeys(chr(int(m[1])) for w in caught if (m := glyph.match(str(w.message))))
    lines = [f"the font has no glyph for {''.join(missing)!r}; drawn as boxes"] if missing else []
    lines += list(dict.fromkeys(str(w.message).split("\n")[0] for w in caught if not glyph.match(str(w.message))))
    # Said on stderr as well as in the legend: a reader of the figure alone sees means, not the run's noise.
    return lines + [
        f"{name}: {n} points drawn as {m} means of consecutive points (the fit used every point)"
        for name, n, m in thinned
    ]


def _figure(fits: list[CurveFit], out: Path, budget: float | None, power_law: bool, title: str | None):
    """Draw and write the figure; returns (run, points, markers) for each run whose points were thinned."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.2 + 0.22 * len(fits)), dpi=150)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    thinned = []
    for k, fit in enumerate(fits):
        color = colors[k % len(colors)]
        drawn = _draw(ax, fit, color, budget, power_law)
        if drawn < int((fit.x > 0).sum()):
            thinned.append((fit.name, int((fit.x > 0).sum()), drawn))
    ax.set_xscale("log")
    # Frame the data and ceilings; a power law diving towards -inf at small C must not squash the plot.
    ys = np.concatenate([f.y for f in fits] + [[f.params.A, f.params.R0] for f in fits])
    pad = 0.05 * max(float(ys.max() - ys.min()), 0.05)
    ax.set_ylim(float(ys.min()) - pad, min(float(ys.max()) + 3 * pad, fits[0].options.bound + pad))
    ax.set_xlabel(plain(fits[0].x_label.replace("_", " ")))
    ax.set_ylabel(plain(fits[0].y_label.replace("_", " ")))
    ax.grid(True, which="both", alpha=0.25)
    ax.set_title(plain(title or "compute-performance fit: R(C) = R0 + (A - R0) / (1 + (C_mid / C)^B)"), fontsize=9)
    # One legend entry per run, plus one key to the line styles, below the axes so no data is hidden.
    handles, labels = ax.get_legend_handles_labels()
    styles, style_labels = _style_key(fits, power_law, budget, bool(thinned))
    ax.legend(
        handles + styles,
        labels + style_labels,
        fontsize=7,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.13),
        ncol=1,
        frameon=False,
    )
    fig.tight_layout()
    tmp = None
    try:
        # Write-then-rename so a reader never sees a half-written figure. The temporary name is unique and in the
        # same directory (rename is atomic only within a file system): two plots to one -o at once each finish
        # their own file, and the last rename wins whole, where a fixed name let one rename or delete the other's.
        fd, name = tempfile.mkstemp(prefix=f".{out.stem}.", suffix=f".tmp{out.suffix}", dir=out.parent)
        tmp = Path(name)
        with os.fdopen(fd, "wb") as fh:
            fig.savefig(fh, format=out.suffix.lower()[1:])
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would make the figure unreadable to the group
        tmp.replace(out)
    except OSError as e:
        raise InputError(f"{out}: cannot write the plot ({e.strerror or e})") from None
    finally:
        plt.close(fig)
        if tmp is not None:
            tmp.unlink(missing_ok=True)
    return thinned


def _umask() -> int:
    # curvefit imports nothing of scalerl.shared (tests/unit/test_layering.py), so not run_dir.current_umask: the
    # plain read, set and put back, as plot writes from one thread.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def check_output(out: Path) -> None:
    """The output's format and directory, checked before the fit too: a typo should not wait for the fits."""
    if out.suffix.lower() not in FORMATS:
        raise InputError(f"{out}: unsupported plot format {out.suffix!r} (use {', '.join(FORMATS)})")
    check_output_dir(out)


def check_output_dir(out: Path) -> None:
    """Refuse a missing parent directory instead of creating it: a typo must not grow a directory tree."""
    if out.parent.is_dir():
        return
    missing = out.parent
    while not missing.parent.is_dir() and missing.parent != missing:
        missing = missing.parent
    if missing.exists():
        # A file (or another non-directory) where the path needs a directory: "does not exist" was untrue.
        raise InputError(f"{out}: {missing} is not a directory")
    raise InputError(f"{out}: directory {missing} does not exist (create it first)")


def _draw(ax, fit: CurveFit, color, budget, power_law) -> int:
    """Draw one run; returns how many markers stand for its points (fewer than the points when thinned)."""
    p = fit.params
    pos = fit.x > 0
    used, excl = fit.used & pos, ~fit.used & pos
    ux, uy = thin_for_drawing(fit.x[used], fit.y[used])
    ex, ey = thin_for_drawing(fit.x[excl], fit.y[excl])
    ax.scatter(ux, uy, s=9, color=color, alpha=0.55, linewidths=0)
    ax.scatter(ex, ey, s=11, facecolors="none", edgecolors=color, alpha=0.5, linewidths=0.7)
    x_lo, x_hi = float(fit.x[pos].min()), float(fit.x.max())
    x_end = max(x_hi, budget or 0.0, x_hi * 1.0)
    seen = np.geomspace(x_lo, x_hi, 300)
    a_lo, a_hi = fit.ci("A")
    ax.plot(
        seen,
        p(seen),
        color=color,
        lw=2,
        label=f"{_short(fit.name, 60)}: A={p.A:.3f} [{a_lo:.3f}, {a_hi:.3f}], B={p.B:.2f}, C_mid={p.c_mid:.3g}"
        + (f"; power law A={fit.power_law.A:.3f}" if power_law else ""),
    )
    if x_end > x_hi:
        # The point forecast (the sigmoid averaged with the recent level beyond the data), the line the band is
        # centred on and `scalerl forecast` prints: the sigmoid alone strayed outside its own band.
        ahead = np.geomspace(x_hi, x_end, 200)
        ax.plot(ahead, fit.forecast(ahead), color=color, lw=2, ls=":")
    span = np.geomspace(x_lo, x_end, 400)
    lo, hi = fit.band(span)
    ax.fill_between(span, lo, hi, color=color, alpha=0.15, lw=0)
    ax.axhline(p.A, color=color, lw=0.8, ls="--", alpha=0.6)
    if power_law:
        pl = fit.power_law
        fitted = span[span >= fit.x[used].min()]
        ax.plot(fitted, pl(fitted), color=color, lw=1, ls="-.", alpha=0.8)
    if budget:
        ax.axvline(budget, color="0.4", lw=0.8, ls=":")
    return len(ux) + len(ex)


def _style_key(fits, power_law, budget, thinned: bool = False):
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    pct = percent(fits[0].options.level)
    rules = sorted({f.exclusion_rule for f in fits})
    key = [
        (
            Line2D([], [], ls="", marker="o", ms=3, color="0.35"),
            "points used for the fit"
            + (f" (long runs: at most {MAX_DRAWN_POINTS:,} means of consecutive points drawn)" if thinned else ""),
        ),
        (Line2D([], [], ls=":", lw=2, color="0.35"), "extrapolation"),
        (Patch(color="0.35", alpha=0.2), f"{pct}% band ({BAND_SOURCES[fits[0].options.interval]})"),
        (Line2D([], [], ls="--", lw=0.8, color="0.35"), "fitted ceiling A"),
    ]
    if any(((~f.used) & (f.x > 0)).any() for f in fits):
        key.insert(
            1,
            (
                Line2D([], [], ls="", marker="o", ms=3.5, mfc="none", color="0.35"),
                f"excluded points ({'; '.join(rules)})",
            ),
        )
    if power_law:
        key.append((Line2D([], [], ls="-.", lw=1, color="0.35"), "power law A - D/C^B"))
    return [h for h, _ in key], [lab for _, lab in key]


def percent(level: float) -> str:
    """90 for 0.9, 99.9 for 0.999: rounded to a whole percent, --level 0.999 read as 100% intervals."""
    return f"{100 * level:.3g}"


def plain(text: str) -> str:
    """Text drawn as typed: matplotlib reads $...$ as mathtext, and a run name or title is not math."""
    return text.replace("$", r"\$")


def _short(name: str, n: int = 40) -> str:
    return plain(name if len(name) <= n else "..." + name[-(n - 3) :])
