"""`scalerl sweep`: leave-one-out or grid sweeps of a recipe, one run dir per variant (docs/sweeps.md).

A sweep dir holds sweep.json (the plan) and one folder per variant with its resolved config.toml and its run dir:

    SWEEP_DIR/sweep.json
    SWEEP_DIR/<variant>/config.toml    the base config plus the variant's changes (what its scalerl train reads)
    SWEEP_DIR/<variant>/resolved.toml  every key resolved; variants differ only in their changes
    SWEEP_DIR/<variant>/run/           the variant's run dir (metrics.jsonl, forecast.jsonl, status.json, ...)
    SWEEP_DIR/<variant>/done.json      written when the variant's `scalerl train` ended with 0 or a stop rule

Locally the variants run one after another; `--resume` continues a sweep: finished variants are skipped and an
interrupted one continues from its checkpoint (or from scratch if it never wrote one). `--emit-sbatch` writes one
slurm job array instead, one variant per task, each running `scalerl sweep SWEEP_DIR --only VARIANT`.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from itertools import product
from pathlib import Path
from typing import Any

import click

from scalerl.shared.eval_config import INTERRUPTION_ONLY_KEYS

SWEEP_FILE = "sweep.json"  # the same name curvefit.readers looks for; not imported from there, to keep numpy out

# How long a resumed variant waits for the previous owner of its run dir: the trainer's checkpoint grace, and some.
OWNER_WAIT_S = 90.0
DELETE = None  # a change that removes a key (its default: off)
BASELINE = "baseline"
# What a variant folder's name may hold: grid labels are cut down to it, and a saved plan is checked against it.
VARIANT_CHARS = "A-Za-z0-9._=+-"

# The paper's leave-one-out alternatives (ScaleRL, Sec. 4): name, ingredient, what replaces it, the changes, and
# the base setting that makes the variant differ from the baseline (else it is skipped).
LEAVE_ONE_OUT: list[tuple[str, str, str, dict[str, Any], tuple[str, Any] | None]] = [
    ("dapo-loss", "CISPO loss", "DAPO", {"trainer.loss.kind": "dapo"}, ("trainer.loss.kind", "cispo")),
    ("no-fp32-head", "FP32 LM head", "LM head in the model's dtype", {"trainer.loss.fp32_lm_head": False}, None),
    (
        "sample-aggregation",
        "prompt-level loss aggregation",
        "sample-level aggregation",
        {"trainer.loss.aggregation": "sample"},
        ("trainer.loss.aggregation", "prompt"),
    ),
    (
        "prompt-adv-norm",
        "batch-level advantage normalisation",
        "prompt-level normalisation",
        {"trainer.loss.adv_norm": "prompt"},
        ("trainer.loss.adv_norm", "batch"),
    ),
    (
        "no-interruption",
        "forced length interruption",
        "none",
        # What acts only after an interruption goes with it: left in, it is a setting the run would refuse.
        {f"generator.{k}": DELETE for k in ("thinking_budget", *INTERRUPTION_ONLY_KEYS)},
        None,
    ),
    (
        "no-zero-variance-filter",
        "zero-variance filtering",
        "none",
        {"trainer.loss.zero_variance_filter": False},
        None,
    ),
    ("no-npr", "no-positive-resampling (NPR)", "none", {"trainer.prompts.no_positive_resampling": False}, None),
    (
        "ppo-off-policy",
        "PipelineRL-k",
        "PPO-off-policy-k",
        {"trainer.mode": "ppo_off_policy"},
        ("trainer.mode", "pipeline"),
    ),
]


def _get(d: dict, key: str):
    for part in key.split("."):
        if not isinstance(d, dict) or part not in d:
            return None
        d = d[part]
    return d


def _apply(raw: dict, changes: dict) -> dict:
    from scalerl.shared.config import _deepcopy

    out = _deepcopy(raw)
    for key, value in changes.items():
        *path, last = key.split(".")
        node = out
        for p in path:
            node = node.setdefault(p, {})
        if value is DELETE:
            node.pop(last, None)
        else:
            node[last] = value
    return out


def _leave_one_out(resolved: dict) -> tuple[list[dict], list[dict]]:
    variants: list[dict[str, Any]] = [{"name": BASELINE, "changes": {}, "ingredient": None, "alternative": None}]
    skipped = []
    for name, ingredient, alternative, changes, needs in LEAVE_ONE_OUT:
        if needs is not None:
            key, want = needs
            on = _get(resolved, key) == want
        else:
            key = next(iter(changes))
            on = bool(_get(resolved, key))
        if not on:
            skipped.append({"name": name, "why": f"the base config already lacks it ({key} = {_get(resolved, key)!r})"})
            continue
        variants.append({"name": name, "changes": changes, "ingredient": ingredient, "alternative": alternative})
    return variants, skipped


def _grid(grids: tuple[str, ...]) -> list[dict]:
    from scalerl.shared.config import ConfigError, parse_set

    axes: list[tuple[str, list]] = []
    for g in grids:
        if "=" not in g:
            raise ConfigError(f"--grid {g!r}: expected section.key=v1,v2,...")
        key, values = g.split("=", 1)
        key = key.strip()
        if key in (k for k, _ in axes):
            raise ConfigError(f"--grid {key}: given twice; list every value in one --grid")
        if key == "run.run_dir":  # each variant's run dir is SWEEP_DIR/<variant>/run: a value would be ignored
            raise ConfigError("--grid run.run_dir: the run dir is set per variant by scalerl sweep")
        axes.append((key, [parse_set(f"{key}={v}")[1] for v in _split_values(values)]))
    lasts = [k.rsplit(".", 1)[-1] for k, _ in axes]
    short = len(set(lasts)) == len(lasts)
    variants = []
    for combo in product(*(vals for _, vals in axes)):
        changes = {k: v for (k, _), v in zip(axes, combo)}
        label = "_".join(f"{k.rsplit('.', 1)[-1] if short else k}={_fmt(v)}" for k, v in changes.items())
        variants.append({"name": re.sub(f"[^{VARIANT_CHARS}]", "-", label), "changes": changes})
    names = [v["name"] for v in variants]
    if len(set(names)) < len(names):
        raise ConfigError("--grid: two variants would get the same name; use distinct values")
    return variants


def _split_values(values: str) -> list[str]:
    """v1,v2,... split at the commas outside brackets and quotes, so that a list ([0.9,0.99]) or a quoted string
    with a comma is one value."""
    out, depth, quote, start = [], 0, "", 0
    for i, c in enumerate(values):
        if quote:
            quote = "" if c == quote else quote
        elif c in "\"'":
            quote = c
        elif c in "[{":
            depth += 1
        elif c in "]}":
            depth -= 1
        elif c == "," and depth == 0:
            out.append(values[start:i])
            start = i + 1
    return [*out, values[start:]]


def _fmt(v) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)


def _write_variant(sweep_dir: Path, base_raw: dict, v: dict) -> None:
    """SWEEP/<v>/config.toml: the base config with the variant's changes, what its `scalerl train` reads; and
    SWEEP/<v>/resolved.toml: every key resolved (as `scalerl config show` prints it), to diff variants by."""
    from scalerl.shared.config import ConfigError, dump_toml
    from scalerl.shared.run_dir import atomic_write_text

    from .run_config import resolve

    vdir = sweep_dir / v["name"]
    vdir.mkdir(parents=True, exist_ok=True)
    path = vdir / "config.toml"
    changes = ", ".join(f"{k} = {'unset' if x is DELETE else x!r}" for k, x in v["changes"].items()) or "none"
    header = f"# scalerl sweep variant {v['name']}: the base config with these changes: {changes}\n"
    atomic_write_text(path, header + dump_toml(_apply(base_raw, v["changes"])))
    try:
        resolved, _ = resolve(path, [], run_dir=str(vdir / "run"))
    except ConfigError as e:
        raise ConfigError(f"variant {v['name']}: {e}") from None
    atomic_write_text(vdir / "resolved.toml", header + dump_toml(resolved))


def _plan(sweep_dir: Path, config_path, sets, loo: bool, grids, max_steps, max_minutes) -> dict:
    from scalerl.shared.config import ConfigError, apply_sets, load_toml

    from .run_config import resolve

    if loo == bool(grids):
        raise click.UsageError("give either --leave-one-out or --grid section.key=v1,v2,...")
    sets = list(sets) + ([f"trainer.max_steps={max_steps}"] if max_steps else [])
    base_raw = apply_sets(load_toml(config_path) if config_path else {}, sets)
    for key in ("run_dir",):
        if key in base_raw.get("run", {}):
            raise ConfigError(f"run.{key} is set per variant by scalerl sweep; leave it out of the base config")
    # --max-minutes is checked as scalerl train checks it, before any variant starts rather than by each variant.
    base_resolved, _ = resolve(config_path, sets, run_dir=str(sweep_dir / BASELINE / "run"), max_minutes=max_minutes)
    if loo:
        variants, skipped = _leave_one_out(base_resolved)
    else:
        variants, skipped = _grid(grids), []
    # A variant refused here leaves the sweep dir as it was: no folders of a plan that was never saved.
    made = [d for d in [sweep_dir, *(sweep_dir / v["name"] for v in variants)] if not d.exists()]
    try:
        sweep_dir.mkdir(parents=True, exist_ok=True)
        for v in variants:
            _write_variant(sweep_dir, base_raw, v)
    except BaseException:
        for d in reversed(made):
            shutil.rmtree(d, ignore_errors=True)
        raise
    return {
        "schema": 1,
        "kind": "leave-one-out" if loo else "grid",
        "baseline": BASELINE if loo else None,
        "base_config": str(config_path) if config_path else None,
        "sets": sets,
        "max_minutes": max_minutes,
        "created": time.time(),
        "variants": variants,
        "skipped": skipped,
    }


def _done(sweep_dir: Path, name: str) -> dict | None:
    try:
        return json.loads((sweep_dir / name / "done.json").read_text())
    except (OSError, ValueError):
        return None


def _elapsed_min(run_dir: Path) -> float:
    from .launcher import read_metrics

    # A damaged line (not an object, a clock that is no number) counts for nothing rather than stopping the sweep.
    records = [r for r in read_metrics(run_dir / "metrics.jsonl") if isinstance(r, dict)]
    times = [t for r in records if isinstance(t := r.get("time_s"), (int, float)) and not isinstance(t, bool)]
    return max(times, default=0.0) / 60.0


class _Forward:
    """SIGTERM/SIGINT reach the running `scalerl train` (it checkpoints); the sweep then stops too."""

    def __init__(self):
        self.child: subprocess.Popen | None = None
        self.signal: int | None = None
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, sig, _frame):
        self.signal = sig
        if self.child is not None and self.child.poll() is None:
            self.child.send_signal(signal.SIGTERM)


def run_variant(sweep_dir: Path, plan: dict, name: str, fwd: _Forward | None = None) -> int:
    """Run (or continue) one variant; returns the exit code of its `scalerl train` (0 when already done)."""
    from scalerl.shared.ownership import die_with_parent

    if _done(sweep_dir, name):
        click.echo(f"scalerl sweep: {name}: done already", err=True)
        return 0
    vdir = sweep_dir / name
    run_dir = vdir / "run"
    cmd = [sys.executable, "-m", "scalerl.cli", "train", "--config", str(vdir / "config.toml")]
    cmd += ["--run-dir", str(run_dir)]
    budget = plan.get("max_minutes")
    if budget:
        left = budget - _elapsed_min(run_dir)
        if left <= 0.05:  # its minutes are spent: the interruption came after the last checkpoint's work
            _mark_done(vdir, 0)
            return 0
        cmd += ["--max-minutes", f"{left:.3f}"]
    _wait_for_owner(run_dir)
    metrics = run_dir / "metrics.jsonl"
    if metrics.exists() and metrics.stat().st_size > 0:
        cmd.append("--resume-from-scratch")  # from its checkpoint, or over again if it never wrote one
    click.echo(f"scalerl sweep: {name}: {shlex.join(cmd[2:])}", err=True)
    proc = subprocess.Popen(cmd, preexec_fn=die_with_parent)
    if fwd is not None:
        fwd.child = proc
        if fwd.signal is not None:
            proc.send_signal(signal.SIGTERM)
    code = proc.wait()
    if code in (0, 3):  # finished, its minutes spent, or a stop rule ended it
        _mark_done(vdir, code)
    return code


def _wait_for_owner(run_dir: Path, timeout_s: float = OWNER_WAIT_S) -> None:
    """A sweep killed a moment ago leaves its `scalerl train` writing the final checkpoint (it got SIGTERM from the
    kernel): wait for it to let go of the run dir rather than fail on the lock. A live owner after that still
    fails, naming itself, in the child's own lock check."""
    from scalerl.shared.ownership import owner_of

    owner = owner_of(run_dir) if run_dir.is_dir() else None
    if owner is None:
        return
    click.echo(
        f"scalerl sweep: waiting up to {timeout_s:.0f} s for {owner.get('role')} (pid {owner.get('pid')}) to "
        f"release {run_dir}",
        err=True,
    )
    deadline = time.monotonic() + timeout_s
    while owner_of(run_dir) is not None and time.monotonic() < deadline:
        time.sleep(0.5)


