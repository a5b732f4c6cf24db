"""Held-out evaluation: mean@k pass rate on a fixed slice of the validation split, on any generation backend.

The scoring core (`EvalSet` + `evaluate`) drives a `GenerationBackend` (the torch engine or vLLM) with one fixed
set of requests: the same prompts, the same per-sample seeds and the same sampling at every evaluation, so two
points of the curve differ only by the weights. It is used in two places:

- `EvaluatorService`, the `scalerl evaluator` process (`eval.mode = "process"`, what `scalerl train`
  runs): evaluation off the trainer's critical path, on weights of exactly the requested version;
- `InlineScorer`, a torch engine inside the caller (`eval.mode = "inline"`, `scalerl eval`).

Weights must be those of one version: generators take in-flight updates, so a score computed there could mix
versions; the curve needs clean points. With forced interruption on, evaluation interrupts too, at one fixed
budget (eval.thinking_budget), and reports interrupted and uninterrupted samples apart.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from scalerl.generator_service.backend import Completion, EngineRequest, EngineSampling, GenerationBackend
from scalerl.shared.eval_config import EvalConfig
from scalerl.shared.tasks.catalog import interruption_defaults
from scalerl.shared.tasks.types import TaskError, TaskItem

log = logging.getLogger("scalerl.evaluator")

EVAL_SEED = 1234  # sample j of prompt i is seeded EVAL_SEED + 1000 i + j, at every evaluation
MAX_BATCH = 256  # the torch engine's slots: every request at once for small sets, bounded memory for large ones


def split_pass_rates(rewards: list[float], interrupted: list[bool]) -> dict:
    """Pass rate of interrupted and of uninterrupted samples (None when there are none) and the interrupted share."""
    r, cut = np.asarray(rewards, dtype=np.float64), np.asarray(interrupted, dtype=bool)

    def rate(sel: np.ndarray) -> float | None:
        return float(r[sel].mean()) if sel.any() else None

    return {
        "pass_rate_interrupted": rate(cut),
        "pass_rate_uninterrupted": rate(~cut),
        "interrupted_frac": float(cut.mean()) if len(cut) else 0.0,
    }


@dataclass(frozen=True)
class EvalSet:
    """What one evaluation asks for: prompts x k samples with fixed seeds, and how to score them."""

    items: tuple[TaskItem, ...]
    prompt_ids: tuple[tuple[int, ...], ...]
    k: int
    sampling: EngineSampling
    task: Any
    tokenizer: Any
    seed: int = EVAL_SEED

    @classmethod
    def build(
        cls,
        tokenizer,
        task,
        n_prompts: int,
        k: int,
        temperature: float,
        max_new_tokens: int,
        *,
        thinking_budget: int | None = None,
        answer_budget: int | None = None,
        interruption_text: str | None = None,
        think_end_text: str | None = None,
        seed: int = EVAL_SEED,
    ) -> EvalSet:
        """thinking_budget None: never interrupted. The texts default to the task's (interruption_defaults)."""
        items = tuple(task.val_items[:n_prompts])
        sampling = EngineSampling(
            temperature=temperature,
            max_new_tokens=max_new_tokens,
            stop_token_ids=(tokenizer.eos_token_id,),
            **_interruption(tokenizer, task, thinking_budget, answer_budget, interruption_text, think_end_text),
        )
        ids = tuple(tuple(tokenizer(item.prompt).input_ids) for item in items)
        return cls(items, ids, k, sampling, task, tokenizer, seed)

    @classmethod
    def from_config(cls, evaluation: EvalConfig, max_new_tokens: int, tokenizer, task) -> EvalSet:
        """The evaluation an [eval] section describes, at the run's max_new_tokens ([trainer])."""
        return cls.build(
            tokenizer,
            task,
            evaluation.prompts,
            evaluation.k,
            evaluation.temperature,
            max_new_tokens,
            thinking_budget=evaluation.thinking_budget,
            answer_budget=evaluation.answer_budget,
            interruption_text=evaluation.interruption_text,
            think_end_text=evaluation.think_end_text,
        )

    @property
    def max_seq_len(self) -> int:
        """The longest sequence an engine must hold: longest prompt + max_new_tokens (forced tokens count in it)."""
        return max((len(ids) for ids in self.prompt_ids), default=1) + self.sampling.max_new_tokens

    @property
    def n_samples(self) -> int:
        return len(self.items) * self.k

    def check_fits(self, model_limit: int | None) -> None:
        """Refuse at start, naming the item, what the model cannot hold (not as a crash at the step-0 evaluation)."""
        if model_limit is None:
            return
        for item, ids in zip(self.items, self.prompt_ids):
            if len(ids) + self.sampling.max_new_tokens > model_limit:
                raise TaskError(
                    f"{item.where or 'held-out item ' + repr(item.id)}: prompt of {len(ids)} tokens + max_new_tokens "
                    f"{self.sampling.max_new_tokens} exceeds the evaluator's max_seq_len {model_limit} (the model's "
                    f"max_position_embeddings)"
                )

    def requests(self) -> list[EngineRequest]:
        return [
            EngineRequest(f"{i}/{j}", self.prompt_ids[i], replace(self.sampling, seed=self.seed + 1000 * i + j))
            for i in range(len(self.items))
            for j in range(self.k)
        ]

    def score(self, done: Mapping[str, Completion]) -> dict:
        rewards, interrupted = [], []
        for rid, c in done.items():
            item = self.items[int(rid.split("/")[0])]
            text = self.tokenizer.decode(list(map(int, c.token_ids)), skip_special_tokens=True)
            rewards.append(float(self.task.verify(text, item)[0]))
            interrupted.append(c.finish_reason == "interrupted")
        return {
            "pass_rate": float(np.mean(rewards)),
            "n_samples": len(rewards),
            "eval_prompts": len(self.items),
            "eval_k": self.k,
            **split_pass_rates(rewards, interrupted),
        }


