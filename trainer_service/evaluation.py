"""Held-out evaluation: mean@k pass rate on a fixed slice of the validation split.

It runs inside the trainer on an engine of its own, with exactly the weights of the step it scores. Generators
receive in-flight updates, so a score computed there could mix policy versions; the curve needs clean points.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from scalerl.generator_service.backend import EngineRequest, EngineSampling
from scalerl.generator_service.engine import TorchEngine, TorchEngineConfig
from scalerl.shared.verifiers import TaskError


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
    ):
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
            temperature=temperature, max_new_tokens=max_new_tokens, stop_token_ids=(tokenizer.eos_token_id,)
        )
        self.seed = seed

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
        rewards = []
        for rid, c in done.items():
            item = self.items[int(rid.split("/")[0])]
            text = self.tokenizer.decode(list(map(int, c.token_ids)), skip_special_tokens=True)
            rewards.append(float(self.task.verify(text, item)[0]))
        return {
            "pass_rate": float(np.mean(rewards)),
            "n_samples": len(rewards),
            "eval_prompts": len(self.items),
            "eval_k": self.k,
        }
