"""Checkpointer: save and resume the trainer's state (trainer_service/checkpoint.py, docs/run-dir.md).

Model, optimizer and RNG go through torch.distributed.checkpoint (every rank writes its shard); the LR scheduler,
prompt pipeline and clock ride in state.json, written by rank 0. Saving and resuming are collective: every rank
calls them, followers on Command.CHECKPOINT.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.distributed as dist

from ..checkpoint import Resumed, resume_checkpoint, save_checkpoint

log = logging.getLogger("scalerl.trainer")


class Checkpointer:
    def __init__(
        self,
        root: Path,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        *,
        model_dir: Path,
        keep: int,
        group: dist.ProcessGroup | None,
        rank: int,
    ) -> None:
        self.root, self.model, self.optimizer, self.scheduler = Path(root), model, optimizer, scheduler
        self.model_dir, self.keep, self.group, self.rank = Path(model_dir), keep, group, rank

    def save(self, step: int, state: dict) -> Path:
        """`state`: what rank 0 adds to state.json (prompt pipeline, clock); followers pass {}."""
        path = save_checkpoint(
            self.root,
            step,
            self.model,
            self.optimizer,
            {**state, "lr_scheduler": self.scheduler.state_dict(), "model_dir": str(self.model_dir.resolve())},
            keep=self.keep,
            model_dir=self.model_dir,
            group=self.group,
        )
        if self.rank == 0:
            log.info("checkpoint at step %d", step)
        return path

    def resume(self, from_scratch: bool) -> Resumed:
        got = resume_checkpoint(
            self.root, self.model, self.optimizer, from_scratch=from_scratch, tidy=self.rank == 0, group=self.group
        )
        if got.path is not None:
            self.scheduler.load_state_dict(got.state["lr_scheduler"])
        return got
