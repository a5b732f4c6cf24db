"""The trainer's side of held-out evaluation: ask for a score of version v, write the `eval` line when it comes.

Two modes (eval.mode, docs/trainer.md "Evaluation"), one interface, one scoring function
(generator_service/heldout.py):

- `ProcessEvaluation` ("process", what `scalerl train` runs): the version's weights go out on an evaluation
  weight channel of their own and an EvalRequest on the control channel; training goes on. The evaluator process
  answers with an EvalResult, written as the eval line of step v with the gpu_hours and time_s the run had at
  step v, so the curve's x axis is the compute that produced the weights, not the time the score came back.
- `InlineEvaluation` ("inline"): scored here and now on a CPU torch engine; training waits. The only place the
  trainer reaches into generator_service, and only when this mode is chosen.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch

from scalerl.shared.eval_config import EvalConfig
from scalerl.shared.wire.dtypes import TORCH_DTYPES
from scalerl.shared.wire.messages import EvalRequest, EvalResult
from scalerl.shared.wiring import RunWiring

from .config import TrainerConfig

log = logging.getLogger("scalerl.trainer")

Record = Callable[..., None]  # Ledger.record(kind, step, **values)
WeightStream = tuple[Mapping[str, torch.Tensor], Iterator[tuple[str, torch.Tensor]]]  # Publisher.stream's pair


class InlineEvaluation:
    def __init__(self, evaluation: EvalConfig, cfg: TrainerConfig, model_dir, tokenizer, task) -> None:
        from scalerl.generator_service.heldout import InlineScorer  # the engine lives there; inline mode only

        # A multi-task run (a TaskMix: `parts`) scores each task on its own held-out split and writes one eval line
        # per task, with its label in `task`; a single-task run's lines have no `task` field, as before.
        parts = getattr(task, "parts", None)
        tasks = [(None, task)] if parts is None else [(label, t) for label, _, t in parts]
        self.evaluators = [
            (label, InlineScorer.from_config(evaluation, cfg, model_dir, tokenizer, t)) for label, t in tasks
        ]
        self.evaluator = self.evaluators[0][1]
        self.pending: dict[int, dict[str, float]] = {}  # never any: kept for the common interface

    def request(self, weights: Mapping[str, Any], step: int, record: Record, clock: dict[str, float]) -> None:
        for label, evaluator in self.evaluators:
            result = evaluator.run(weights, step)
            record("eval", step, **({} if label is None else {"task": label}), **result)
            log.info(
                "step %d: held-out pass rate%s %.3f (%d samples)",
                step,
                "" if label is None else f" of {label}",
                result["pass_rate"],
                result["n_samples"],
            )

    def on_result(self, msg: EvalResult, record: Record) -> None:
        log.warning("EvalResult from %s for v%d in inline mode; ignored", msg.peer_id, msg.version)

    def close(self) -> None:
        pass


class ProcessEvaluation:
    """`send(msg)`: to the evaluator on the control channel (False when it is not connected).

    The weights go out as an update does (Publisher.stream: one tensor at a time, in the generators' dtype, into
    zmq buckets), and the channel drops the buckets once the evaluator has them (keep_latest=False): nothing of a
    version is kept after delivery, and no rank ever holds the full FP32 model for an evaluation."""

    ROLE = "evaluator"

    def __init__(self, wiring: RunWiring, send: Callable[[EvalRequest], bool], key: bytes | None = None) -> None:
        from scalerl.shared.wire.weights.zmq import ZmqWeightSender

        self.sender = ZmqWeightSender(
            wiring.eval_weights_addr, allow_remote=wiring.allow_remote, key=key, keep_latest=False
        )
        self.dtype = TORCH_DTYPES[wiring.weights_dtype]
        self.send = send
        self.pending: dict[int, dict[str, float]] = {}  # version -> the run's clock when it was asked for
        self.n_failed = 0
        self._published = -1

    def request(
        self, weights: Mapping[str, Any] | WeightStream, step: int, record: Record, clock: dict[str, float]
    ) -> None:
        """Hand version `step` to the evaluator: its weights (the only time training waits) and the request. The
        clock is the run's at `step`; the line is written when the result comes back.

        weights: Publisher.stream's (meta, tensors) pair, which every rank is iterating with us (it gathers), or a
        dict of tensors; either is cast to the generators' dtype on the way into the buckets."""
        t0 = time.monotonic()
        meta, pairs = weights if isinstance(weights, tuple) else self._as_stream(weights)
        try:
            if step > self._published:  # a resumed run's first evaluation may repeat a version already sent
                self.sender.publish_stream(meta, pairs, step)
                self._published = step
        finally:
            for _ in pairs:  # not sent, or the send failed: the other ranks still gather every tensor
                pass
        if not self.send(EvalRequest(version=step)):
            log.warning("step %d: the evaluator is not connected; no evaluation of this version", step)
            return
        self.pending[step] = clock
        log.info(
            "step %d: evaluation requested (%.2f s to hand over, %d pending)",
            step,
            time.monotonic() - t0,
            len(self.pending),
        )

    def _as_stream(self, weights: Mapping[str, Any]) -> WeightStream:
        def cast(t: torch.Tensor) -> torch.Tensor:
            return t.detach().to(self.dtype) if t.is_floating_point() else t.detach()

        meta = {
            k: torch.empty(t.shape, dtype=self.dtype if t.is_floating_point() else t.dtype, device="meta")
            for k, t in weights.items()
        }
        return meta, ((k, cast(t)) for k, t in weights.items())

    def on_result(self, msg: EvalResult, record: Record) -> None:
        clock = self.pending.pop(msg.version, None)
        if clock is None:
            log.warning("EvalResult for v%d, which was not asked for (or answered already); ignored", msg.version)
            return
        if msg.error:
            self.n_failed += 1
            log.warning("step %d: no held-out evaluation: %s", msg.version, msg.error)
            return
        record(
            "eval",
            msg.version,
            **clock,
            pass_rate=msg.pass_rate,
            n_samples=msg.n_samples,
            eval_prompts=msg.eval_prompts,
            eval_k=msg.eval_k,
            pass_rate_interrupted=msg.pass_rate_interrupted,
            pass_rate_uninterrupted=msg.pass_rate_uninterrupted,
            interrupted_frac=msg.interrupted_frac,
            eval_s=msg.eval_s,
        )
        log.info(
            "step %d: held-out pass rate %.3f (%d samples, %.1f s on the evaluator)",
            msg.version,
            msg.pass_rate,
            msg.n_samples,
            msg.eval_s,
        )

    def close(self) -> None:
        self.sender.close()


Evaluation = InlineEvaluation | ProcessEvaluation