def _interruption(tokenizer, task, budget, answer_budget, text, think_end) -> dict:
    if budget is None:
        return {}
    from scalerl.generator_service.model_setup import encode_exactly

    default_text, default_end = interruption_defaults(task.delimiter)
    text = default_text if text is None else text
    think_end = default_end if think_end is None else think_end
    return {
        "thinking_budget": (budget, budget),
        "answer_budget": answer_budget,
        "interruption_token_ids": encode_exactly(tokenizer, text, "interruption_text"),
        "think_end_token_ids": encode_exactly(tokenizer, think_end, "think_end_text") if think_end else (),
    }


def evaluate(
    backend: GenerationBackend,
    eval_set: EvalSet,
    weights: Mapping[str, Any] | None,
    version: int,
    between_steps: Callable[[], None] | None = None,
) -> dict:
    """Load `weights` as `version` (None: the backend's own), run every request of `eval_set`, score them.

    `between_steps` runs after every engine step: the evaluator process answers heartbeats and takes in newer
    weights there, which it keeps aside, so the engine's weights stay those of `version` until the end."""
    if weights is not None:
        backend.update_weights(weights.items(), version)
    backend.add_requests(eval_set.requests())
    done: dict[str, Completion] = {}
    while backend.has_unfinished():
        backend.step()
        for c in backend.collect_finished():
            done[c.request_id] = c
        if between_steps is not None:
            between_steps()
    for c in backend.collect_finished():
        done[c.request_id] = c
    return eval_set.score(done)


def model_limit(model_dir) -> int | None:
    """max_position_embeddings of an HF model directory (of its text config for multimodal ones), if it says."""
    import json
    from pathlib import Path

    try:
        config = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    config = config.get("text_config", config)
    limit = config.get("max_position_embeddings")
    return int(limit) if isinstance(limit, int) else None


class InlineScorer:
    """Evaluation inside the calling process on a torch engine of its own (eval.mode "inline", `scalerl eval`)."""

    def __init__(
        self,
        model_dir,
        tokenizer,
        task,
        n_prompts: int,
        k: int,
        temperature: float,
        max_new_tokens: int,
        fp32_lm_head: bool,
        seed: int = EVAL_SEED,
        thinking_budget: int | None = None,
        answer_budget: int | None = None,
        interruption_text: str | None = None,
        think_end_text: str | None = None,
    ):
        self.eval_set = EvalSet.build(
            tokenizer,
            task,
            n_prompts,
            k,
            temperature,
            max_new_tokens,
            thinking_budget=thinking_budget,
            answer_budget=answer_budget,
            interruption_text=interruption_text,
            think_end_text=think_end_text,
            seed=seed,
        )
        self.eval_set.check_fits(model_limit(model_dir))
        self.engine = build_torch_engine(model_dir, self.eval_set, fp32_lm_head)

    @classmethod
    def from_config(cls, evaluation: EvalConfig, trainer, model_dir, tokenizer, task) -> InlineScorer:
        """The evaluator an [eval] section describes, with the [trainer] section's max_new_tokens and FP32 head."""
        return cls(
            model_dir,
            tokenizer,
            task,
            evaluation.prompts,
            evaluation.k,
            evaluation.temperature,
            trainer.max_new_tokens,
            trainer.loss.fp32_lm_head,
            thinking_budget=evaluation.thinking_budget,
            answer_budget=evaluation.answer_budget,
            interruption_text=evaluation.interruption_text,
            think_end_text=evaluation.think_end_text,
        )

    @property
    def items(self):
        return self.eval_set.items

    def run(self, state_dict: Mapping[str, Any], version: int) -> dict:
        import torch

        with torch.no_grad():
            return evaluate(self.engine, self.eval_set, state_dict, version)


def build_torch_engine(model_dir, eval_set: EvalSet, fp32_lm_head: bool, dtype: str = "float32", threads=None):
    """The torch engine both eval modes use for the torch backend: the same slots, length and dtype give the same
    samples for the same weights and seeds. The length is the run's (eval_set.max_seq_len), not a default."""
    import torch

    from scalerl.generator_service.engine.torch_engine import TorchEngine, TorchEngineConfig

    return TorchEngine.from_pretrained(
        str(model_dir),
        TorchEngineConfig(
            max_batch=min(MAX_BATCH, max(1, eval_set.n_samples)),
            max_seq_len=eval_set.max_seq_len,
            dtype=dtype,
            fp32_lm_head=fp32_lm_head,
            threads=threads or torch.get_num_threads(),
        ),
    )