def _mark_done(vdir: Path, code: int) -> None:
    from scalerl.shared.run_dir import atomic_write_text

    atomic_write_text(vdir / "done.json", json.dumps({"exit_code": code, "ended": time.time()}) + "\n")


# Cores per device for a variant's task: torchrun's ranks, vLLM's workers and the verifiers need more than one each,
# and without --cpus-per-task slurm may pin the whole task to one core.
CPUS_PER_DEVICE = 4


def devices_per_variant(sweep_dir: Path, plan: dict) -> tuple[int, int]:
    """(GPUs, device units counted in gpu_hours) at most over the variants (the device plan, cli/device_plan.py):
    what each array task must be given. The CPU torch engine counts a unit but takes no GPU."""
    import tomllib

    from .device_plan import local_asks

    gpus = processes = 0
    for v in plan["variants"]:
        resolved = tomllib.loads((sweep_dir / v["name"] / "resolved.toml").read_text())
        run, evaluation, wiring = resolved["run"], resolved["eval"], resolved["wiring"]
        evaluator = wiring["eval_devices"] if evaluation["mode"] == "process" else 0
        gpu_engines = resolved["generator"]["backend"] == "vllm"
        trainer_gpu = resolved["trainer"].get("device") != "cpu"
        asks = local_asks(
            run["trainer_procs"], run["n_generators"], wiring["generator_devices"], evaluator, gpu_engines, trainer_gpu
        )
        gpus = max(gpus, sum(a.count for a in asks if a.gpu))
        processes = max(processes, sum(a.count for a in asks))
    return gpus, processes


