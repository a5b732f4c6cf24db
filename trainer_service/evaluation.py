"""Held-out evaluation: mean@k pass rate on a fixed slice of the validation split.

It runs inside the trainer on an engine of its own, with exactly the weights of the step it scores. Generators
receive in-flight updates, so a score computed there could mix policy versions; the curve needs clean points.
With forced interruption on, evaluation interrupts too, at one fixed budget (trainer.eval_thinking_budget), and
reports interrupted and uninterrupted samples apart: whether the policy learns to answer in budget shows there.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from scalerl.generator_service.backend import EngineRequest, EngineSampling
from scalerl.generator_service.engine import TorchEngine, TorchEngineConfig
from scalerl.generator_service.model_setup import encode_exactly
from scalerl.shared.tasks import interruption_defaults
from scalerl.shared.verifiers import TaskError


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


class Evaluator:
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
        seed: int = 1234,
        thinking_budget: int | None = None,
        answer_budget: int | None = None,
        interruption_text: str | None = None,
        think_end_text: str | None = None,
    ):
        """thinking_budget None: never interrupted. The texts default to the task's (interruption_defaults)."""
        self.items = task.val_items[:n_prompts]
        self.task, self.tokenizer, self.k = task, tokenizer, k
        self.engine = TorchEngine.from_pretrained(
            str(model_dir),
            TorchEngineConfig(
                max_batch=min(256, len(self.items) * k), fp32_lm_head=fp32_lm_head, threads=torch.get_num_threads()
            ),
        )
        self.prompt_ids = [tuple(tokenizer(item.prompt).input_ids) for item in self.items]
        limit = self.engine.config.max_seq_len
        for item, ids in zip(self.items, self.prompt_ids):
            if len(ids) + max_new_tokens > limit:  # refused here, at start, not as a crash at the step-0 evaluation
                raise TaskError(
                    f"{item.where or 'held-out item ' + repr(item.id)}: prompt of {len(ids)} tokens + max_new_tokens "
                    f"{max_new_tokens} exceeds the evaluator's max_seq_len {limit}"
                )
        self.sampling = EngineSampling(
            temperature=temperature,
            max_new_tokens=max_new_tokens,
            stop_token_ids=(tokenizer.eos_token_id,),
            **self._interruption(tokenizer, task, thinking_budget, answer_budget, interruption_text, think_end_text),
        )
        self.seed = seed

    @classmethod
    def from_config(cls, cfg, model_dir, tokenizer, task) -> "Evaluator":
        """The evaluator a TrainerConfig describes."""
        return cls(
            model_dir,
            tokenizer,
            task,
            cfg.eval_prompts,
            cfg.eval_k,
            cfg.eval_temperature,
            cfg.max_new_tokens,
            cfg.loss.fp32_lm_head,
            thinking_budget=cfg.eval_thinking_budget,
            answer_budget=cfg.eval_answer_budget,
            interruption_text=cfg.eval_interruption_text,
            think_end_text=cfg.eval_think_end_text,
        )

    @staticmethod
    def _interruption(tokenizer, task, budget, answer_budget, text, think_end) -> dict:
        if budget is None:
            return {}
        default_text, default_end = interruption_defaults(task.delimiter)
        text = default_text if text is None else text
        think_end = default_end if think_end is None else think_end
        return {
            "thinking_budget": (budget, budget),
            "answer_budget": answer_budget,
            "interruption_token_ids": encode_exactly(tokenizer, text, "interruption_text"),
            "think_end_token_ids": encode_exactly(tokenizer, think_end, "think_end_text") if think_end else (),
        }

    @torch.no_grad()
    def run(self, state_dict: dict, version: int) -> dict:
        self.engine.update_weights(state_dict.items(), version)
        requests = [
            EngineRequest(f"{i}/{j}", self.prompt_ids[i], replace(self.sampling, seed=self.seed + 1000 * i + j))
            for i in range(len(self.items))
            for j in range(self.k)
        ]
        self.engine.add_requests(requests)
        done = {}
        while self.engine.has_unfinished():
            self.engine.step()
            for c in self.engine.collect_finished():
                done[c.request_id] = c
        for c in self.engine.collect_finished():
            done[c.request_id] = c
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
