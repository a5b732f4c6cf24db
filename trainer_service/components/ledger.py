"""Ledger: the run's clock and its metrics.jsonl (docs/run-dir.md).

time_s is wall seconds since the run started and gpu_hours devices x wall hours over every process; both
continue from the checkpoint's values after a resume, so a curve never restarts its x axis.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from scalerl.shared.eval_config import EvalConfig
from scalerl.shared.run_dir import MetricsLog
from scalerl.shared.wiring import RunWiring

from ..config import TrainerConfig

log = logging.getLogger("scalerl.trainer")


class Ledger:
    def __init__(self, metrics: MetricsLog, n_devices: int, time_base: float = 0.0, gpu_hours_base: float = 0.0):
        self.metrics = metrics
        self.n_devices = n_devices
        self.time_base, self.gpu_hours_base = time_base, gpu_hours_base
        self.t0 = time.monotonic()
        # On a CPU-only run each process counts as one device; every metrics line says which it was.
        self.device = "cuda" if torch.cuda.is_available() else "cpu-process"

    @classmethod
    def open(
        cls,
        cfg: TrainerConfig,
        wiring: RunWiring,
        evaluation: EvalConfig,
        world_size: int,
        step: int,
        state: dict,
        resumed: bool,
    ) -> Ledger:
        """After a resume from `step`: report what the metrics lack, and drop the lines of later steps, which are
        redone rather than duplicated (from a step-0 checkpoint the first evaluation is redone too)."""
        path = Path(cfg.run_dir) / "metrics.jsonl"
        if resumed:
            for problem in MetricsLog.check(path, step, evaluation.every) if step > 0 else []:
                log.warning("resume: %s", problem)
            MetricsLog.truncate_after(path, step if step > 0 else -1)
        n_devices = world_size + wiring.n_generators * wiring.generator_devices
        if evaluation.mode == "process":  # the evaluator process holds devices of its own for the whole run
            n_devices += wiring.eval_devices
        return cls(MetricsLog(path), n_devices, float(state.get("time_s", 0.0)), float(state.get("gpu_hours", 0.0)))

    def has_eval(self, step: int) -> bool:
        """Whether metrics.jsonl holds the eval line of `step` (a run stopped before the evaluator answered lacks
        it: the resumed run evaluates that step again)."""
        import json

        for line in self.metrics.path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and rec.get("kind") == "eval" and rec.get("step") == step:
                return True
        return False

    def time_s(self) -> float:
        return self.time_base + time.monotonic() - self.t0

    def gpu_hours(self) -> float:
        return self.gpu_hours_base + (time.monotonic() - self.t0) / 3600.0 * self.n_devices

    def clock(self) -> dict[str, float]:
        """What a checkpoint stores so that a resumed run continues the count."""
        return {"gpu_hours": self.gpu_hours(), "time_s": self.time_s()}

    def record(self, kind: str, step: int, **values) -> None:
        self.metrics.write(
            {
                "kind": kind,
                "step": step,
                "gpu_hours": self.gpu_hours(),
                "time_s": self.time_s(),
                "devices": self.n_devices,
                "device": self.device,
                **values,
            }
        )

    def close(self) -> None:
        self.metrics.close()