def _sbatch(sweep_dir: Path, plan: dict, options: tuple[str, ...]) -> Path:
    names = [v["name"] for v in plan["variants"]]
    root = sweep_dir.resolve()
    devices, processes = devices_per_variant(sweep_dir, plan)
    given = {o.split("=", 1)[0].split()[0] for o in options}
    # One node and one task per variant, with the GPUs and cores its device plan needs; the user's own lines win
    # (--gres=none on a CPU cluster).
    layout = ["--nodes=1", "--ntasks=1"]
    if not given & {"--gres", "--gpus", "--gpus-per-node", "--gpus-per-task"}:
        layout.append(f"--gres=gpu:{devices}")
    if "--cpus-per-task" not in given:
        layout.append(f"--cpus-per-task={CPUS_PER_DEVICE * processes}")
    lines = [
        "#!/bin/bash",
        f"# scalerl sweep {root.name}: one variant per array task (scalerl sweep --emit-sbatch; docs/sweeps.md).",
        f"# Each variant's device plan asks for at most {devices} GPU(s) for {processes} device unit(s) "
        "(scalerl train --dry-run shows it).",
        f"#SBATCH --job-name=scalerl-sweep-{root.name}",
        f"#SBATCH --array=0-{len(names) - 1}",
        f"#SBATCH --output={root}/slurm-%A_%a.out",
        *(f"#SBATCH {o}" for o in layout if o.split("=", 1)[0] not in given),
        *(f"#SBATCH {o}" for o in options),
        "set -euo pipefail",
        "VARIANTS=(" + " ".join(shlex.quote(n) for n in names) + ")",
        'VARIANT="${VARIANTS[$SLURM_ARRAY_TASK_ID]}"',
        "# Each task runs one scalerl train on its node, not a multi-task srun step.",
        "export SCALERL_SLURM=0",
        f'exec {shlex.quote(sys.executable)} -m scalerl.cli sweep {shlex.quote(str(root))} --only "$VARIANT"',
    ]
    path = sweep_dir / "sweep.sbatch"
    from scalerl.shared.run_dir import atomic_write_text

    atomic_write_text(path, "\n".join(lines) + "\n")
    path.chmod(0o755)
    return path


