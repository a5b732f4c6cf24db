"""The trainer service: rank 0 drives the RL loop, other ranks follow its batches.

Rank 0 binds every socket, asks generators for groups of samples (PipelineRL-k or the PPO-style off-policy
baseline), trains on complete groups, publishes each new policy version, evaluates, and writes metrics.jsonl
and checkpoints (docs/run-dir.md). SIGTERM / SIGINT write a checkpoint and stop; SIGUSR1 writes one and goes on
(slurm's preemption warning).
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections import deque
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from transformers.utils import logging as transformers_logging

from scalerl.shared.chat import format_task
from scalerl.shared.errors import Throttle, one_line
from scalerl.shared.messages import Error, GenerationRequest, Ready, Rollout, SamplingParams, Shutdown
from scalerl.shared.ownership import RunLock, ensure_secret, parent_gone, read_secret
from scalerl.shared.run_dir import MetricsLog, check_fresh
from scalerl.shared.tasks import load_task
from scalerl.shared.tiny_model import ensure_tiny_model, load_model_dir
from scalerl.shared.transport import ControlServer, PullEndpoint, PushEndpoint
from scalerl.shared.weight_sync import ZmqWeightSender

from .batch import batch_stats, build_batch
from .checkpoint import resume_checkpoint, save_checkpoint
from .collector import GroupCollector
from .config import TrainerConfig
from .evaluation import Evaluator
from .loss import LossConfig
from .prompt_pipeline import PromptPipelineConfig, PromptScheduler
from .step import broadcast_batch, make_optimizer, train_step, world

log = logging.getLogger("scalerl.trainer")

EXIT_OK, EXIT_FAILURE, EXIT_SIGINT, EXIT_SIGTERM = 0, 1, 130, 143
CMD_STOP, CMD_TRAIN = 0, 1


class TrainerError(RuntimeError):
    """A failure the trainer reports on one line (a dead generator, a mismatched run directory)."""


def init_distributed() -> tuple[int, int]:
    """torchrun sets RANK/WORLD_SIZE; a single process runs without a process group."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size > 1 and not dist.is_initialized():
        dist.init_process_group("gloo" if not torch.cuda.is_available() else "nccl")
    return world()


class _Signals:
    def __init__(self):
        self.stop: int | None = None
        self.checkpoint_now = False
        for sig, code in ((signal.SIGTERM, EXIT_SIGTERM), (signal.SIGINT, EXIT_SIGINT)):
            signal.signal(sig, lambda *_, c=code: setattr(self, "stop", c))
        signal.signal(signal.SIGUSR1, lambda *_: setattr(self, "checkpoint_now", True))


def run_trainer(cfg: TrainerConfig, resume: bool = False, from_scratch: bool = False) -> int:
    """`from_scratch`: resume, but start over at step 0 when no checkpoint verifies instead of refusing."""
    resume = resume or from_scratch
    if int(os.environ.get("RANK", "0")) == 0:  # rank 0 writes the run dir: it must own it, before anything else
        RunLock.acquire(Path(cfg.run_dir), "scalerl trainer")  # held until this process exits
    check_fresh(Path(cfg.run_dir), resume)
    transformers_logging.disable_progress_bar()  # one-line logs in slurm files, not progress bars
    torch.set_num_threads(cfg.threads)
    rank, size = init_distributed()
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    task = load_task(cfg.task)
    model_dir = Path(cfg.model) if cfg.model else ensure_tiny_model(task=cfg.task)
    model, tokenizer = load_model_dir(model_dir)
    task = format_task(task, tokenizer, cfg.task)  # the chat template: what every request and evaluation tokenises
    optimizer, scheduler = make_optimizer(model, cfg.optim)
    loss_cfg = LossConfig(kind=cfg.loss.kind, aggregation=cfg.loss.aggregation, cispo_eps_max=cfg.loss.cispo_eps_max)
    run_dir = Path(cfg.run_dir)
    ckpt_root = run_dir / "checkpoints"
    step = 0
    state: dict = {}  # what save_checkpoint stored, from the json: lr_scheduler, prompts, gpu_hours, time_s
    if resume:
        got = resume_checkpoint(ckpt_root, model, optimizer, from_scratch=from_scratch, tidy=rank == 0)
        step, state = got.step, got.state
        if got.path is not None:
            scheduler.load_state_dict(state["lr_scheduler"])
        else:  # starting over: the old lines describe training that no checkpoint holds any more
            resume = False
            if rank == 0:
                MetricsLog.truncate_after(run_dir / "metrics.jsonl", -1)
    if rank != 0:
        return _follow(model, optimizer, scheduler, loss_cfg, cfg)
    loop = None
    try:
        loop = _Loop(cfg, model, tokenizer, task, model_dir, optimizer, scheduler, loss_cfg, step, state, resume)
        return loop.run()
    finally:
        if loop is not None:
            loop.close()
        if size > 1:  # followers wait on rank 0's next command, whatever ended the loop
            _broadcast_cmd(CMD_STOP)


