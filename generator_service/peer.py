"""What the generator and the evaluator share as peers of the trainer: the control channel, liveness, reporting,
and a start-up that a signal can stop at any point.

Each service keeps only its work loop. The trainer binds every socket and the peer connects; the control channel
carries the peer's heartbeats and stats out and the trainer's Shutdown, requests and errors in. A trainer silent
for peer_timeout_s, or a parent `scalerl train` that is gone, ends the peer: it must never outlive its run.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import zmq

from scalerl.generator_service.config import GeneratorConfig
from scalerl.shared.config import ConfigError
from scalerl.shared.errors import one_line
from scalerl.shared.ownership import parent_gone, read_secret
from scalerl.shared.tasks.types import TaskError
from scalerl.shared.wire import auth
from scalerl.shared.wire.messages import Error, Message, Shutdown
from scalerl.shared.wire.sockets import ControlClient
from scalerl.shared.wiring import RunWiring

WAIT_NOTE_S = 30.0  # while waiting at start-up, say who is waited for this often
MAX_READS_PER_TURN = 256  # bounds the time one turn spends on a flood of incoming messages
ERROR_CHARS = 400  # Error.message is one line for a log; cut long reasons


class TrainerGone(RuntimeError):
    """The trainer stopped talking; the message is the one line printed before exiting 1."""


class StopRequested(BaseException):
    """A stop raised where a flag cannot be polled: during start-up (a signal inside a slow import or engine load)
    or between the engine steps of a long evaluation. BaseException, so that no `except Exception` swallows it."""


class PeerService:
    """The trainer-facing half of a peer. Subclasses set `role` and run their own loop, calling
    `control_messages()` and `check_trainer()` once per turn and stopping when `stop_reason` is set."""

    role = "peer"

    def __init__(
        self,
        cfg: GeneratorConfig,
        wiring: RunWiring,
        info: dict,
        version: int = -1,
        context: zmq.Context | None = None,
    ):
        self.cfg, self.wiring = cfg, wiring
        self.log = logging.getLogger(f"scalerl.{self.role}")
        self.stop_reason: str | None = None
        token = read_secret(wiring.secret_file, wait_s=cfg.startup_timeout_s)
        # The run's HMAC key: the weight channel's messages carry a MAC too (shared/wire/auth.py).
        self.key = auth.key_from_secret(token) if token else None
        self.control = ControlClient(
            wiring.control_addr,
            peer_id=cfg.peer_id,
            role=self.role,
            version=version,
            info=info,
            heartbeat_interval=cfg.heartbeat_s,
            context=context or zmq.Context.instance(),
            token=token,
        )
        self._t_start = self._noted = time.monotonic()

    def control_messages(self) -> list[Message]:
        """What the trainer sent since the last turn, without blocking (receiving also sends our heartbeat).
        Shutdown sets `stop_reason` and ends the list; a refused registration is a config error (wrong secret)."""
        out: list[Message] = []
        for _ in range(MAX_READS_PER_TURN):
            msg = self.control.recv(timeout_ms=0)
            if msg is None:
                break
            if isinstance(msg, Shutdown):
                self.stop_reason = f"Shutdown from the trainer: {msg.reason or 'no reason given'}"
                break
            if isinstance(msg, Error) and msg.code == "unauthorized":
                raise ConfigError(f"the trainer refused {self.role} {self.cfg.peer_id}: {msg.message}")
            if isinstance(msg, Error):
                self.log.warning("trainer reports %s: %s", msg.code, msg.message)
                continue
            out.append(msg)
        return out

    def check_trainer(self) -> None:
        """Raise TrainerGone past peer_timeout_s of silence (startup_timeout_s before the trainer's first word); stop
        when the parent `scalerl train` is gone."""
        now = time.monotonic()
        last = self.control.monitor.last_seen(ControlClient.SERVER)
        if last is None:  # no word yet: the trainer may still be loading its model or resuming a checkpoint
            waited = now - self._t_start
            if waited > self.cfg.startup_timeout_s:
                raise TrainerGone(
                    f"no word from the trainer at {self.wiring.control_addr} after {waited:.0f} s "
                    f"(startup_timeout_s = {self.cfg.startup_timeout_s:g}); exiting"
                )
            if now - self._noted >= WAIT_NOTE_S:
                self._noted = now
                self.log.info(
                    "waiting for the trainer at %s: no word after %.0f s (it loads its model, or resumes a "
                    "checkpoint, before it binds; startup_timeout_s = %g)",
                    self.wiring.control_addr,
                    waited,
                    self.cfg.startup_timeout_s,
                )
        elif (silent := now - last) > self.cfg.peer_timeout_s:
            raise TrainerGone(
                f"trainer silent for {silent:.1f} s (peer_timeout_s = {self.cfg.peer_timeout_s:g}, "
                f"control {self.wiring.control_addr}); exiting"
            )
        if parent_gone():
            self.stop_reason = "scalerl train (the parent process) is gone"

    def report(self, code: str, message: str, group_id: str = "") -> None:
        """An Error to the trainer (and the log); never blocks: the heartbeat's counters still carry it."""
        message = message[:ERROR_CHARS]
        self.log.warning("%s%s: %s", code, f" (group {group_id!r})" if group_id else "", message)
        try:
            self.control.send(
                Error(peer_id=self.cfg.peer_id, code=code, message=message, group_id=group_id), timeout_ms=0
            )
        except (TimeoutError, zmq.ZMQError):
            pass

    def run(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.control.close()


def run_peer(name: str, cfg: GeneratorConfig, start: Callable[[], PeerService]) -> int:
    """Start a peer with `start()` and serve until stopped. Returns the exit code: 0 stopped on request (Shutdown
    or a signal, also during start-up), 1 failure, 2 bad config or task; errors are one line on stderr.

    A signal before the service exists raises StopRequested and is also kept: raised inside an import's
    callback, an exception is printed and swallowed, and the peer would come up and serve until SIGKILL."""
    state: dict[str, Any] = {"service": None, "stop": None}
    log = logging.getLogger(f"scalerl.{name}")

    def on_signal(signum, _frame):
        sig = signal.Signals(signum).name
        if state["service"] is None:
            state["stop"] = sig
            raise StopRequested(sig)
        state["service"].stop_reason = sig

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    service: PeerService | None = None
    try:
        import torch  # here, not at the top: a bad config exits before the slow import

        if cfg.threads:
            torch.set_num_threads(cfg.threads)  # two busy processes may share a few cores
        service = state["service"] = start()
        if state["stop"] is not None:  # a stop during the load that did not surface as StopRequested
            service.stop_reason = state["stop"]
        log.info("%s %s up (pid %d)", name, cfg.peer_id, os.getpid())
        service.run()
        return 0
    except StopRequested as e:
        log.info("stopped by %s while starting", e)
        return 0
    except (ConfigError, TaskError) as e:
        print(f"scalerl {name}: error: {one_line(e)}", file=sys.stderr)
        return 2
    except TrainerGone as e:
        print(f"scalerl {name}: error: {one_line(e)}", file=sys.stderr)
        return 1
    except Exception as e:
        log.exception("%s failed", name)
        if service is not None:
            service.report("engine_failure", f"{type(e).__name__}: {one_line(e)}")
            time.sleep(0.1)  # let the Error leave before the linger-0 close drops it
        print(f"scalerl {name}: error: {type(e).__name__}: {one_line(e)}", file=sys.stderr)
        return 1
    finally:
        if service is not None:
            service.close()
        for s, handler in previous.items():
            signal.signal(s, handler)
