"""Commands: rank 0's orders to the other ranks (train on a batch, checkpoint, gather the weights, stop).

Followers wait for the next order for as long as rank 0 is busy: waiting for generators, evaluating or
checkpointing can take many minutes. They wait on a CPU (gloo) group of their own with a long timeout, not on the
device group, whose (NCCL) timeout is meant for collectives that all ranks enter together and would otherwise
abort a healthy run. A rank that dies still ends the others at once: torchrun stops them, and gloo fails on the
closed connection without waiting for the timeout.
"""

from __future__ import annotations

import datetime
import enum
import os

import torch
import torch.distributed as dist

# How long a follower waits for rank 0's next order before it gives up on a rank 0 that hangs (not one that died).
WAIT_S = float(os.environ.get("SCALERL_COMMAND_TIMEOUT_S", str(24 * 3600)))


class Command(enum.IntEnum):
    STOP = 0
    TRAIN = 1  # then broadcast_batch and one train_step
    CHECKPOINT = 2  # argument: the step; every rank writes its shard
    GATHER = 3  # every rank joins in assembling the full weights of a sharded model on rank 0
    PUBLISH = 4  # argument: the version; every rank joins the publisher's per-tensor gathers (publisher.py)


class Commands:
    def __init__(self, group: dist.ProcessGroup | None, world_size: int) -> None:
        self.group, self.world_size = group, world_size

    @classmethod
    def create(cls) -> Commands:
        """Every rank calls this, in the same order relative to other group creations."""
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return cls(None, 1)
        group = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=WAIT_S))
        return cls(group, dist.get_world_size())

    def send(self, cmd: Command, arg: int = 0) -> None:
        """Rank 0: tell every follower what to do next (nothing to do with one rank)."""
        if self.world_size > 1:
            dist.broadcast(torch.tensor([int(cmd), arg], dtype=torch.long), 0, group=self.group)

    def receive(self) -> tuple[Command, int]:
        """Followers: block until rank 0's next order."""
        t = torch.zeros(2, dtype=torch.long)
        dist.broadcast(t, 0, group=self.group)
        return Command(int(t[0])), int(t[1])


def is_sharded(model: torch.nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)
