"""The evaluator process (`scalerl evaluator`): held-out evaluation off the trainer's critical path.

At an evaluation step the trainer publishes version v's weights on an evaluation weight channel of its own
(wiring.eval_weights_addr, zmq, only versions to evaluate travel there), sends EvalRequest(version=v) on the
control channel, and trains on. This process keeps every requested version's weights aside as they arrive,
scores each requested version in order on exactly its own weights (`evaluation.evaluate`, the scoring the
in-trainer mode uses too), and answers with an EvalResult; the trainer writes the metrics line.

A dedicated process rather than generators serving pinned requests: generators take in-flight weight updates
and every transport but zmq makes them join each broadcast, so a generator busy scoring an old version would
either mix versions or stall the trainer's publish; and an evaluation of hours would take a generator out of
rollout production unpredictably. One process with its own engine has neither problem, is sized on its own
(generator.* engine keys: torch or vLLM, any architecture vLLM supports), and its devices are counted in
gpu_hours like any other process.

Between two engine steps it reads the control channel (heartbeats, new requests, Shutdown) and the weight
channel, so a long evaluation neither looks like a dead peer nor loses a version published meanwhile. The
weight channel keeps only the newest version; one replaced before it arrived is answered with an EvalResult
whose `error` says so, as are the oldest requests when more than MAX_HELD versions wait (memory: one copy of
the weights each).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import zmq

from scalerl.generator_service.config import GeneratorConfig
from scalerl.generator_service.heldout import EvalSet, build_torch_engine, evaluate, model_limit
from scalerl.generator_service.peer import PeerService, StopRequested, run_peer
from scalerl.shared.config import ConfigError
from scalerl.shared.errors import one_line
from scalerl.shared.eval_config import EvalConfig
from scalerl.shared.wire.messages import EvalRequest, EvalResult
from scalerl.shared.wire.weights.registry import DEFAULT_WEIGHT_TRANSPORT
from scalerl.shared.wiring import RunWiring

log = logging.getLogger("scalerl.evaluator")

EVALUATOR_ID = "eval-0"
MAX_HELD = 3  # versions whose weights wait to be scored; beyond that the oldest request is answered as skipped
IDLE_POLL_MS = 50


class EvaluatorService(PeerService):
    role = "evaluator"

    def __init__(self, cfg: GeneratorConfig, wiring: RunWiring, backend: Any, eval_set: EvalSet) -> None:
        from scalerl.shared.wire.weights.zmq import ZmqWeightReceiver

        ctx: zmq.Context = zmq.Context.instance()
        info = {"backend": cfg.backend, "max_seq_len": eval_set.max_seq_len, "n_samples": eval_set.n_samples}
        super().__init__(cfg, wiring, info, context=ctx)
        self.backend, self.eval_set = backend, eval_set
        self.pending: list[int] = []  # requested versions not yet answered, oldest first
        self.held: dict[int, Any] = {}  # version -> its weights, kept aside until scored
        self.n_evaluated = self.n_skipped = 0
        self.evaluating = -1
        self.weights = ZmqWeightReceiver(
            wiring.weights_addr, peer_id=cfg.peer_id, version=-1, context=ctx, key=self.key
        )
        self.poller = zmq.Poller()
        for sock in (self.control.socket, self.weights.socket):
            self.poller.register(sock, zmq.POLLIN)

    def run(self) -> None:
        while self.stop_reason is None:
            self._tick()
            version = next((v for v in self.pending if v in self.held), None)
            if version is None:
                self.poller.poll(IDLE_POLL_MS)
                continue
            try:
                self._evaluate(version)
            except StopRequested:
                break
        log.info(
            "stopping (%s): %d evaluations, %d skipped, %d pending dropped",
            self.stop_reason,
            self.n_evaluated,
            self.n_skipped,
            len(self.pending),
        )

    def _evaluate(self, version: int) -> None:
        t0 = time.monotonic()
        self.evaluating = version
        weights = self.held.pop(version)
        log.info(
            "evaluating v%d (%d samples); %d more requested", version, self.eval_set.n_samples, len(self.pending) - 1
        )
        result = evaluate(self.backend, self.eval_set, weights, version, between_steps=self._between_steps)
        del weights  # the engine holds its own copy now
        self.evaluating = -1
        self.pending.remove(version)
        self.n_evaluated += 1
        eval_s = time.monotonic() - t0
        log.info(
            "v%d: pass rate %.4f (%d samples) in %.1f s", version, result["pass_rate"], result["n_samples"], eval_s
        )
        self._send(
            EvalResult(
                peer_id=self.cfg.peer_id,
                version=version,
                pass_rate=result["pass_rate"],
                n_samples=result["n_samples"],
                eval_prompts=result["eval_prompts"],
                eval_k=result["eval_k"],
                pass_rate_interrupted=result["pass_rate_interrupted"],
                pass_rate_uninterrupted=result["pass_rate_uninterrupted"],
                interrupted_frac=result["interrupted_frac"],
                eval_s=eval_s,
            )
        )

    def _between_steps(self) -> None:
        self._tick()
        if self.stop_reason is not None:
            raise StopRequested(self.stop_reason)

    def _tick(self) -> None:
        """Read control and weights without blocking; answer what can no longer be scored."""
        for msg in self.control_messages():
            if isinstance(msg, EvalRequest) and msg.version not in self.pending:
                self.pending.append(msg.version)
                self.pending.sort()
        if self.stop_reason is not None:
            return
        self.check_trainer()
        if self.stop_reason is not None:
            return
        while (got := self.weights.receive(timeout_s=0)) is not None:
            self.held[got[0]] = got[1]
        self._drop_unservable()
        self.control.stats = {
            "evaluating": self.evaluating,
            "pending": len(self.pending),
            "held": len(self.held),
            "n_evaluated": self.n_evaluated,
            "n_skipped": self.n_skipped,
        }

    def _drop_unservable(self) -> None:
        newest = self.weights.version  # the newest version ever received
        for v in list(self.pending):
            if v == self.evaluating or v in self.held:
                continue
            if newest > v:  # the channel keeps only the newest: v's weights will never come
                self._skip(v, f"weights of v{v} were replaced by v{newest} before they arrived")
        # Weights nobody asked for yet may be of a request still on its way; keep only the newest such.
        unasked = sorted(v for v in self.held if v not in self.pending)
        for v in unasked[:-1]:
            del self.held[v]
        while len(self.held) > MAX_HELD:
            oldest = min(v for v in self.held if v in self.pending)
            del self.held[oldest]
            self._skip(oldest, f"the evaluator is {len(self.pending)} versions behind; v{oldest} dropped")

    def _skip(self, version: int, why: str) -> None:
        log.warning("not evaluating v%d: %s", version, why)
        self.pending.remove(version)
        self.n_skipped += 1
        self._send(EvalResult(peer_id=self.cfg.peer_id, version=version, error=why))

    def _send(self, msg) -> None:
        try:
            self.control.send(msg, timeout_ms=1000)
        except (TimeoutError, zmq.ZMQError) as e:
            log.warning("could not send %s for v%d: %s", type(msg).__name__, msg.version, one_line(e))

    def close(self) -> None:
        self.weights.close()
        super().close()
        close_backend = getattr(self.backend, "close", None)
        if close_backend is not None:
            close_backend()


def evaluator_generator_config(gen: GeneratorConfig, wiring: RunWiring) -> tuple[GeneratorConfig, RunWiring]:
    """The [generator] engine settings and the run's wiring, as the evaluator process runs them: its own id and
    weight channel (zmq, whatever the generators use: it must not join their broadcasts)."""
    if not wiring.eval_weights_addr:
        raise ConfigError("wiring.eval_weights_addr is not set (scalerl train sets it)")
    own = dataclasses.replace(gen, peer_id=EVALUATOR_ID, dist_rank=0, weights_transport=DEFAULT_WEIGHT_TRANSPORT)
    return own, dataclasses.replace(
        wiring,
        weights_addr=wiring.eval_weights_addr,
        weights_transport=DEFAULT_WEIGHT_TRANSPORT,
        weights_dist_init_method="",
        weights_dist_world_size=0,
    )


def load(
    cfg: GeneratorConfig, wiring: RunWiring, trainer, evaluation: EvalConfig
) -> tuple[Any, EvalSet, GeneratorConfig]:
    """(backend, eval set, the config it runs with). `trainer`: the run's [trainer] section (model, task,
    max_new_tokens, loss.fp32_lm_head); `evaluation`: its [eval] section. The engine's length comes from them, not
    a default."""
    from scalerl.shared.models.tiny_model import ensure_tiny_model
    from scalerl.shared.models.tokenizer import load_tokenizer
    from scalerl.shared.tasks.catalog import load_task
    from scalerl.shared.tasks.chat import format_task

    path = Path(trainer.model) if trainer.model else ensure_tiny_model(task=trainer.task)
    tokenizer = load_tokenizer(path)
    task = format_task(load_task(trainer.task), tokenizer, trainer.task)
    eval_set = EvalSet.from_config(evaluation, trainer.max_new_tokens, tokenizer, task)
    eval_set.check_fits(model_limit(path))
    cfg = dataclasses.replace(cfg, max_seq_len=eval_set.max_seq_len, fp32_lm_head=trainer.loss.fp32_lm_head)
    if cfg.backend == "vllm":
        from scalerl.generator_service.model_setup import load_vllm_backend

        backend, _, _ = load_vllm_backend(dataclasses.replace(cfg, model=str(path)), path, wiring)
    else:  # the in-trainer mode's engine exactly: the same samples for the same weights and seeds
        backend = build_torch_engine(path, eval_set, cfg.fp32_lm_head, dtype=cfg.dtype, threads=cfg.threads or None)
    return backend, eval_set, cfg


def run_evaluator(cfg: GeneratorConfig, wiring: RunWiring, trainer, evaluation: EvalConfig) -> int:
    """Serve evaluation requests until stopped: 0 stopped on request, 1 failure, 2 bad config or held-out set."""

    def start() -> EvaluatorService:
        backend, eval_set, run_cfg = load(cfg, wiring, trainer, evaluation)
        log.info(
            "backend %s, %d prompts x %d, max_seq_len %d",
            run_cfg.backend,
            len(eval_set.items),
            eval_set.k,
            eval_set.max_seq_len,
        )
        return EvaluatorService(run_cfg, wiring, backend, eval_set)

    return run_peer("evaluator", cfg, start)
