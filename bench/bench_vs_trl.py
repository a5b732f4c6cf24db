"""scalerl against TRL's GRPOTrainer on the embedded default run, side by side on this machine.

Install TRL for the bench only (it leaves torch 2.13.0+cpu and transformers 5.19 as they are; the core never
imports it):

    pip install -e '.[bench]'          # or just: pip install 'trl>=1.16,<2'

Run: python bench/bench_vs_trl.py [minutes per side, default 4]

Both sides start from the same cached tiny model (`ensure_tiny_model()`), train on the same addition split with
32 prompts x 8 samples per step, lr 2e-5 (10 warm-up steps, then constant), AdamW eps 1e-8 and weight decay 0.01,
gradient clip 1.0, 16 new tokens at temperature 1, the CISPO loss with eps_max 4, batch-level reward scaling and
an FP32 LM head. TRL is otherwise at its defaults (no vLLM: transformers' `generate`), except where its defaults
would make it slower for reasons that are not the algorithm: bf16 autocast and gradient checkpointing are off,
like scalerl, and nothing is logged or saved. scalerl runs exactly `scalerl train` with its defaults.

Evaluation is charged alike: scalerl's own InlineScorer (mean@4 on 200 held-out prompts, the same seeds) at step 0
and every 20 steps, inside each side's wall clock. TRL's clock starts when its trainer object is built; scalerl's
clock is the trainer's `time_s` (it starts before the generator process has loaded its model). TRL's evaluation
time is also reported on its own so the "evaluation excluded" figure of issue 10 can be read off.

CPU budget: 2 cores each. scalerl uses its defaults, one torch thread in the trainer and one in the generator;
TRL is one process doing generation and training in turn, so it gets torch.set_num_threads(2). The sides run one
after the other, never together. A two-thread torch process suffers far more from a busy neighbour than two
one-thread processes: with about 1.3 of the 2 cores taken by other jobs, TRL's steps took ~3 s instead of ~0.2 s
while scalerl's took ~0.6 s instead of ~0.25 s. So each side waits (up to 10 minutes) for an idle machine, and the
table says how many cores other processes used meanwhile; figures from a busy machine say little about either.

Reported, each as a ratio scalerl / TRL (above 1 favours scalerl for speed and pass rate):
  - time to +0.3 over the step-0 pass rate, on the first evaluation that reaches it and on a 3-evaluation running
    mean (as in bench_pipeline.py, to damp evaluation noise); the time ratio is TRL's time over scalerl's;
  - training steps per second of wall time;
  - the pass rate both sides have at equal wall time (the earlier of the two last evaluations), each side's curve
    linearly interpolated between its evaluations.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TARGET = 0.3
EVAL_EVERY = 20


# -- the TRL side (runs in a subprocess of its own: python bench/bench_vs_trl.py --trl RUN_DIR MINUTES) ---------
def trl_side(run_dir: Path, minutes: float) -> None:
    import torch

    # Two threads for one process that generates and trains in turn: the same two cores scalerl's two
    # single-threaded processes get. Set before any model is built so every op sees it.
    torch.set_num_threads(2)
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from scalerl.generator_service.heldout import InlineScorer
    from scalerl.shared.models.tiny_model import ensure_tiny_model, load_model_dir
    from scalerl.shared.tasks.catalog import load_task

    task = load_task()
    model_dir = ensure_tiny_model(task="addition")
    _, tokenizer = load_model_dir(model_dir)
    items = {item.id: item for item in task.train_items}
    dataset = Dataset.from_list([{"prompt": it.prompt, "item_id": it.id} for it in task.train_items])

    def addition_reward(prompts, completions, item_id, **_):
        return [float(task.verify(c, items[i])[0]) for c, i in zip(completions, item_id)]

    args = GRPOConfig(
        output_dir=str(run_dir / "trl_out"),
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        per_device_train_batch_size=256,  # 32 prompts x 8 samples, one optimizer step per generation batch
        gradient_accumulation_steps=1,
        num_generations=8,
        max_completion_length=16,
        temperature=1.0,
        use_vllm=False,
        loss_type="cispo",
        epsilon_high=4.0,
        scale_rewards="batch",
        cast_lm_head_to_fp32=True,
        beta=0.0,
        num_iterations=1,
        learning_rate=2e-5,
        lr_scheduler_type="constant_with_warmup",
        warmup_steps=10,
        adam_epsilon=1e-8,
        weight_decay=0.01,
        max_grad_norm=1.0,
        max_steps=1000,
        seed=0,
        logging_strategy="no",
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    evaluator = InlineScorer(model_dir, tokenizer, task, 200, 4, 1.0, 16, True)
    metrics = open(run_dir / "metrics.jsonl", "w")
    t0 = time.monotonic()
    clock = {"eval_s": 0.0}

    def write(kind, step, **values):
        metrics.write(json.dumps({"kind": kind, "step": step, "time_s": time.monotonic() - t0, **values}) + "\n")
        metrics.flush()

    class Bench(TrainerCallback):
        def _evaluate(self, step):
            start = time.monotonic()
            state = {k: v.detach() for k, v in trainer.model.state_dict().items()}
            result = evaluator.run(state, step)
            clock["eval_s"] += time.monotonic() - start
            write("eval", step, eval_s=clock["eval_s"], **result)

        def on_train_begin(self, args, state, control, **kw):
            self._evaluate(0)

        def on_step_end(self, args, state, control, **kw):
            write("train", state.global_step)
            if state.global_step % EVAL_EVERY == 0:
                self._evaluate(state.global_step)
            if time.monotonic() - t0 > 60 * minutes:
                control.should_training_stop = True

    trainer = GRPOTrainer(
        model=model,
        reward_funcs=addition_reward,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[Bench()],
    )
    trainer.train()
    metrics.close()


# -- the driver ---------------------------------------------------------------------------------------------------
class CpuMeter:
    """CPU seconds this side's processes used, and what the rest of the machine used meanwhile.

    The machine may be shared: a side that loses a core to someone else is slowed for reasons that are not its
    own, and a process with two torch threads suffers more from that than two processes with one thread each.
    """

    def __enter__(self):
        self.ours, self.busy, self.t = _children_cpu(), _machine_busy(), time.monotonic()
        return self

    def __exit__(self, *exc):
        self.wall = time.monotonic() - self.t
        self.ours = _children_cpu() - self.ours
        self.others = max(0.0, _machine_busy() - self.busy - self.ours)


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)  # waited-for descendants: scalerl's launcher reaps its own
    return ru.ru_utime + ru.ru_stime


def _machine_busy() -> float:
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait


def wait_for_quiet(max_wait_s: float = 600.0, window_s: float = 10.0, cores: float = 0.25) -> None:
    """Start a side only once the rest of the machine is idle: on 2 cores, another job's one busy thread makes
    a two-thread torch process stall at every parallel region, which would measure the neighbour, not the side."""
    deadline = time.monotonic() + max_wait_s
    while True:
        busy = _machine_busy()
        time.sleep(window_s)
        used = (_machine_busy() - busy) / window_s
        if used < cores:
            return
        if time.monotonic() > deadline:
            print(f"warning: the machine stayed busy ({used:.2f} cores used by others); running anyway", flush=True)
            return


def run_scalerl(root: Path, minutes: float) -> tuple[list[dict], CpuMeter]:
    run_dir = root / "scalerl"
    with open(root / "scalerl.log", "w") as log, CpuMeter() as cpu:
        subprocess.run(
            [sys.executable, "-m", "scalerl.cli", "train", "--run-dir", str(run_dir), "--max-minutes", str(minutes)],
            check=False,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    return _read(run_dir / "metrics.jsonl"), cpu


def run_trl(root: Path, minutes: float) -> tuple[list[dict], CpuMeter]:
    run_dir = root / "trl"
    run_dir.mkdir()
    with open(root / "trl.log", "w") as log, CpuMeter() as cpu:
        rc = subprocess.run(
            [sys.executable, __file__, "--trl", str(run_dir), str(minutes)], check=False, stdout=log, stderr=log
        ).returncode
    if rc:
        sys.exit(f"the TRL side failed (exit {rc}); see {root / 'trl.log'}:\n{(root / 'trl.log').read_text()[-3000:]}")
    return _read(run_dir / "metrics.jsonl"), cpu


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def summarise(records: list[dict]) -> dict:
    evals = [r for r in records if r["kind"] == "eval"]
    train = [r for r in records if r["kind"] == "train"]
    t = np.array([r["time_s"] for r in evals])
    y = np.array([r["pass_rate"] for r in evals])
    steps = np.array([r["step"] for r in evals])
    goal = y[0] + TARGET
    first = np.flatnonzero(y >= goal)
    smooth = np.convolve(y, np.ones(3) / 3, mode="valid")
    hit = np.flatnonzero(smooth >= goal)
    return dict(
        r0=float(y[0]),
        t=t,
        y=y,
        steps=len(train),
        steps_per_s=len(train) / train[-1]["time_s"] if train else float("nan"),
        t_first=float(t[first[0]]) if first.size else float("nan"),
        step_first=int(steps[first[0]]) if first.size else -1,
        t_smooth=float(t[hit[0] + 2]) if hit.size else float("nan"),
        step_smooth=int(steps[hit[0] + 2]) if hit.size else -1,
        best=float(y.max()),
        eval_s=eval_seconds_after_step0(records),
    )


def eval_seconds_after_step0(records: list[dict]) -> float:
    """Evaluation seconds at steps > 0. scalerl logs no evaluation duration, but the eval line of step s follows
    that step's train line at once; step 0 is left out on both sides because scalerl's also waits for the
    generator to start."""
    train_t = {r["step"]: r["time_s"] for r in records if r["kind"] == "train"}
    return sum(r["time_s"] - train_t[r["step"]] for r in records if r["kind"] == "eval" and r["step"] in train_t)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--trl":
        trl_side(Path(sys.argv[2]), float(sys.argv[3]))
        return
    minutes = float(sys.argv[1]) if len(sys.argv) > 1 else 4.0
    from scalerl.shared.models.tiny_model import ensure_tiny_model

    ensure_tiny_model(task="addition")  # a first build (~6 min) must not count against either side
    keep = os.environ.get("BENCH_KEEP")  # a directory to keep both runs in, for profiling afterwards
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(keep or tmp)
        root.mkdir(parents=True, exist_ok=True)
        wait_for_quiet()
        s_recs, s_cpu = run_scalerl(root, minutes)
        wait_for_quiet()
        t_recs, t_cpu = run_trl(root, minutes)
    s, t = summarise(s_recs), summarise(t_recs)
    for side, cpu in ((s, s_cpu), (t, t_cpu)):
        side["cores_used"], side["cores_others"] = cpu.ours / cpu.wall, cpu.others / cpu.wall
    at = min(s["t"][-1], t["t"][-1])
    s["y_at"], t["y_at"] = float(np.interp(at, s["t"], s["y"])), float(np.interp(at, t["t"], t["y"]))

    print(f"{minutes:g} min per side, 2 CPU cores, target +{TARGET:g} over the step-0 pass rate (mean@4, 200 prompts)")
    rows = [
        ("step-0 pass rate", "r0", "{:.3f}", lambda a, b: a / b),
        ("steps trained", "steps", "{:d}", lambda a, b: a / b),
        ("steps/s (incl. eval)", "steps_per_s", "{:.3f}", lambda a, b: a / b),
        ("t to +0.3, first eval [s]", "t_first", "{:.1f}", lambda a, b: b / a),
        ("  at step", "step_first", "{:d}", None),
        ("t to +0.3, 3-eval mean [s]", "t_smooth", "{:.1f}", lambda a, b: b / a),
        ("  at step", "step_smooth", "{:d}", None),
        (f"pass rate at t={at:.0f} s", "y_at", "{:.3f}", lambda a, b: a / b),
        ("best eval pass rate", "best", "{:.3f}", lambda a, b: a / b),
        ("eval time, steps > 0 [s]", "eval_s", "{:.1f}", None),
        ("cores used by the side", "cores_used", "{:.2f}", None),
        ("cores used by others", "cores_others", "{:.2f}", None),
    ]
    print(f"{'':28s} {'scalerl':>9s} {'TRL':>9s} {'ratio':>7s}")
    for label, key, fmt, ratio in rows:
        a, b = s[key], t[key]
        r = f"{ratio(a, b):7.2f}" if ratio and b and a and np.isfinite(a) and np.isfinite(b) else f"{'':7s}"
        print(f"{label:28s} {fmt.format(a):>9s} {fmt.format(b):>9s} {r}")
    if np.isfinite(t["t_first"]):
        excl = t["t_first"] - next(r["eval_s"] for r in t_recs if r["kind"] == "eval" and r["step"] == t["step_first"])
        print(f"TRL to +0.3 (first eval) with its evaluation time excluded: {excl:.1f} s")
    if max(s["cores_others"], t["cores_others"]) > 0.1:
        print("warning: other processes used the CPU during the runs; the wall times are not this machine's best")
    print("ratios: scalerl / TRL, except time ratios, which are TRL / scalerl (above 1: scalerl is faster)")


if __name__ == "__main__":
    main()
