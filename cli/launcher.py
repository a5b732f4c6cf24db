"""`scalerl train`'s process supervision: one trainer, N generators, the evaluator, one run directory.

Children run in their own sessions so that a terminal's Ctrl-C reaches only this supervisor, which then stops
them all at once: the trainer writes a checkpoint and tells generators why it stops, and the generators stop on
their own signal instead of waiting out a peer timeout. No child outlives the supervisor: each asks the kernel for
SIGTERM when the supervisor dies (kill -9 included) and also watches the supervisor's pid. The trainer shares the
supervisor's run-directory lock (shared/ownership.py), so the run dir stays owned until the last of them exits.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from scalerl.shared.ownership import RunLock, die_with_parent

# How long the trainer may take to write its final checkpoint after SIGTERM before it is killed.
TRAINER_GRACE_S = 60.0
# Generators and the evaluator only close sockets on SIGTERM.
GENERATOR_GRACE_S = 10.0


@dataclass
class Child:
    name: str
    proc: subprocess.Popen
    log: Path


class Supervisor:
    def __init__(
        self,
        run_dir: Path,
        config_path: Path,
        n_generators: int,
        resume: bool,
        lock: RunLock,
        from_scratch: bool = False,
        evaluator: bool = False,
    ):
        self.evaluator = evaluator  # trainer.eval_mode = "process": one more child, `scalerl evaluator`
        self.run_dir, self.config_path = run_dir, config_path
        self.n_generators, self.resume, self.from_scratch = n_generators, resume, from_scratch
        self.lock = lock
        self.children: list[Child] = []
        self.args: dict[str, list[str]] = {}
        self.stop_signal: int | None = None

    def restart(self, name: str) -> None:
        """Start a child again with the same arguments (a crashed generator; the trainer re-issues its work)."""
        old = next(c for c in self.children if c.name == name)
        self.children[self.children.index(old)] = self._start_child(name, self.args[name])

    def _spawn(self, name: str, args: list[str]) -> Child:
        self.args[name] = args
        child = self._start_child(name, args)
        self.children.append(child)
        return child

    def _start_child(self, name: str, args: list[str]) -> Child:
        log = self.run_dir / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        lock_env, lock_fds = self.lock.child_env()
        env = dict(os.environ, PYTHONUNBUFFERED="1", **lock_env)
        with open(log, "a") as stderr:
            proc = subprocess.Popen(
                [sys.executable, "-m", "scalerl.cli", *args],
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                env=env,
                start_new_session=True,
                preexec_fn=die_with_parent,
                # Only the trainer writes the run dir; generators must not keep the lock alive on their own.
                pass_fds=lock_fds if name == "trainer" else (),
            )
        return Child(name, proc, log)

    def start(self) -> None:
        cfg = str(self.config_path)
        resume = ["--resume-from-scratch"] if self.from_scratch else ["--resume"] if self.resume else []
        self._spawn("trainer", ["trainer", "--config", cfg] + resume)
        for i in range(self.n_generators):
            self._spawn(
                f"gen-{i}",
                ["generator", "--config", cfg, "--set", f"generator.peer_id=gen-{i}", "--set", f"generator.seed={i}"],
            )
        if self.evaluator:
            self._spawn("evaluator", ["evaluator", "--config", cfg])

    def install_signals(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda s, _f: setattr(self, "stop_signal", s))

    def poll(self) -> tuple[str, int] | None:
        """(name, exit code) when the run is over: the trainer exited, or a generator or the evaluator failed; else
        None.

        A generator exiting 0 was told to stop (by the trainer's Shutdown): the trainer's own exit follows.
        """
        trainer_code = self.children[0].proc.poll()
        if trainer_code is not None:
            return "trainer", trainer_code
        for c in self.children[1:]:
            code = c.proc.poll()
            if code not in (None, 0):
                return c.name, code
        return None

    def shutdown(self) -> None:
        """Stop every child and wait. The trainer goes first: on SIGTERM it checkpoints and tells the generators why
        it stops (within TRAINER_GRACE_S, else SIGKILL). Generators still running then get SIGTERM and
        GENERATOR_GRACE_S. Signals rather than control messages: they reach a child in any state."""
        trainer, gens = self.children[0], self.children[1:]
        if trainer.proc.poll() is None:
            trainer.proc.send_signal(signal.SIGTERM)
        _wait_or_kill([trainer], TRAINER_GRACE_S)
        for c in gens:
            if c.proc.poll() is None:
                c.proc.send_signal(signal.SIGTERM)
        _wait_or_kill(gens, GENERATOR_GRACE_S)

    def last_log_line(self, name: str) -> str:
        c = next(c for c in self.children if c.name == name)
        lines = [line for line in c.log.read_text(errors="replace").splitlines() if line.strip()]
        return lines[-1] if lines else "(empty log)"


def _wait_or_kill(children: list[Child], grace_s: float) -> None:
    start = time.monotonic()
    for c in children:
        try:
            c.proc.wait(timeout=max(0.1, start + grace_s - time.monotonic()))
        except subprocess.TimeoutExpired:
            c.proc.kill()
            c.proc.wait()


def read_metrics(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass  # a line being written right now
    return out
