"""`scalerl train`'s process supervision: one trainer, N generators, the evaluator, one run directory.

What runs where comes from the device plan (cli/device_plan.py): each child's command line and CUDA_VISIBLE_DEVICES
are the plan's, so `scalerl train --dry-run` shows exactly what `start` runs.

Children run in their own sessions so that a terminal's Ctrl-C reaches only this supervisor, which then stops
them all at once: the trainer writes a checkpoint and tells generators why it stops, and the generators stop on
their own signal instead of waiting out a peer timeout. No child outlives the supervisor: each asks the kernel for
SIGTERM when the supervisor dies (kill -9 included) and also watches the supervisor's pid. The trainer shares the
supervisor's run-directory lock (shared/ownership.py), so the run dir stays owned until the last of them exits.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scalerl.shared.ownership import LOCK_FD_ENV, PARENT_ENV, RunLock, die_with_parent
from scalerl.shared.wire.addresses import LOOPBACK_IP, loopback_listener

from .device_plan import Placement

# How long the trainer may take to write its final checkpoint after SIGTERM before it is killed: this much, plus the
# checkpoint's size at a write speed a busy shared file system still gives (an 8B run's ~99 GB: about 8 minutes).
TRAINER_GRACE_S = 60.0
CHECKPOINT_WRITE_BYTES_PER_S = 200e6
# No checkpoint yet: FP32 master weights and AdamW's two moments, 12 bytes a parameter, from bf16 weights' 2.
CHECKPOINT_PER_WEIGHT_BYTE = 6
# Generators and the evaluator only close sockets on SIGTERM.
GENERATOR_GRACE_S = 10.0
# `python -m scalerl.cli.launcher torchrun ARGS`: torchrun that hands the run-dir lock on to its ranks.
TORCHRUN = "torchrun"
# One node's trainer ranks: torchrun's stores, the rendezvous address the ranks get (MASTER_ADDR) and their gloo and
# NCCL sockets stay on loopback (_loopback_stores, torchrun), unless run.allow_remote says the run reaches beyond it.
LOOPBACK_FLAG = f"--local-addr={LOOPBACK_IP}"
# torchrun's own log lines (glog style: W1206 02:11:00.680000 2593 torch/distributed/run.py:874] ...).
_TORCHRUN_LOG = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ torch/")
_TORCHRUN_RANK_PREFIX = re.compile(r"^\[(default)?rank\d+\]:\s*")  # what torch puts before a rank's lines
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StoppedBeforeStart(BaseException):
    """SIGINT or SIGTERM before `scalerl train` started its children. A BaseException, as KeyboardInterrupt is: no
    `except Exception` on the way (a tokenizer load, a config check) may take it for a failure of its own."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def stop_before_start() -> None:
    """SIGINT and SIGTERM raise StoppedBeforeStart until `Supervisor.install_signals` takes them over. Python's
    default would end `scalerl train` without a word (SIGTERM) and leave a half-prepared run dir with no end record,
    which `scalerl status` calls failed; BeforeStart (below) catches it, says so in one line and cleans up."""

    def stop(signum, _frame):
        raise StoppedBeforeStart(signum)

    for sig in STOP_SIGNALS:
        signal.signal(sig, stop)


def stop_reason(signum: int) -> str:
    """The one wording of a stop before the start: `scalerl train`'s line, its status.json and a slurm task's."""
    return f"stopped by {signal.Signals(signum).name} before the run started"


