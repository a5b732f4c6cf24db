"""`scalerl status RUN_DIR`: is the run alive, finished, failed or preempted; where it is; what it forecasts.

Liveness comes from the run dir's lock (shared/ownership.py): a live `scalerl train` or trainer holds it, and the
kernel drops it when they die, kill -9 included. How a run ended comes from RUN/status.json, which `scalerl train`
writes when it starts ("running") and when it ends (state, exit code, reason). A run whose owner is gone but whose
status.json still says "running" died without a word (kill -9, a node lost): it counts as preempted when a
checkpoint exists that `scalerl train --resume` would take (one that verifies), else as failed.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

import click

STATUS_FILE = "status.json"
# Exit codes of `scalerl status` (README, docs/run-dir.md). 2 is the CLI's usual bad input.
EXIT_FINISHED, EXIT_FAILED, EXIT_PREEMPTED, EXIT_RUNNING = 0, 3, 4, 5
EXIT_OF_STATE = {
    "finished": EXIT_FINISHED,
    "stopped": EXIT_FINISHED,
    "failed": EXIT_FAILED,
    "preempted": EXIT_PREEMPTED,
    "running": EXIT_RUNNING,
}


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _records(run_dir: Path) -> list[dict]:
    """metrics.jsonl's lines that can be read as the run writes them. A damaged line (a torn write, a number where
    an object should be, a line without a numeric step or clock) is passed over, so that status still answers
    for the rest of the run rather than failing on it."""
    from .launcher import read_metrics

    path = run_dir / "metrics.jsonl"
    try:
        records = read_metrics(path)
    except OSError as e:
        from scalerl.curvefit.errors import InputError

        raise InputError(f"{path}: cannot be read ({e.strerror or e})") from None
    return [
        r
        for r in records
        if isinstance(r, dict)
        and isinstance(r.get("step"), int)
        and _number(r.get("time_s", 0.0))
        and _number(r.get("gpu_hours", 0.0))
        and (r.get("kind") != "eval" or _number(r.get("pass_rate")))
    ]


def _last_train_step(run_dir: Path) -> int:
    steps = [r["step"] for r in _records(run_dir) if r.get("kind") == "train"]
    return max(steps, default=0)


def end_state(code: int, step: int, max_steps: int) -> str:
    """How `scalerl train` ended, from its exit code: 0 at max_steps finished, 0 before it (--max-minutes),
    130/143 (a signal, with a checkpoint) preempted, 3 stopped by a stop rule, anything else failed."""
    from .live_forecast import EXIT_STOP_RULE

    if code == 0:
        return "finished" if step >= max_steps else "preempted"
    if code == EXIT_STOP_RULE:
        return "stopped"
    if code in (130, 143):
        return "preempted"
    return "failed"


def write_status(run_dir: Path, code: int | None, reason: str = "", max_steps: int = 0) -> None:
    """RUN/status.json, atomically: "running" at the start (code None), the end state at the end."""
    from scalerl.shared.run_dir import atomic_write_text

    path = Path(run_dir) / STATUS_FILE
    doc: dict = {"pid": os.getpid(), "host": socket.gethostname()}
    if code is None:
        doc.update(state="running", exit_code=None, reason="", started=time.time())
    else:
        step = _last_train_step(Path(run_dir))
        started = (_read_json(path) or {}).get("started")
        doc.update(state=end_state(code, step, max_steps), exit_code=code, reason=reason, step=step, started=started)
        doc["ended"] = time.time()
    atomic_write_text(path, json.dumps(doc, indent=1) + "\n")


def _read_json(path: Path) -> dict | None:
    try:
        doc = json.loads(path.read_text())
        return doc if isinstance(doc, dict) else None
    except (OSError, ValueError, RecursionError):  # RecursionError: nested past the stack
        return None


def _max_steps(run_dir: Path) -> int | None:
    import tomllib

    try:
        with open(run_dir / "config.toml", "rb") as f:
            return int(tomllib.load(f)["trainer"]["max_steps"])
    except (OSError, ValueError, KeyError, TypeError, tomllib.TOMLDecodeError):
        return None


def _has_checkpoint(run_dir: Path) -> bool:
    """Whether `scalerl train --resume` would find a checkpoint to resume from: the check it makes before starting
    anything (trainer_service/checkpoint.find_resumable: state.json, the index and the shards' sizes; no tensor is
    read). A step-N directory alone is not one: status would say "preempted, resume it" (exit 4) and the resume
    would refuse (exit 2), and a scheduler requeueing on 4 would loop."""
    root = run_dir / "checkpoints"
    try:
        if not any(p.name.startswith(("step-", ".old-step-")) for p in root.iterdir()):
            return False
    except OSError:
        return False
    from scalerl.trainer_service.checkpoint import find_resumable  # imports torch: only when there is one to check

    return find_resumable(root)[0] is not None


def run_status(run_dir: Path) -> dict:
    """Everything `scalerl status --json` prints (docs/cli-json.md)."""
    from scalerl.curvefit.errors import InputError
    from scalerl.shared.ownership import owner_of

    from .live_forecast import FORECAST_FILE, read_lines

    if not run_dir.exists():
        raise InputError(f"{run_dir}: no such run directory")
    if not run_dir.is_dir():
        raise InputError(f"{run_dir}: not a run directory (not a directory)")
    if not (run_dir / "config.toml").is_file() and not (run_dir / "metrics.jsonl").is_file():
        raise InputError(f"{run_dir}: not a run directory (no config.toml or metrics.jsonl)")
    records = _records(run_dir)
    train = [r for r in records if r.get("kind") == "train"]
    evals = [r for r in records if r.get("kind") == "eval"]
    max_steps = _max_steps(run_dir)
    step = train[-1]["step"] if train else 0
    owner = owner_of(run_dir)
    checkpointed: list[bool] = []  # verified once, and only where the answer is used

    def has_checkpoint() -> bool:
        if not checkpointed:
            checkpointed.append(_has_checkpoint(run_dir))
        return checkpointed[0]

    saved = _read_json(run_dir / STATUS_FILE) or {}
    if saved.get("state") not in (*EXIT_OF_STATE, None) or not isinstance(saved.get("reason", ""), str):
        saved = {}  # a damaged end record says nothing: judge by the lock, the metrics and the checkpoints
    if owner is not None:
        state, reason = "running", f"{owner.get('role', 'a process')} (pid {owner.get('pid')} on {owner.get('host')})"
    elif saved.get("state") not in (None, "running"):
        state, reason = saved["state"], saved.get("reason", "")
        if state == "preempted" and not has_checkpoint():
            # Stopped before its first checkpoint: `scalerl train --resume` (what exit 4 tells a script to run)
            # would refuse, so this is no preemption to continue from.
            state = "failed"
            reason = f"{reason}, before any checkpoint: nothing to --resume from (--resume-from-scratch starts over)"
    elif max_steps is not None and step >= max_steps:
        state, reason = "finished", "max_steps reached"
    elif has_checkpoint():
        state, reason = "preempted", "no live owner and no end record: killed (kill -9, node lost); resume it"
    else:
        state, reason = "failed", "no live owner, no end record and no checkpoint to resume from"
    recent = train[-20:]
    dt = (recent[-1]["time_s"] - recent[0]["time_s"]) if len(recent) > 1 else 0.0
    steps_s = (len(recent) - 1) / dt if dt > 0 else None
    eta = (max_steps - step) / steps_s if (state == "running" and steps_s and max_steps is not None) else None
    forecasts = [f for f in read_lines(run_dir / FORECAST_FILE) if isinstance(f, dict) and _number(f.get("step"))]
    return {
        "run_dir": str(run_dir),
        "state": state,
        "reason": reason,
        "owner": owner,
        "exit_code": saved.get("exit_code") if state != "running" else None,
        "step": step,
        "max_steps": max_steps,
        "pass_rate": evals[-1]["pass_rate"] if evals else None,
        "pass_rate_step": evals[-1]["step"] if evals else None,
        "gpu_hours": (train or evals or [{}])[-1].get("gpu_hours"),
        "steps_per_s": steps_s,
        "eta_s": eta,
        "checkpoint": has_checkpoint(),
        "forecast": forecasts[-1] if forecasts else None,
    }


@click.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document (keys in docs/cli-json.md).")
def status(run_dir, as_json):
    """Where a run stands: alive, finished, failed or preempted; step, pass rate, GPU-hours, speed, ETA, forecast.

    \b
    Exit codes (for slurm scripts): 0 finished (or ended by a stop rule); 3 failed; 4 preempted or
    killed with a checkpoint (continue with scalerl train --resume); 5 running; 2 not a run directory.
    """
    from .live_forecast import describe

    s = run_status(run_dir)
    if as_json:
        from .render import _clean

        sys.stdout.write(json.dumps(_clean({"schema": 1, **s}), indent=2) + "\n")
    else:
        eta = "-" if s["eta_s"] is None else f"{s['eta_s'] / 60:.1f} min"
        speed = "-" if s["steps_per_s"] is None else f"{s['steps_per_s']:.2f}"
        rate = "-" if s["pass_rate"] is None else f"{s['pass_rate']:.3f} (step {s['pass_rate_step']})"
        gpu = "-" if s["gpu_hours"] is None else f"{s['gpu_hours']:.4g}"
        click.echo(f"{run_dir}: {s['state']}" + (f" ({s['reason']})" if s["reason"] else ""))
        click.echo(
            f"step {s['step']}/{s['max_steps'] if s['max_steps'] is not None else '?'}  pass rate {rate}  "
            f"GPU-hours {gpu}  steps/s {speed}  ETA {eta}"
        )
        f = s["forecast"]
        click.echo(f"forecast: {describe(f)}" + (f" (after step {f['step']})" if f else ""))
    sys.exit(EXIT_OF_STATE[s["state"]])
