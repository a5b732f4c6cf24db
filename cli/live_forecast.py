"""Live forecast: after every held-out evaluation `scalerl train` refits the curve of the run so far.

The refit runs in a child process at the lowest CPU priority (nice 19, one BLAS thread), never in the trainer, so
that it cannot slow a training step: on a busy machine it only gets the cycles nobody else wants. At most one refit
runs at a time; evaluations that arrive meanwhile are folded into the next one (the newest wins). Each refit appends
one line to RUN/forecast.jsonl (one write of a whole line to an O_APPEND file, so a reader never sees half a line);
the fit uses the same options as `scalerl fit RUN_DIR` with the run's [curvefit] section, so a line equals
`scalerl fit` on the same evaluations (docs/run-dir.md).

The worker is `python -m scalerl.cli.live_forecast RUN_DIR STEP`; it reads RUN/config.toml for [run] and [curvefit].
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

FORECAST_FILE = "forecast.jsonl"
# Stop rules act only on fits of at least this many points: earlier fits are too loose to end a run on.
STOP_MIN_POINTS = 8
EXIT_STOP_RULE = 3  # `scalerl train` ends with this code when a stop rule fired (README, docs/run-dir.md)
NOT_IDENTIFIED = "not identified yet"


def fit_options(curvefit: dict):
    """The FitOptions `scalerl fit RUN_DIR --r0 R0 --bound B --level L --n-boot N` uses (method fast, seed 0,
    selfcal intervals, warm-up rule)."""
    from scalerl.curvefit.fit import FitOptions, parse_r0

    return FitOptions(
        r0=parse_r0(str(curvefit.get("r0", "first"))),
        bound=float(curvefit.get("bound", 1.0)),
        level=float(curvefit.get("level", 0.90)),
        n_boot=int(curvefit.get("n_boot", 1000)),
    )


def _p_below(value: float, centre: float, lo: float, hi: float, level: float) -> float:
    """P(mean curve at the budget < value), reading the band [lo, hi] at `level` as a normal on each side of its
    centre (the band is asymmetric: its upper side is clipped at the bound and widened by extrapolation error)."""
    from statistics import NormalDist

    z = NormalDist().inv_cdf(0.5 + level / 2)
    side = (hi - centre) if value >= centre else (centre - lo)
    sigma = max(side, 0.0) / z
    if sigma <= 1e-12:
        return 1.0 if value > centre else 0.0
    return NormalDist(centre, sigma).cdf(value)


def refit(run_dir: Path, step: int, run: dict, curvefit: dict) -> dict:
    """The forecast line for the run as it stood after its evaluation at `step`."""
    from scalerl.curvefit.errors import InputError
    from scalerl.curvefit.fit import fit_curves, shape_identified
    from scalerl.curvefit.forecast import basis, forecast_budget, forecast_target
    from scalerl.curvefit.readers import ReadOptions, read_run_dir
    from scalerl.shared.errors import one_line

    t0 = time.perf_counter()
    opts = fit_options(curvefit)
    line: dict = {"step": step, "identified": False}
    try:
        # A multi-task run has one curve per task; the live forecast (and its stop rules) follows the first task's.
        curve = read_run_dir(Path(run_dir), ReadOptions(), max_step=step)[0]
        if "/" in curve.name:
            line["task"] = curve.name.rpartition("/")[2]
        line["gpu_hours"] = float(curve.x.max())
        line["n_evals"] = len(curve)
        fit = fit_curves([curve], opts)
    except (InputError, ValueError, RuntimeError) as e:
        line["error"] = one_line(e)
        line["fit_s"] = time.perf_counter() - t0
        return line
    p = fit.params
    budget = float(run.get("budget") or 0.0) or 10.0 * line["gpu_hours"]
    at = forecast_budget(fit, budget)
    line.update(
        identified=fit.level_forecast is None and shape_identified(fit),
        basis=basis(fit),
        n_points=fit.n_points,
        A=p.A,
        A_ci=fit.ci("A"),
        B=p.B,
        B_ci=fit.ci("B"),
        C_mid=p.c_mid,
        C_mid_ci=fit.ci("C_mid"),
        R0=p.R0,
        budget=budget,
        pass_rate_at_budget=at["pass_rate"],
        pass_rate_at_budget_ci=at["ci"],
        curve_at_budget_ci=at["ci_curve"],
        gain=at["gain"],
        gain_ci=at["gain_ci"],
    )
    target = float(run.get("target") or 0.0)
    if target:
        tg = forecast_target(fit, target)
        centre, (lo, hi) = at["pass_rate"], at["ci_curve"]
        line.update(
            target=target,
            target_reachable=tg["reachable"],
            compute_to_target=tg["compute"],
            compute_to_target_ci=tg["ci"],
            p_miss_target=_p_below(target, centre, lo, hi, opts.level),
        )
    line["warnings"] = list(dict.fromkeys(fit.warnings + at["warnings"]))
    line["options"] = {"r0": str(curvefit.get("r0", "first")), "bound": opts.bound, "level": opts.level}
    line["options"]["n_boot"] = opts.n_boot
    line["fit_s"] = time.perf_counter() - t0
    return line


def append_line(path: Path, record: dict) -> None:
    """One write() of one whole line on an O_APPEND descriptor: concurrent readers see whole lines only."""
    data = (json.dumps(_finite(record), separators=(",", ":")) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _finite(v):
    if isinstance(v, float):
        return v if v == v and abs(v) != float("inf") else None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    return v


def read_lines(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return out


def stop_reason(line: dict, run) -> str | None:
    """Why a stop rule ends the run on this forecast line, or None. `run` is the [run] section."""
    if "A" not in line or line.get("n_points", 0) < STOP_MIN_POINTS:
        return None
    conf = run.stop_if_target_unreachable
    if conf and line.get("p_miss_target") is not None and line["p_miss_target"] >= conf:
        lo, hi = line["curve_at_budget_ci"]
        return (
            f"stop rule run.stop_if_target_unreachable: the forecast misses the target {line['target']:g} within the "
            f"budget of {line['budget']:.4g} GPU-hours with probability {line['p_miss_target']:.3f} >= {conf:g} "
            f"(pass rate at the budget {line['pass_rate_at_budget']:.3f}, curve interval [{lo:.3f}, {hi:.3f}])"
        )
    thr = run.stop_if_gain_below
    if thr and line["gain"] < thr:
        lo, hi = line["gain_ci"]
        return (
            f"stop rule run.stop_if_gain_below: the forecast gain from here to the budget of {line['budget']:.4g} "
            f"GPU-hours is {line['gain']:+.4f} [{lo:+.4f}, {hi:+.4f}] < {thr:g}"
        )
    return None


def describe(line: dict | None) -> str:
    """One short phrase for the progress display."""
    if not line or "A" not in line or not line.get("identified"):
        return NOT_IDENTIFIED
    lo, hi = line["A_ci"]
    b_lo, b_hi = line["pass_rate_at_budget_ci"]
    text = (
        f"A {line['A']:.3f} [{lo:.3f}, {hi:.3f}] B {line['B']:.2f} C_mid {line['C_mid']:.3g}; "
        f"at {line['budget']:.3g} GPU-h {line['pass_rate_at_budget']:.3f} [{b_lo:.3f}, {b_hi:.3f}]"
    )
    if "target" in line:
        c = line.get("compute_to_target")
        text += f"; {line['target']:g} at " + ("never" if c is None else f"{c:.3g} GPU-h")
    return text


class LiveForecast:
    """Starts refits as evaluations arrive and reads back the lines they write; call tick() from the poll loop."""

    def __init__(self, run_dir: Path, enabled: bool = True):
        self.run_dir, self.enabled = Path(run_dir), enabled
        self.path = self.run_dir / FORECAST_FILE
        self.proc: subprocess.Popen | None = None
        self.requested = -1  # newest eval step a refit was started for
        self.seen = len(read_lines(self.path))  # lines of an earlier session (resume) are not news
        self.latest: dict | None = None

    def _start(self, step: int) -> None:
        from scalerl.shared.ownership import die_with_parent

        def low_priority():
            die_with_parent()
            os.nice(19)

        env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "scalerl.cli.live_forecast", str(self.run_dir), str(step)],
            stdout=subprocess.DEVNULL,
            stderr=open(self.run_dir / "logs" / "forecast.log", "a"),
            env=env,
            preexec_fn=low_priority,
        )
        self.requested = step

    def busy(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tick(self, records: list[dict]) -> list[dict]:
        """Start a refit for the newest evaluation if none is running; return forecast lines new since last call."""
        self._maybe_start(records)
        return self._new_lines()

    def _maybe_start(self, records: list[dict]) -> None:
        if not self.enabled or self.busy():
            return
        steps = [r["step"] for r in records if r.get("kind") == "eval" and isinstance(r.get("step"), int)]
        if steps and steps[-1] != self.requested:
            self._start(steps[-1])

    def _new_lines(self) -> list[dict]:
        lines = read_lines(self.path)
        new, self.seen = lines[self.seen :], len(lines)
        if new:
            self.latest = new[-1]
        return new

    def finish(self, records: list[dict], timeout_s: float = 60.0) -> list[dict]:
        """At the end of the run: let the running refit end and fit the last evaluation if it was not (within
        timeout_s; 0 = stop the running one now); returns the lines not yet read."""
        deadline = time.monotonic() + timeout_s

        def wait():
            while self.busy() and time.monotonic() < deadline:
                time.sleep(0.05)

        wait()
        if timeout_s > 0 and not self.busy():
            self._maybe_start(records)
            wait()
        if self.proc is not None and self.busy():
            self.proc.kill()
            self.proc.wait()
        return self._new_lines()


def main(argv: list[str]) -> int:
    import tomllib

    run_dir, step = Path(argv[0]), int(argv[1])
    with open(run_dir / "config.toml", "rb") as f:
        cfg = tomllib.load(f)
    line = refit(run_dir, step, cfg.get("run", {}), cfg.get("curvefit", {}))
    line["wall_time"] = time.time()
    append_line(run_dir / FORECAST_FILE, line)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