class BeforeStart:
    """`with BeforeStart(stopped) as start:` around everything a start does before its processes run (`scalerl train`
    and each slurm task). In it SIGINT/SIGTERM raise StoppedBeforeStart (stop_before_start); a stop there, or the
    tiny model build's SystemExit(143) (progress.terminate_as_exit turns SIGTERM into it for its own clean-up), calls
    `stopped(signum)`, which says so and exits 128 + signum, with both signals ignored so that a second one cannot
    cut its clean-up short. On leaving, the handlers from before are put back (Python's default_int_handler for
    SIGINT) on every path that does not start the run (--dry-run, an already finished --resume, a bad config, the
    stop itself), unless `hand_over()` said that the caller's own handlers took over."""

    def __init__(self, stopped: Callable[[int], None]):
        self.stopped = stopped
        self.previous: dict[int, Any] = {}
        self.handed_over = False

    def __enter__(self) -> BeforeStart:
        self.previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
        stop_before_start()
        return self

    def hand_over(self) -> None:
        """The caller installed the handlers that stop the started run (Supervisor.install_signals): keep them."""
        self.handed_over = True

    def __exit__(self, _type, exc, _tb) -> None:
        signum: int | None = None
        if isinstance(exc, StoppedBeforeStart):
            signum = exc.signum
        elif isinstance(exc, SystemExit) and exc.code == 128 + signal.SIGTERM:
            signum = signal.SIGTERM
        try:
            if signum is not None:
                for sig in STOP_SIGNALS:
                    signal.signal(sig, signal.SIG_IGN)
                self.stopped(signum)
        finally:
            if not self.handed_over:
                for signum_before, handler in self.previous.items():
                    signal.signal(signum_before, handler)


@dataclass
class Child:
    name: str
    proc: subprocess.Popen
    log: Path


def child_commands(
    config_path: Path,
    placements: list[Placement],
    resume: bool,
    from_scratch: bool,
    loopback: bool = True,
    seed: int = 0,
) -> list[Placement]:
    """Each planned process with its command line and the environment the plan gives it (`--dry-run` prints these;
    `Supervisor.start` runs them). Generator i is gen-i with seed `seed` + i (generator.seed; cli/run_config.py
    generator_seed); a trainer of several ranks runs under torchrun,
    whose sockets stay on loopback when `loopback` (not run.allow_remote)."""
    cfg = str(config_path)
    python = sys.executable
    out = []
    for p in placements:
        if p.role == "trainer":
            resume_flags = ["--resume-from-scratch"] if from_scratch else ["--resume"] if resume else []
            service = ["-m", "scalerl.cli", "trainer", "--config", cfg, *resume_flags]
            argv = [python, *service]
            if p.ranks > 1:
                argv = [python, "-m", "scalerl.cli.launcher", TORCHRUN, "--standalone"]
                argv += [*([LOOPBACK_FLAG] if loopback else []), f"--nproc_per_node={p.ranks}", *service]
        elif p.role == "generator":
            i = int(p.name.removeprefix("gen-"))
            sets = ["--set", f"generator.peer_id={p.name}", "--set", f"generator.seed={seed + i}"]
            argv = [python, "-m", "scalerl.cli", "generator", "--config", cfg, *sets]
        else:
            argv = [python, "-m", "scalerl.cli", "evaluator", "--config", cfg]
        env = {"PYTHONUNBUFFERED": "1", **p.env}
        out.append(dataclasses.replace(p, argv=tuple(argv), env=env))
    return out


# torch.distributed's rendezvous variables (torchrun's, torch.distributed.launch's). Inherited from the shell that
# started `scalerl train` (one started inside a torchrun job, or after an export), they would make its one trainer
# join a process group of another run that never forms, and wait up to its 30-minute timeout without a word. The
# children scalerl starts get none of them: torchrun sets its own for the ranks it starts. SLURM_* stay.
DIST_ENV = frozenset(
    {
        "RANK",
        "WORLD_SIZE",
        "LOCAL_RANK",
        "LOCAL_WORLD_SIZE",
        "GROUP_RANK",
        "GROUP_WORLD_SIZE",
        "ROLE_RANK",
        "ROLE_NAME",
        "ROLE_WORLD_SIZE",
        "MASTER_ADDR",
        "MASTER_PORT",
    }
)
DIST_ENV_PREFIXES = ("TORCHELASTIC_",)


def without_dist_env(env: Mapping[str, str]) -> dict[str, str]:
    """`env` without torch.distributed's rendezvous variables (DIST_ENV)."""
    return {k: v for k, v in env.items() if k not in DIST_ENV and not k.startswith(DIST_ENV_PREFIXES)}


def child_env(base: Mapping[str, str], own: Mapping[str, str], lock_env: Mapping[str, str]) -> dict[str, str]:
    """A child's environment: the caller's without DIST_ENV, then the plan's (CUDA_VISIBLE_DEVICES) and the lock's."""
    return {**without_dist_env(base), **own, **lock_env}