def _check_saved(sweep_dir: Path, plan: dict, only: str | None) -> None:
    """A saved plan names only folders of its sweep dir, each with the config its `scalerl train` reads: checked
    before anything starts, so that a damaged sweep dir is exit 2, not variants failing one by one."""
    from scalerl.shared.config import ConfigError

    for v in plan["variants"]:
        if not re.fullmatch(f"[{VARIANT_CHARS}]+", v["name"]) or v["name"] in (".", ".."):
            raise ConfigError(f"{sweep_dir / SWEEP_FILE}: variant name {v['name']!r} is not a folder of the sweep")
        config = sweep_dir / v["name"] / "config.toml"
        if (only in (None, v["name"])) and not _done(sweep_dir, v["name"]) and not config.is_file():
            raise ConfigError(f"{config}: missing (the sweep dir is damaged; start the sweep anew)")


@click.command()
@click.argument("sweep_dir", type=click.Path(path_type=Path))
@click.option("--config", "config_path", type=click.Path(path_type=Path), help="Base config (default: built-in).")
@click.option("--set", "sets", multiple=True, metavar="SECTION.KEY=VALUE", help="Override a base key (repeatable).")
@click.option("--leave-one-out", "loo", is_flag=True, help="Drop one ScaleRL ingredient per variant (the paper's).")
@click.option(
    "--grid", "grids", multiple=True, metavar="SECTION.KEY=V1,V2", help="One variant per value (repeatable: product)."
)
@click.option("--max-minutes", type=click.FloatRange(0, min_open=True), help="Minutes per variant (its compute).")
@click.option("--max-steps", type=click.IntRange(1), help="Optimizer steps per variant.")
@click.option("--resume", is_flag=True, help="Continue the sweep in SWEEP_DIR with its saved plan.")
@click.option("--emit-sbatch", is_flag=True, help="Write SWEEP_DIR/sweep.sbatch (a slurm job array); run nothing.")
@click.option("--sbatch-option", "sbatch_options", multiple=True, metavar="OPT", help="An #SBATCH line (repeatable).")
@click.option("--only", metavar="VARIANT", help="Run only this variant of an existing sweep (the array task does).")
def sweep(sweep_dir, config_path, sets, loo, grids, max_minutes, max_steps, resume, emit_sbatch, sbatch_options, only):
    """Run a recipe's leave-one-out or grid sweep, one run dir per variant; then `scalerl compare SWEEP_DIR`.

    \b
    Exit codes: 0 every variant done; 1 a variant failed (the others still ran); 2 bad config or
    sweep dir; 130/143 stopped by Ctrl-C/SIGTERM (continue with --resume).
    """
    from scalerl.curvefit.readers import sweep_variants
    from scalerl.shared.config import ConfigError

    if sbatch_options and not emit_sbatch:
        raise click.UsageError("--sbatch-option needs --emit-sbatch (a local sweep has no job script)")
    for o in sbatch_options:  # an #SBATCH line each: after a line break sbatch would read no further directives
        if not o.strip().startswith("-") or "\n" in o or "\r" in o:
            raise click.UsageError(f"--sbatch-option {o!r}: expected one sbatch option, such as --time=4:00:00")
    existing = (sweep_dir / SWEEP_FILE).is_file()
    if resume or only:
        if config_path or sets or loo or grids or max_minutes or max_steps:
            raise click.UsageError("--resume and --only take the saved plan; leave out the plan's options")
        if not existing:
            raise ConfigError(f"{sweep_dir}: no sweep to continue (no {SWEEP_FILE})")
        plan = sweep_variants(sweep_dir)
        _check_saved(sweep_dir, plan, only)
    else:
        if existing:
            raise ConfigError(f"{sweep_dir} already holds a sweep; pass --resume to continue it")
        plan = _plan(sweep_dir, config_path, sets, loo, grids, max_steps, max_minutes)
        from scalerl.shared.run_dir import atomic_write_text

        atomic_write_text(sweep_dir / SWEEP_FILE, json.dumps(plan, indent=1) + "\n")
        for s in plan["skipped"]:
            click.echo(f"scalerl sweep: skipping {s['name']}: {s['why']}", err=True)
    names = [v["name"] for v in plan["variants"]]
    if emit_sbatch:
        path = _sbatch(sweep_dir, plan, sbatch_options)
        click.echo(f"scalerl sweep: wrote {path} ({len(names)} array tasks: {', '.join(names)}); sbatch {path}")
        return
    fwd = _Forward()
    if only:
        if only not in names:
            raise ConfigError(f"{sweep_dir}: no variant {only!r} (variants: {', '.join(names)})")
        code = run_variant(sweep_dir, plan, only, fwd)
        if code not in (0, 3):
            sys.exit(code)
        return
    failed = []
    for i, name in enumerate(names, 1):
        click.echo(f"scalerl sweep: variant {i}/{len(names)}: {name}", err=True)
        code = run_variant(sweep_dir, plan, name, fwd)
        if fwd.signal is not None:
            click.echo(f"scalerl sweep: stopped; continue with: scalerl sweep {sweep_dir} --resume", err=True)
            sys.exit(128 + fwd.signal)
        if code not in (0, 3):
            click.echo(f"scalerl sweep: {name} failed with exit code {code} (see {sweep_dir / name / 'run'})", err=True)
            failed.append(name)
    if len(failed) < len(names):  # with every variant failed there is nothing to compare or plot
        click.echo(f"next: scalerl compare {sweep_dir}")
        click.echo(f"      scalerl plot {sweep_dir} -o {sweep_dir / 'sweep.png'}")
    if failed:
        click.echo(f"scalerl sweep: failed variants: {', '.join(failed)} (rerun with --resume)", err=True)
        sys.exit(1)
