"""`scalerl train`'s process supervision: one trainer, N generators, one run directory.

Children run in their own sessions so that a terminal's Ctrl-C reaches only this supervisor, which then stops
them in order: the trainer first (it writes a checkpoint and tells generators to shut down), then whatever is
left. No child outlives the supervisor.
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


@dataclass
class Child:
    name: str
    proc: subprocess.Popen
    log: Path


class Supervisor:
    def __init__(self, run_dir: Path, config_path: Path, n_generators: int, resume: bool):
        self.run_dir, self.config_path = run_dir, config_path
        self.n_generators, self.resume = n_generators, resume
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
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        proc = subprocess.Popen(
            [sys.executable, "-m", "scalerl.cli", *args],
            stdout=subprocess.DEVNULL,
            stderr=open(log, "a"),
            env=env,
            start_new_session=True,
        )
        return Child(name, proc, log)

    def start(self) -> None:
        cfg = str(self.config_path)
        self._spawn("trainer", ["trainer", "--config", cfg] + (["--resume"] if self.resume else []))
        for i in range(self.n_generators):
            self._spawn(
                f"gen-{i}",
                ["generator", "--config", cfg, "--set", f"generator.peer_id=gen-{i}", "--set", f"generator.seed={i}"],
            )

    def install_signals(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda s, _f: setattr(self, "stop_signal", s))

    def poll(self) -> tuple[str, int] | None:
        """(name, exit code) when the run is over: the trainer exited, or a generator failed; else None.

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

    def stop_trainer(self) -> None:
        trainer = self.children[0]
        if trainer.proc.poll() is None:
            trainer.proc.send_signal(signal.SIGTERM)  # the trainer checkpoints, then shuts generators down

    def shutdown(self, grace_s: float = 60.0) -> None:
        deadline = time.monotonic() + grace_s
        for c in self.children:
            try:
                c.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                c.proc.terminate()
        for c in self.children:
            try:
                c.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                c.proc.kill()
                c.proc.wait()

    def last_log_line(self, name: str) -> str:
        c = next(c for c in self.children if c.name == name)
        lines = [line for line in c.log.read_text(errors="replace").splitlines() if line.strip()]
        return lines[-1] if lines else "(empty log)"


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