class Supervisor:
    def __init__(self, run_dir: Path, commands: list[Placement], lock: RunLock):
        """`commands`: the plan's processes with their command lines (`child_commands`), the trainer first."""
        self.run_dir = run_dir
        self.lock = lock
        self.children: list[Child] = []
        self.commands = {c.name: c for c in commands}
        self.stop_signal: int | None = None

    def restart(self, name: str) -> None:
        """Start a child again with the same arguments (a crashed generator; the trainer re-issues its work)."""
        old = next(c for c in self.children if c.name == name)
        self.children[self.children.index(old)] = self._start_child(self.commands[name])

    def _start_child(self, cmd: Placement) -> Child:
        log = self.run_dir / "logs" / f"{cmd.name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        lock_env, lock_fds = self.lock.child_env()
        if cmd.ranks > 1:
            # The ranks are torchrun's children, not ours: a parent-pid check would stop them at once. torchrun
            # itself dies with us (die_with_parent) and takes its ranks along.
            lock_env.pop(PARENT_ENV, None)
        env = child_env(os.environ, cmd.env, lock_env)
        with open(log, "a") as stderr:
            proc = subprocess.Popen(
                list(cmd.argv),
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                env=env,
                start_new_session=True,
                preexec_fn=die_with_parent,
                # Only the trainer writes the run dir; generators must not keep the lock alive on their own.
                pass_fds=lock_fds if cmd.role == "trainer" else (),
            )
        return Child(cmd.name, proc, log)

    def start(self) -> None:
        for cmd in self.commands.values():
            self.children.append(self._start_child(cmd))

    def install_signals(self) -> None:
        for sig in STOP_SIGNALS:
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
        it stops (within trainer_grace_s, else SIGKILL). Generators still running then get SIGTERM and
        GENERATOR_GRACE_S. Signals rather than control messages: they reach a child in any state."""
        trainer, gens = self.children[0], self.children[1:]
        if trainer.proc.poll() is None:
            trainer.proc.send_signal(signal.SIGTERM)
        _wait_or_kill([trainer], trainer_grace_s(self.run_dir))
        for c in gens:
            if c.proc.poll() is None:
                c.proc.send_signal(signal.SIGTERM)
        _wait_or_kill(gens, GENERATOR_GRACE_S)

    def first_error(self, name: str) -> str:
        """The child's first error: its one-line `scalerl X: error:` if it printed one, else the exception line that
        ends its first traceback, else its last log line. A failed process's last line is often noise printed on
        the way out (a resource_tracker warning), not the cause."""
        c = next(c for c in self.children if c.name == name)
        return first_error_line(c.log.read_text(errors="replace")) or self.last_log_line(name)

    def last_log_line(self, name: str) -> str:
        """The child's last word: its last log line that is not torchrun's own logging about its ranks."""
        c = next(c for c in self.children if c.name == name)
        lines = [
            line
            for line in c.log.read_text(errors="replace").splitlines()
            if line.strip() and not _TORCHRUN_LOG.match(line) and not line.startswith("torchrun: rank ")
        ]
        return lines[-1] if lines else "(empty log)"


_EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)|[A-Za-z_][\w.]*Error)\b(:.*)?$")


def first_error_line(log: str) -> str | None:
    """The first `scalerl <command>: error: ...` line of a log, else the exception line of its first traceback."""
    lines = log.splitlines()
    for line in lines:
        text = _TORCHRUN_RANK_PREFIX.sub("", line.strip())
        if re.match(r"^scalerl [\w-]+: error: ", text):
            return text
    in_traceback = False
    for line in lines:
        text = _TORCHRUN_RANK_PREFIX.sub("", line.strip())
        if text.startswith("Traceback (most recent call last):"):
            in_traceback = True
        elif in_traceback and not line.startswith((" ", "\t")) and _EXCEPTION_LINE.match(text):
            return text
    return None


def trainer_grace_s(run_dir: Path) -> float:
    """The trainer's SIGTERM grace: long enough to write the checkpoint it writes on the way out. Sized from the
    newest checkpoint in the run dir, else from the model's weights (RUN/config.toml's run.model)."""
    size = 0
    steps = sorted((run_dir / "checkpoints").glob("step-*"))
    if steps:
        size = sum(f.stat().st_size for f in steps[-1].rglob("*") if f.is_file())
    else:
        try:
            model = tomllib.loads((run_dir / "config.toml").read_text()).get("run", {}).get("model", "")
        except (OSError, tomllib.TOMLDecodeError):
            model = ""
        if model and Path(model).is_dir():
            weights = sum(f.stat().st_size for f in Path(model).glob("*.safetensors"))
            size = weights * CHECKPOINT_PER_WEIGHT_BYTE
    return TRAINER_GRACE_S + size / CHECKPOINT_WRITE_BYTES_PER_S


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
    for line in path.read_text(errors="replace").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass  # a line being written right now
    return out


def _loopback_stores() -> None:
    """Make the TCPStore servers torchrun's agent hosts listen on loopback only.

    A TCPStore server listens on every interface whatever host it is given (torch has no option or variable to
    bind it), and --standalone's agent hosts two: the c10d rendezvous store (localhost:0) and the store it shares
    with the ranks (on --local-addr). Anyone who reaches the node could join or read them. Each is handed a socket
    already listening on loopback, as the weight group's rendezvous is (shared/wire/weights/dist.py)."""
    import torch.distributed as dist
    from torch.distributed.elastic.rendezvous import c10d_rendezvous_backend, dynamic_rendezvous

    def tcp_store(host_name, port, *args, **kwargs):
        if kwargs.get("is_master") and kwargs.get("master_listen_fd") is None:
            kwargs["master_listen_fd"], port = loopback_listener(LOOPBACK_IP, port)  # the store owns the fd
        return dist.TCPStore(host_name, port, *args, **kwargs)

    def shared_store_server(self, master_addr, master_port):
        return tcp_store(master_addr, master_port, is_master=True, multi_tenant=True)

    handler_cls = dynamic_rendezvous.DynamicRendezvousHandler
    if not (hasattr(c10d_rendezvous_backend, "TCPStore") and hasattr(handler_cls, "_create_tcp_store_server")):
        # Another torch's internals: patching names it does not use would change nothing, silently.
        print(
            "scalerl torchrun: warning: this torch's torchrun stores cannot be kept on loopback; they listen on "
            "every interface",
            file=sys.stderr,
        )
        return
    c10d_rendezvous_backend.TCPStore = tcp_store  # type: ignore[misc, assignment]
    handler_cls._create_tcp_store_server = shared_store_server  # type: ignore[method-assign]


