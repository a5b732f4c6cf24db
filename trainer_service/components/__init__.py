"""The parts rank 0's training loop is made of, one word each (docs/trainer.md, "Components").

Each part builds itself from the trainer config (or the few values it needs) and owns one concern:

- `Sockets`: the four endpoints of the wire protocol (docs/protocol.md), bound and closed together.
- `Pulse`: the control socket, kept alive by a background thread that heartbeats and reads while the loop is busy.
- `Dispatcher`: generation requests: issue, backlog, deadlines, refusals, restarted generators, dead peers.
- `Ledger`: the run's clock (time_s, gpu_hours) and metrics.jsonl.
- `Checkpointer`: save and resume (trainer_service/checkpoint.py) with the LR scheduler.
- `Signals`: SIGTERM / SIGINT (stop) and SIGUSR1 (checkpoint now).
- `Commands`: rank 0's orders to the other ranks, over a CPU (gloo) group of their own.

`trainer_service/service.py` composes them into the `Trainer`, whose loop body (pipeline or ppo_off_policy) stays
in one place; held-out evaluation is `trainer_service/evaluation.py` (`InlineEvaluation`, `ProcessEvaluation`).
"""

from .checkpointer import Checkpointer
from .commands import Command, Commands
from .dispatcher import Dispatcher
from .ledger import Ledger
from .pulse import Pulse
from .signals import Signals
from .sockets import Sockets

__all__ = ["Checkpointer", "Command", "Commands", "Dispatcher", "Ledger", "Pulse", "Signals", "Sockets"]
