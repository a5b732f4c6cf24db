"""The trainer service: rank 0 drives the RL loop, other ranks follow its orders.

Rank 0 binds every socket, asks generators for groups of samples (PipelineRL-k or the PPO-style off-policy
baseline), trains on complete groups, publishes each new policy version, evaluates, and writes metrics.jsonl
and checkpoints (docs/run-dir.md). SIGTERM / SIGINT write a checkpoint and stop; SIGUSR1 writes one and goes on
(slurm's preemption warning).

`run_trainer` builds the parts (trainer_service/components: Sockets, Pulse, Dispatcher, Ledger, Checkpointer,
Signals, Commands, and the evaluation, inline or in a process) and hands them to the `Trainer`, whose `_run` is the
loop body. Other ranks run `_follow`: they train, checkpoint and gather when rank 0 says so.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from transformers.utils import logging as transformers_logging

from scalerl.shared.errors import ThrottledWarning, one_line
from scalerl.shared.eval_config import EvalConfig
from scalerl.shared.models.tiny_model import ensure_tiny_model, load_model_dir
from scalerl.shared.run_dir import MetricsLog, check_fresh
from scalerl.shared.tasks.catalog import Task, TaskMix, load_task, task_label
from scalerl.shared.tasks.chat import format_task
from scalerl.shared.wire.messages import Shutdown
from scalerl.shared.wiring import RunWiring

from .batch import batch_stats, build_batch
from .collector import IssuedGroup
from .components import Checkpointer, Command, Commands, Dispatcher, Ledger, Signals, Sockets
from .components.commands import is_sharded
from .components.dispatcher import PeerError
from .components.signals import EXIT_SIGTERM
from .config import TrainerConfig
from .evaluation import Evaluation, InlineEvaluation, ProcessEvaluation
from .loss import LossConfig
from .moe import is_moe, moe_shape
from .parallel import Dist, check_choices, full_state_dict, init_distributed, shard_model
from .publisher import Publisher
from .step import broadcast_batch, make_optimizer, trainer_step

log = logging.getLogger("scalerl.trainer")

EXIT_OK = 0
# The run fails once this many group timeouts have passed since its last step (or its start) without a usable group
# (none came back, or only stale or invalid ones) while its generators stay connected: a hung engine heartbeats.
STALL_GROUP_TIMEOUTS = 5
# A stop by signal waits this long for the evaluator's pending answers: a stopped run must exit within seconds
# (slurm kills 30 s after its SIGTERM by default), and a lost answer for the checkpoint step is redone on resume.
EVAL_WAIT_ON_STOP_S = 3.0


def run_trainer(
    cfg: TrainerConfig, wiring: RunWiring, evaluation: EvalConfig, resume: bool = False, from_scratch: bool = False
) -> int:
    """`evaluation`: the run's [eval] section, received beside [trainer] and [wiring]. `from_scratch`: resume, but
    start over at step 0 when no checkpoint verifies instead of refusing.

    Rank 0's caller must hold the run dir's lock (`scalerl trainer` takes it before importing torch)."""
    resume = resume or from_scratch
    run_dir = Path(cfg.run_dir)
    check_fresh(run_dir, resume)
    transformers_logging.disable_progress_bar()  # one-line logs in slurm files, not progress bars
    torch.set_num_threads(cfg.threads)
    par = init_distributed(cfg)  # devices and process groups (trainer_service/parallel.py)
    rank, size = par.rank, par.world
    check_choices(cfg, par)  # attention and gradient reduce: refused here, before the model loads
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    tasks = [load_task(t) for t in cfg.task_configs()]
    # A multi-task run starts from the addition tiny model, as the generators do (cli/run_config.py tiny_task).
    model_dir = Path(cfg.model) if cfg.model else ensure_tiny_model(task=cfg.warm_start_task())
    model, tokenizer = load_model_dir(model_dir, attn_implementation=cfg.attn_implementation)
    if cfg.router_replay and not is_moe(model):
        raise ValueError(f"router_replay needs a mixture-of-experts model; {type(model).__name__} is dense")
    # The chat template: what every request and evaluation tokenises.
    tasks = [format_task(t, tokenizer, c) for t, c in zip(tasks, cfg.task_configs())]
    task: Task | TaskMix = (
        TaskMix([(task_label(c), c.weight, t) for t, c in zip(tasks, cfg.tasks)]) if cfg.multi_task else tasks[0]
    )
    shard_model(model, par, cfg)  # in place: FSDP2 when several ranks or CUDA; the optimizer sees the shards
    optimizer, scheduler = make_optimizer(model, cfg.optim)
    loss_cfg = cfg.loss
    commands = Commands.create()
    checkpointer = Checkpointer(
        run_dir / "checkpoints",
        model,
        optimizer,
        scheduler,
        model_dir=model_dir,
        keep=cfg.keep_checkpoints,
        group=commands.group,
        rank=rank,
    )
    step, state = 0, {}
    if resume:
        got = checkpointer.resume(from_scratch)
        step, state = got.step, got.state
        if got.path is None:  # starting over: the old lines describe training that no checkpoint holds any more
            resume = False
            if rank == 0:
                MetricsLog.truncate_after(run_dir / "metrics.jsonl", -1)
    if rank != 0:
        return _follow(model, optimizer, scheduler, loss_cfg, cfg, wiring, commands, checkpointer, par)
    trainer = None
    try:
        signals = Signals().install()
        ledger = Ledger.open(cfg, wiring, evaluation, size, step, state, resumed=resume)
        # Process mode: the evaluator talks over the control socket, which Trainer.build binds.
        inline = evaluation.mode == "inline"
        evaluator = InlineEvaluation(evaluation, cfg, model_dir, tokenizer, task) if inline else None
        trainer = Trainer.build(
            cfg,
            wiring,
            evaluation,
            task=task,
            tokenizer=tokenizer,
            model=model,
            optimizer=optimizer,
            scheduler=scheduler,
            loss_cfg=loss_cfg,
            signals=signals,
            ledger=ledger,
            evaluator=evaluator,
            checkpointer=checkpointer,
            commands=commands,
            par=par,
            step=step,
            state=state,
            resumed=resume,
        )
        return trainer.run()
    finally:
        if trainer is not None:
            trainer.close()
        try:  # followers wait on rank 0's next order, whatever ended the loop
            commands.send(Command.STOP)
        except Exception as e:  # a follower that failed too (e.g. the same full disk) is gone already
            log.warning("could not tell the other ranks to stop: %s", one_line(e))


def _follow(
    model,
    optimizer,
    scheduler,
    loss_cfg,
    cfg: TrainerConfig,
    wiring: RunWiring,
    commands: Commands,
    checkpointer: Checkpointer,
    par: Dist,
) -> int:
    Signals.ignore_stops()  # torchrun signals every rank; rank 0 checkpoints and then orders the stop
    follower = Publisher(wiring, dist.get_rank(), None)
    while True:
        cmd, arg = commands.receive()
        if cmd == Command.STOP:
            return EXIT_OK
        if cmd == Command.TRAIN:
            batch = broadcast_batch(None, par.device, par.cpu_group)
            trainer_step(model, optimizer, scheduler, batch, cfg)
        elif cmd == Command.CHECKPOINT:
            checkpointer.save(arg, {})  # rank 0 writes state.json
        elif cmd == Command.GATHER:
            full_state_dict(model)  # rank 0 keeps the result
        elif cmd == Command.PUBLISH:
            follower.publish(model, arg)  # rank 0 sends what the gathers assemble


def _vocab_size(model: torch.nn.Module) -> int | None:
    """Rows of the policy's input embedding: token ids at or past it cannot be trained on (None: not known)."""
    get = getattr(model, "get_input_embeddings", None)
    embedding = get() if callable(get) else None
    rows = getattr(embedding, "num_embeddings", None)
    return rows if isinstance(rows, int) and rows > 0 else None