def _broadcast_cmd(cmd: int) -> int:
    t = torch.tensor([cmd], dtype=torch.long)
    dist.broadcast(t, 0)
    return int(t.item())


def _follow(model, optimizer, scheduler, loss_cfg, cfg) -> int:
    # torchrun signals every rank; rank 0 checkpoints and then broadcasts the stop, so followers wait for it.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
    while _broadcast_cmd(0) == CMD_TRAIN:
        batch = broadcast_batch(None)
        train_step(model, optimizer, scheduler, batch, loss_cfg, cfg)
    return EXIT_OK


class _Loop:
    """Rank 0's state between steps; one instance per process."""

    def __init__(self, cfg, model, tokenizer, task, model_dir, optimizer, scheduler, loss_cfg, step, state, resume):
        self.cfg, self.model, self.tokenizer, self.task = cfg, model, tokenizer, task
        self.optimizer, self.scheduler, self.loss_cfg = optimizer, scheduler, loss_cfg
        self.step = step
        self.run_dir = Path(cfg.run_dir)
        metrics_path = self.run_dir / "metrics.jsonl"
        if resume:
            for problem in MetricsLog.check(metrics_path, step, cfg.eval_every) if step > 0 else []:
                log.warning("resume: %s", problem)
            # Steps after the checkpoint are redone, not duplicated; from a step-0 checkpoint the first
            # evaluation is redone too, so its old line goes as well.
            MetricsLog.truncate_after(metrics_path, step if step > 0 else -1)
        self.metrics = MetricsLog(metrics_path)
        self.items = {item.id: item for item in task.train_items}
        self.prompts = PromptScheduler(
            list(self.items),
            PromptPipelineConfig(
                seed=cfg.seed,
                no_positive_resampling=cfg.no_positive_resampling,
                npr_threshold=cfg.npr_threshold,
                min_live=cfg.npr_min_live,
            ),
        )
        if state.get("prompts"):
            self.prompts.load_state_dict(state["prompts"])
        self.gpu_hours_base = float(state.get("gpu_hours", 0.0))
        self.time_base = float(state.get("time_s", 0.0))
        self.t0 = time.monotonic()
        self.n_processes = cfg.n_generators + world()[1]
        # On a CPU-only run each process counts as one device; every metrics line says which it was.
        self.device = "cuda" if torch.cuda.is_available() else "cpu-process"
        self.collector = GroupCollector()
        self.signals = _Signals()
        self.evaluator = Evaluator(
            model_dir,
            tokenizer,
            task,
            cfg.eval_prompts,
            cfg.eval_k,
            cfg.eval_temperature,
            cfg.max_new_tokens,
            cfg.loss.fp32_lm_head,
        )
        remote = cfg.allow_remote  # binding beyond loopback only when the config says so
        self.requests = PushEndpoint(cfg.request_addr, bind=True, allow_remote=remote)
        self.rollouts = PullEndpoint(cfg.rollout_addr, bind=True, accept=(Rollout,), allow_remote=remote)
        secret = cfg.secret_file or str(ensure_secret(self.run_dir))
        self.control = ControlServer(cfg.control_addr, allow_remote=remote, token=read_secret(secret))
        self.weights = ZmqWeightSender(cfg.weights_addr, allow_remote=remote)
        # The generator scores with this spec; "spec|delimiter" makes it verify only the final answer.
        self.verifier_spec = f"{task.verifier}|{task.delimiter}" if task.delimiter else task.verifier
        self.n_issued = 0
        self.stale_dropped = 0
        self.reissued = 0
        self.timed_out = 0  # groups not back within group_timeout: issued again once, then dropped
        self.dropped = 0
        self.refused = 0  # requests a generator refused (e.g. prompt + max_new_tokens over its max_seq_len)
        self.group_timeout_s = cfg.group_timeout_s or 120.0 + 0.05 * cfg.max_new_tokens
        self.backlog: deque[GenerationRequest] = deque()  # built but not yet taken by any generator's socket
        self.end_reason = "trainer finished"
        self.refusal_log = Throttle()
        self.ready_seen: set[str] = set()
        self.resumed = resume

    # -- accounting -------------------------------------------------------------------------------------------
    def time_s(self) -> float:
        return self.time_base + time.monotonic() - self.t0

    def gpu_hours(self) -> float:
        # devices x wall hours over every process; on CPU each process counts as one device.
        hours = (time.monotonic() - self.t0) / 3600.0
        return self.gpu_hours_base + hours * self.n_processes * self.cfg.devices_per_process

    def _record(self, kind: str, **values) -> None:
        self.metrics.write(
            {
                "kind": kind,
                "step": self.step,
                "gpu_hours": self.gpu_hours(),
                "time_s": self.time_s(),
                "devices": self.n_processes * self.cfg.devices_per_process,
                "device": self.device,
                **values,
            }
        )

    # -- generation -------------------------------------------------------------------------------------------
    def _issue(self, n_groups: int) -> None:
        self._issue_prompts(self.prompts.next_prompts(n_groups))

    def _issue_prompts(self, prompt_ids: list[str], attempt: int = 1) -> None:
        cfg = self.cfg
        sampling = SamplingParams(temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens)
        for prompt_id in prompt_ids:
            item = self.items[prompt_id]
            group_id = f"g{self.n_issued}"
            self.n_issued += 1
            self.backlog.append(
                GenerationRequest(
                    group_id=group_id,
                    prompt_ids=np.asarray(self.tokenizer(item.prompt).input_ids, dtype=np.int32),
                    n_samples=cfg.samples_per_prompt,
                    sampling=sampling,
                    prompt_index=self.n_issued,
                    item_id=item.id,
                    verifier=self.verifier_spec,
                    answer=item.answer,
                )
            )
            self.collector.issued(group_id, prompt_id, self.step, cfg.samples_per_prompt, attempt)
        self._send_backlog()

    def _send_backlog(self) -> None:
        """Hand queued requests to the generators' socket without ever blocking: a dead or full generator must not
        stall the loop, or neither signals nor peer_timeout_s could take effect. What does not go now goes on a
        later poll; the group's deadline runs from when it was issued either way."""
        while self.backlog:
            try:
                self.requests.send(self.backlog[0], timeout_ms=0)
            except TimeoutError:
                return
            self.backlog.popleft()

    def _poll(self, timeout_ms: int) -> None:
        self._send_backlog()
        r = self.rollouts.recv(timeout_ms=timeout_ms)
        while r is not None:
            self.collector.add(r)
            r = self.rollouts.recv(timeout_ms=0)
        got = self.control.recv(timeout_ms=0)  # heartbeats are book-kept by the server itself
        while got is not None:
            peer, msg = got
            if isinstance(msg, Ready):
                self._on_ready(peer)
            elif isinstance(msg, Error) and msg.code == "bad_request" and msg.group_id:
                self._on_refused(peer, msg)
            got = self.control.recv(timeout_ms=0)
        self._expire_groups()
        if parent_gone():
            log.warning("scalerl train (the parent process) is gone; checkpointing and stopping")
            self.signals.stop = EXIT_SIGTERM
        dead = self.control.dead_peers(self.cfg.peer_timeout_s)
        if dead:
            raise TrainerError(
                f"generator {', '.join(sorted(dead))} stopped answering (no heartbeat for "
                f"{self.cfg.peer_timeout_s:g} s)"
            )

    def _on_ready(self, peer: str) -> None:
        """A second Ready from a known generator: it restarted (e.g. `scalerl train` revived it after a crash)
        and lost what it was generating. Those groups are asked for again; late answers to the old ones are
        dropped as unknown."""
        if peer not in self.ready_seen:
            self.ready_seen.add(peer)
            return
        lost = self.collector.reissue_all()
        log.warning("generator %s restarted; re-issuing %d unfinished group(s)", peer, len(lost))
        self.reissued += len(lost)
        self._issue_prompts(lost)

    def _on_refused(self, peer: str, msg: Error) -> None:
        """A generator will never answer this group: drop it and its prompt (asking again would fail the same way)."""
        group = self.collector.drop(msg.group_id)
        if group is None:
            return
        self.refused += 1
        self.prompts.drop(group.prompt_id)
        now, held = self.refusal_log.allow()
        if now:
            more = f" ({held} more since the last warning)" if held else ""
            log.warning(
                "%s refused group %s (prompt %s), dropped: %s%s", peer, msg.group_id, group.prompt_id, msg.message, more
            )

    def _expire_groups(self) -> None:
        for g in self.collector.expired(self.group_timeout_s):
            self.timed_out += 1
            if g.attempt == 1:
                log.warning("prompt %s: no answer after %.0f s; issuing it again", g.prompt_id, self.group_timeout_s)
                self._issue_prompts([g.prompt_id], attempt=2)
            else:
                self.dropped += 1
                log.warning("prompt %s: no answer after a second try; dropped", g.prompt_id)

    def _wait_for_groups(self, n: int) -> bool:
        """Block until n complete groups are ready (or every issued group is back or given up); False if a stop
        signal came first."""
        while len(self.collector.ready) < n and (self.collector.pending or self.backlog):
            if self.signals.stop is not None:
                return False
            self._poll(50)
        return self.signals.stop is None

    def _wait_for_generators(self) -> bool:
        """Block until every generator said Ready, watching signals; False if a stop signal came first."""
        deadline = time.monotonic() + self.cfg.peer_timeout_s
        while True:
            try:
                self.control.wait_for_peers(self.cfg.n_generators, timeout_s=0.1)
                return True
            except TimeoutError:
                pass
            if self.signals.stop is not None or parent_gone():
                return False
            if time.monotonic() > deadline:
                raise TrainerError(
                    f"{len(self.control.peers)} of {self.cfg.n_generators} generator(s) ready after "
                    f"{self.cfg.peer_timeout_s:g} s (peer_timeout_s); see their logs"
                )

    # -- training ---------------------------------------------------------------------------------------------
    def _publish(self) -> None:
        self.weights.publish({k: v.detach() for k, v in self.model.state_dict().items()}, self.step)

    def _evaluate(self) -> None:
        result = self.evaluator.run({k: v.detach() for k, v in self.model.state_dict().items()}, self.step)
        self._record("eval", **result)
        log.info("step %d: held-out pass rate %.3f (%d samples)", self.step, result["pass_rate"], result["n_samples"])

    def _train_on(self, taken) -> None:
        cfg = self.cfg
        groups, fresh = [], []
        for _, g in taken:
            rollouts = [g.samples[i] for i in range(g.n_samples)]
            oldest = (
                min(int(r.versions.min()) for r in rollouts if len(r.versions))
                if any(len(r.versions) for r in rollouts)
                else self.step
            )
            if self.step - oldest > cfg.max_off_policy:  # PipelineRL-k bound: never train on it
                self.stale_dropped += 1
                continue
            groups.append(rollouts)
            fresh.append(g)
        for g, rollouts in zip(fresh, groups):
            self.prompts.record(g.prompt_id, float(np.mean([r.reward > 0.5 for r in rollouts])))
        stats = batch_stats(groups, self.step) if groups else {}
        batch, n_zero = build_batch(groups, cfg.loss.adv_norm, cfg.loss.zero_variance_filter) if groups else (None, 0)
        train = {"loss": 0.0, "skipped": True}
        if batch is not None:
            if world()[1] > 1:
                _broadcast_cmd(CMD_TRAIN)
                broadcast_batch(batch)
            train = train_step(
                self.model,
                self.optimizer,
                self.scheduler,
                batch,
                self.loss_cfg,
                cfg,
            )
        self.step += 1
        self._publish()
        self._record(
            "train",
            **train,
            **stats,
            zero_variance_frac=n_zero / max(len(groups), 1),
            groups=len(groups),
            stale_dropped=self.stale_dropped,
            reissued=self.reissued,
            timed_out=self.timed_out,
            dropped=self.dropped,
            refused=self.refused,
            npr_retired=self.prompts.n_retired,
            epoch=self.prompts.epoch,
            rejected_messages=self.rollouts.n_rejected,
        )
        log.info(
            "step %d: loss %.4f reward %.3f staleness %.2f",
            self.step,
            train.get("loss", 0.0),
            stats.get("reward_mean", float("nan")),
            stats.get("staleness_mean", float("nan")),
        )

    def _after_step(self) -> None:
        cfg = self.cfg
        if self.step % cfg.eval_every == 0 or self.step == cfg.max_steps:
            self._evaluate()
        if self.step % cfg.checkpoint_every == 0 or self.signals.checkpoint_now:
            self.checkpoint()
            self.signals.checkpoint_now = False

    def checkpoint(self) -> None:
        state = {
            "prompts": self.prompts.state_dict(),
            "lr_scheduler": self.scheduler.state_dict(),
            "gpu_hours": self.gpu_hours(),
            "time_s": self.time_s(),
        }
        save_checkpoint(
            self.run_dir / "checkpoints", self.step, self.model, self.optimizer, state, keep=self.cfg.keep_checkpoints
        )
        log.info("checkpoint at step %d", self.step)

    # -- the loop ---------------------------------------------------------------------------------------------
    def run(self) -> int:
        try:
            code = self._run()
        except TrainerError as e:
            self.end_reason = f"trainer failed: {one_line(e)}"
            self.checkpoint()  # the work so far survives whatever killed a peer
            raise
        except BaseException as e:
            self.end_reason = f"trainer failed: {type(e).__name__}: {one_line(e)}"
            raise
        if self.signals.stop is not None:
            self.end_reason = f"trainer stopped by {signal.Signals(self.signals.stop - 128).name}"
        return code

    def _run(self) -> int:
        cfg = self.cfg
        if not self._wait_for_generators():
            self.end_reason = "trainer stopped before it started"
            return self.signals.stop or EXIT_SIGTERM
        self._publish()  # generators start from the base model; after a resume they need the trained one
        if not self.resumed or self.step == 0:
            self._evaluate()
        batch = cfg.prompts_per_step
        while self.step < cfg.max_steps and self.signals.stop is None:
            if cfg.mode == "pipeline":
                # k batches in flight: a group issued at version v is trained by step v + k at the latest.
                ahead = batch * cfg.max_off_policy
                if self.collector.outstanding < ahead:
                    self._issue(ahead - self.collector.outstanding)
                if not self._wait_for_groups(batch):
                    break
                self._train_on(self.collector.take(batch))
                self._after_step()
            else:  # ppo_off_policy: k batches from one policy, then k updates
                k = min(cfg.max_off_policy, cfg.max_steps - self.step)
                self._issue(batch * k)
                if not self._wait_for_groups(batch * k):
                    break
                for _ in range(k):
                    self._train_on(self.collector.take(batch))
                    self._after_step()
                    if self.signals.stop is not None:
                        break
        if self.signals.stop is not None:
            self.checkpoint()
            return self.signals.stop
        if self.step % cfg.checkpoint_every != 0:
            self.checkpoint()
        return EXIT_OK

    def close(self) -> None:
        try:
            self.control.broadcast(Shutdown(reason=self.end_reason))
            time.sleep(0.2)  # linger=0 drops unsent messages: give the shutdown a moment to leave
        finally:
            for ep in (self.requests, self.rollouts, self.control, self.weights):
                ep.close()
            self.metrics.close()