def torchrun(args: list[str]) -> None:
    """torchrun (torch.distributed.run) whose ranks inherit the supervisor's run-dir lock descriptor.

    torchrun starts its ranks with Popen's default close_fds, so rank 0 would find the lock held by an open file it
    does not share and refuse the run dir as busy. Its rank launcher is given pass_fds for the one descriptor named
    by the lock variable; nothing else of torchrun changes."""
    import functools

    import torch.distributed.elastic.multiprocessing.subprocess_handler.subprocess_handler as handler
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main

    if LOOPBACK_FLAG in args:
        _loopback_stores()
        # The ranks' own sockets: gloo's pairs and NCCL's bootstrap listen on the interface these name, else on the
        # address the hostname resolves to (the node's, on most clusters), or on whatever a job's environment set.
        os.environ.update(GLOO_SOCKET_IFNAME="lo", NCCL_SOCKET_IFNAME="lo")
    raw = os.environ.get(LOCK_FD_ENV, "")
    if raw.isdigit():
        handler.Popen = functools.partial(subprocess.Popen, pass_fds=(int(raw),))  # type: ignore[misc, assignment]
    try:
        main(args)
    except ChildFailedError as e:
        # The failed rank said why in this log already; torchrun's traceback and report would bury that line, and
        # its exit code 1 would hide a rank's 2 (bad input), which `scalerl train` passes on.
        rank, failure = e.get_first_failure()
        print(f"torchrun: rank {rank} exited with code {failure.exitcode}", file=sys.stderr)
        sys.exit(failure.exitcode if failure.exitcode > 0 else 1)


if __name__ == "__main__":
    if sys.argv[1:2] != [TORCHRUN]:
        sys.exit(f"usage: python -m scalerl.cli.launcher {TORCHRUN} TORCHRUN-ARGS")
    torchrun(sys.argv[2:])