@dataclass(kw_only=True, eq=False)
class Trainer:
    """Rank 0's loop. The parts are built by `run_trainer` (or `build`); the loop body is `_run`."""

    cfg: TrainerConfig
    evaluation: EvalConfig
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    loss_cfg: LossConfig
    sockets: Sockets
    dispatcher: Dispatcher
    evaluator: Evaluation
    checkpointer: Checkpointer
    ledger: Ledger
    signals: Signals
    commands: Commands
    par: Dist
    step: int = 0
    resumed: bool = False
    stale_dropped: int = 0
    end_reason: str = "trainer finished"
    # A step with no group to train on is not taken; while it waits, one line every 30 s says why.
    empty_log: ThrottledWarning = field(default_factory=lambda: ThrottledWarning(log))
    # The stall limit's clock: when the last step's work (its publish, evaluation, checkpoint) ended, or the loop began.
    # Set at a step's start it counted that work as waiting, and a long evaluation failed the next empty pass at once.
    last_usable: float | None = None

    @classmethod
    def build(
        cls,
        cfg: TrainerConfig,
        wiring: RunWiring,
        evaluation: EvalConfig,
        *,
        task: Task | TaskMix,
        tokenizer,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        loss_cfg: LossConfig,
        signals: Signals,
        ledger: Ledger,
        evaluator: Evaluation | None,
        checkpointer: Checkpointer,
        commands: Commands,
        par: Dist,
        step: int,
        state: dict,
        resumed: bool,
    ) -> Trainer:
        """Bind the sockets and start the dispatcher where a checkpoint's `state` left the prompt pipeline."""
        if cfg.debug_startup_sleep_s:  # tests only: a load or resume as slow as a large model's, before binding
            time.sleep(cfg.debug_startup_sleep_s)
        sockets = Sockets.bind(cfg, wiring)
        try:
            dispatcher = Dispatcher(
                cfg,
                task,
                tokenizer,
                sockets,
                signals,
                wiring.n_generators,
                evaluator=evaluation.mode == "process",
                vocab_size=_vocab_size(model),
                moe=moe_shape(model) if is_moe(model) else (),
            )
            if state.get("prompts"):
                dispatcher.prompts.load_state_dict(state["prompts"])
            dispatcher.version = step
            if evaluator is None:  # eval.mode "process": its weight channel is bound with the other sockets
                evaluator = ProcessEvaluation(wiring, lambda msg: sockets.control.send("evaluator", msg), sockets.key)
        except BaseException:
            sockets.close()
            raise
        return cls(
            cfg=cfg,
            evaluation=evaluation,
            model=model,
            optimizer=optimizer,
            scheduler=scheduler,
            loss_cfg=loss_cfg,
            sockets=sockets,
            dispatcher=dispatcher,
            evaluator=evaluator,
            checkpointer=checkpointer,
            ledger=ledger,
            signals=signals,
            commands=commands,
            par=par,
            step=step,
            resumed=resumed,
        )

    # -- weights --------------------------------------------------------------------------------------------------
    def _weights(self) -> dict[str, torch.Tensor]:
        """The full weights on rank 0; a sharded model assembles them with every rank (a collective)."""
        if is_sharded(self.model):
            self.commands.send(Command.GATHER)
        return full_state_dict(self.model)

    def _publish(self) -> None:
        if is_sharded(self.model):  # the publisher gathers tensor by tensor, with every rank
            self.commands.send(Command.PUBLISH, self.step)
        self.sockets.weights.publish(self.model, self.step)

    def _evaluate(self) -> None:
        # Inline: scored now (one eval line per task of a multi-task run). Process: handed to the evaluator with the
        # clock of this step, which its line will carry; training goes on.
        if isinstance(self.evaluator, ProcessEvaluation):  # streamed as an update is: no full FP32 copy anywhere
            if is_sharded(self.model):  # the other ranks join the gathers as for a publish
                self.commands.send(Command.PUBLISH, self.step)
            weights = self.sockets.weights.stream(self.model)
            self.evaluator.request(weights, self.step, self.ledger.record, self.ledger.clock())
        else:
            self.evaluator.request(self._weights(), self.step, self.ledger.record, self.ledger.clock())

    def _take_eval_results(self) -> None:
        for msg in self.dispatcher.eval_results:
            self.evaluator.on_result(msg, self.ledger.record)
        self.dispatcher.eval_results.clear()

    def _wait_for_evaluations(self, timeout_s: float | None) -> None:
        """At the end: the evaluator's last answers (a dead evaluator ends the wait as a dead peer)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        if self.evaluator.pending:
            log.info("waiting for %d evaluation(s) from the evaluator", len(self.evaluator.pending))
        while self.evaluator.pending and (deadline is None or time.monotonic() < deadline):
            self.dispatcher.poll(50)
            self._take_eval_results()
            if deadline is None and self.signals.stop is not None:
                deadline = time.monotonic() + EVAL_WAIT_ON_STOP_S
        if self.evaluator.pending:
            log.warning("stopping without the evaluation of step(s) %s", sorted(self.evaluator.pending))

    def checkpoint(self) -> None:
        self.commands.send(Command.CHECKPOINT, self.step)
        self.checkpointer.save(self.step, {"prompts": self.dispatcher.prompts.state_dict(), **self.ledger.clock()})

    # -- training -------------------------------------------------------------------------------------------------
    def _train_on(self, taken: list[tuple[str, IssuedGroup]]) -> bool:
        """One step on the groups taken; False, with no step taken, when none is left to train on."""
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
            self.dispatcher.prompts.record(g.prompt_id, float(np.mean([r.reward > 0.5 for r in rollouts])))
        if not groups:
            # A step on nothing would publish the same weights as a new version and write a train line without a
            # reward (nan in the log, a hole in every curve). The loop issues new groups instead and the wait says so;
            # no generator left and the invalid-rollout streak still end a run that can never step (PeerError).
            self._note_empty(len(taken))
            return False
        stats = batch_stats(groups, self.step)
        # All groups of zero variance (every sample solved, or none) still make a step: their rewards are real, and
        # ScaleRL leaves such groups out of the loss rather than sampling more to refill the batch.
        batch, n_zero = build_batch(groups, cfg.loss.adv_norm, cfg.loss.zero_variance_filter)
        if cfg.debug_step_sleep_s:  # tests only: a step as slow as a large model's, to test liveness
            time.sleep(cfg.debug_step_sleep_s)
        train = {"loss": 0.0, "skipped": True}
        if batch is not None:
            self.commands.send(Command.TRAIN)
            batch = broadcast_batch(batch, self.par.device, self.par.cpu_group)
            train = trainer_step(self.model, self.optimizer, self.scheduler, batch, cfg)
        self.step += 1
        self.dispatcher.version = self.step
        self._publish()
        self.ledger.record(
            "train",
            self.step,
            **train,
            **stats,
            zero_variance_frac=n_zero / len(groups),
            groups=len(groups),
            stale_dropped=self.stale_dropped,
            **self.dispatcher.counters(),
        )
        log.info(
            "step %d: loss %.4f reward %.3f staleness %.2f",
            self.step,
            train.get("loss", 0.0),
            stats["reward_mean"],
            stats["staleness_mean"],
        )
        return True

    def _note_empty(self, n_taken: int) -> None:
        d = self.dispatcher
        waited = time.monotonic() - (self.last_usable or time.monotonic())
        if waited > STALL_GROUP_TIMEOUTS * d.group_timeout_s:
            # Generators that heartbeat but never answer (a hung engine) would otherwise keep the run waiting for ever.
            raise PeerError(
                f"no usable group came back for {waited:.0f} s ({STALL_GROUP_TIMEOUTS} x group_timeout_s="
                f"{d.group_timeout_s:g} s) with generators connected: timed_out {d.timed_out}, dropped "
                f"{d.dropped}, refused {d.refused}, invalid_rollouts {d.collector.n_invalid}, stale_dropped "
                f"{self.stale_dropped}; see the generators' logs"
            )
        if n_taken:
            self.empty_log(
                "step %d: all %d group(s) came back more than max_off_policy=%d versions old (stale_dropped %d); "
                "not a step: waiting for fresh ones",
                self.step + 1,
                n_taken,
                self.cfg.max_off_policy,
                self.stale_dropped,
            )
        else:
            self.empty_log(
                "step %d: no group came back within group_timeout_s=%g s (so far timed_out %d, dropped %d, refused "
                "%d, invalid_rollouts %d); not a step: waiting for the groups issued again",
                self.step + 1,
                d.group_timeout_s,
                d.timed_out,
                d.dropped,
                d.refused,
                d.collector.n_invalid,
            )

    def _after_step(self) -> None:
        cfg = self.cfg
        self._take_eval_results()
        if self.step % self.evaluation.every == 0 or self.step == cfg.max_steps:
            self._evaluate()
        if self.step % cfg.checkpoint_every == 0 or self.signals.checkpoint_now:
            self.checkpoint()
            self.signals.checkpoint_now = False
        self.last_usable = time.monotonic()

    # -- the loop -------------------------------------------------------------------------------------------------
    def run(self) -> int:
        try:
            code = self._run()
        except PeerError as e:
            self.end_reason = f"trainer failed: {one_line(e)}"
            self.checkpoint()  # the work so far survives whatever killed a peer
            raise
        except BaseException as e:
            self.end_reason = f"trainer failed: {type(e).__name__}: {one_line(e)}"
            raise
        if self.signals.stop is not None:
            self.end_reason = f"trainer stopped by {self.signals.stop_name}"
        return code

    def _run(self) -> int:
        cfg, requests = self.cfg, self.dispatcher
        if not requests.wait_for_generators():
            self.end_reason = "trainer stopped before it started"
            return self.signals.stop or EXIT_SIGTERM
        self._publish()  # generators start from the base model; after a resume they need the trained one
        if (
            not self.resumed
            or self.step == 0
            or (self.step % self.evaluation.every == 0 and not self.ledger.has_eval(self.step))
        ):
            self._evaluate()
        batch = cfg.prompts_per_step
        self.last_usable = time.monotonic()
        while self.step < cfg.max_steps and self.signals.stop is None:
            if cfg.mode == "pipeline":
                # k batches in flight: a group issued at version v is trained by step v + k at the latest.
                ahead = batch * cfg.max_off_policy
                if requests.outstanding < ahead:
                    requests.issue(ahead - requests.outstanding)
                if not requests.wait_for_groups(batch):
                    break
                # None back (all timed out, refused or invalid) or all stale: no step; the next pass issues anew.
                if self._train_on(requests.take(batch)):
                    self._after_step()
            else:  # ppo_off_policy: k batches from one policy, then k updates
                k = min(cfg.max_off_policy, cfg.max_steps - self.step)
                requests.issue(batch * k)
                if not requests.wait_for_groups(batch * k):
                    break
                for _ in range(k):
                    if not self._train_on(requests.take(batch)):
                        break  # fewer came back than k batches: the next pass issues k batches anew
                    self._after_step()
                    if self.signals.stop is not None:
                        break
        if self.signals.stop is not None:
            self.checkpoint()
            self._wait_for_evaluations(EVAL_WAIT_ON_STOP_S)
            return self.signals.stop
        if self.step % cfg.checkpoint_every != 0:
            self.checkpoint()
        self._wait_for_evaluations(None)
        return EXIT_OK

    def close(self) -> None:
        try:
            self.sockets.control.broadcast(Shutdown(reason=self.end_reason))
            time.sleep(0.2)  # linger=0 drops unsent messages: give the shutdown a moment to leave
        finally:
            self.evaluator.close()
            self.sockets.close()
            self.ledger.close()
