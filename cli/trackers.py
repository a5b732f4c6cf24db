"""Experiment tracking: every metrics line and forecast line also goes to TensorBoard and/or W&B.

`[run] trackers = ["tensorboard", "wandb"]` turns them on (the `tensorboard` and `wandb` extras). `scalerl train`'s
supervisor forwards the lines it already reads; the trainer never waits on a tracker. Names are those of
metrics.jsonl (`pass_rate`, `loss`, `gpu_hours`, ...) and `forecast/<key>` for forecast.jsonl; an interval
`[lo, hi]` becomes `<key>_lo` and `<key>_hi`. The x axis is the line's `step`.

Before any process starts, `scalerl train` refuses a tracker named twice and one whose package is not installed
(`check`: one line naming the extra to install). A tracker that fails once the run is up (no W&B login, a full disk)
is reported once and switched off; training goes on. TensorBoard is written through the tensorboard package's own
event writer, so torch is never imported here.
"""

from __future__ import annotations

import hashlib
import importlib.util
import time
from pathlib import Path

import click

SKIP = {"step", "kind", "device"}


def scalars(line: dict, prefix: str = "") -> dict[str, float]:
    """The numeric values of one line, flattened: bools as 0/1, [lo, hi] as _lo/_hi, strings and nulls left out."""
    out: dict[str, float] = {}
    for k, v in line.items():
        if k in SKIP:
            continue
        if isinstance(v, bool):
            out[prefix + k] = float(v)
        elif isinstance(v, (int, float)):
            out[prefix + k] = float(v)
        elif isinstance(v, list) and len(v) == 2 and all(isinstance(x, (int, float)) for x in v):
            out[f"{prefix}{k}_lo"], out[f"{prefix}{k}_hi"] = float(v[0]), float(v[1])
    return out


class _TensorBoard:
    name = "tensorboard"

    def __init__(self, run_dir: Path, config: dict):
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self._event, self._summary = Event, Summary
        self.writer = EventFileWriter(str(run_dir / "tensorboard"))

    def log(self, step: int, values: dict[str, float], wall_time: float) -> None:
        summary = self._summary(value=[self._summary.Value(tag=k, simple_value=v) for k, v in values.items()])
        self.writer.add_event(self._event(wall_time=wall_time, step=step, summary=summary))

    def close(self) -> None:
        self.writer.close()


class _WandB:
    name = "wandb"

    def __init__(self, run_dir: Path, config: dict):
        import wandb

        # One W&B run per run dir, across resumes.
        run_id = "scalerl-" + hashlib.sha1(str(run_dir.resolve()).encode()).hexdigest()[:12]
        self.run = wandb.init(
            project=config.get("run", {}).get("wandb_project") or "scalerl",
            name=run_dir.name,
            id=run_id,
            resume="allow",
            dir=str(run_dir),
            config=config,
            settings=wandb.Settings(console="off", silent=True),
        )
        # metrics.jsonl's step is the x axis: eval lines can arrive after later train steps, which W&B's own
        # monotonic step would drop.
        self.run.define_metric("*", step_metric="step")

    def log(self, step: int, values: dict[str, float], wall_time: float) -> None:
        self.run.log({"step": step, **values})

    def close(self) -> None:
        self.run.finish()


KINDS = {"tensorboard": _TensorBoard, "wandb": _WandB}
# The package each tracker imports, and the extra of pyproject.toml that installs it.
PACKAGES = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb")}


def check_names(names) -> None:
    """Refuse (ConfigError, exit 2) a tracker named twice: it would log every line twice."""
    from scalerl.shared.config import ConfigError

    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ConfigError(f"run.trackers names {name!r} twice: list each tracker once")
        seen.add(name)


def check(names) -> None:
    """Before any process starts: refuse (ConfigError, exit 2) a tracker named twice (check_names), and one whose
    package is not installed (looked up with find_spec: nothing is imported), naming the extra that installs it."""
    from scalerl.shared.config import ConfigError

    check_names(names)
    for name in names:
        module, extra = PACKAGES[name]
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a broken install: as good as none
            found = False
        if not found:
            raise ConfigError(
                f"run.trackers names {name!r}, but the {module} package is not installed: "
                f"pip install 'scalerl[{extra}]' (from a checkout: pip install -e '.[{extra}]')"
            )


class Trackers:
    def __init__(self, run_dir: Path, names, config: dict, warn=None):
        self.warn = warn or (lambda msg: click.echo(f"scalerl train: warning: {msg}", err=True))
        self.active: list = []
        for name in names:
            try:
                self.active.append(KINDS[name](Path(run_dir), config))
            except Exception as e:  # an import error, no login, a bad directory: the run goes on without it
                self.warn(f"tracker {name} is off for this run: {type(e).__name__}: {e}")

    def log_metrics(self, lines: list[dict]) -> None:
        for line in lines:
            self._log(line, "")

    def log_forecast(self, lines: list[dict]) -> None:
        for line in lines:
            self._log(line, "forecast/")

    def _log(self, line: dict, prefix: str) -> None:
        step = line.get("step")
        if not isinstance(step, int):
            return
        values = scalars(line, prefix)
        wall = float(line.get("wall_time") or 0.0) or time.time()
        for t in list(self.active):
            try:
                t.log(step, values, wall)
            except Exception as e:
                self._drop(t, e)

    def _drop(self, t, e: Exception) -> None:
        self.active.remove(t)
        self.warn(f"tracker {t.name} failed ({type(e).__name__}: {e}); it is off for the rest of the run")
        try:
            t.close()
        except Exception:
            pass

    def close(self) -> None:
        for t in list(self.active):
            try:
                t.close()
            except Exception as e:
                self.warn(f"tracker {t.name} failed to close ({type(e).__name__}: {e})")
        self.active = []
