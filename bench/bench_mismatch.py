"""Train/inference mismatch on CPU: what the FP32 LM head buys when the generator runs in bf16.

The generator's torch engine samples completions of the addition task's prompts and records each token's logprob,
once per generator dtype (bfloat16, float32) and FP32-head switch (on, off: the switch is one key for both sides,
trainer.loss.fp32_lm_head, forwarded to the generators). The trainer then scores the same tokens with
policy.sequence_logprobs, in FP32 as on CPU (and, for reference, in bf16 as on GPU), and the table gives the
train line's statistics (trainer_service/loss.py, mismatch_sums): mismatch_kl, mean and max |logp_train - logp_gen|.
An FP32 trainer computes its head in FP32 either way, so there the switch acts on the generator's head alone.

Model: the built-in tiny model, warm-started, when it is in the cache (no build: that takes minutes), else the same
architecture freshly initialised (--random forces it). Run: nice -n 10 python bench/bench_mismatch.py
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch

from scalerl.generator_service.backend import EngineRequest, EngineSampling
from scalerl.generator_service.engine.torch_engine import TorchEngine, TorchEngineConfig
from scalerl.shared.models import tokenizer as char_tok
from scalerl.shared.models.tiny_model import WarmStart, build_tiny_model, cache_key, default_cache_root, load_model_dir
from scalerl.shared.tasks.catalog import TaskConfig, get_task
from scalerl.trainer_service.config import LossConfig
from scalerl.trainer_service.loss import mismatch_stats, mismatch_sums
from scalerl.trainer_service.policy import sequence_logprobs


def load_model(random: bool):
    warm = default_cache_root() / f"tiny-addition-{cache_key(TaskConfig(), WarmStart())}"
    if not random and Path(warm).is_dir():
        model, tokenizer = load_model_dir(warm)
        return model.float(), tokenizer, f"tiny model, warm-started ({warm.name})"
    return build_tiny_model(0), None, "tiny model, random init (warm-started one not cached)"


def prompts(tokenizer, n: int) -> list[tuple[int, ...]]:
    items = get_task("addition").val_items[:n]
    if tokenizer is not None:
        return [tuple(tokenizer(item.prompt).input_ids) for item in items]
    return [tuple(char_tok.encode(item.prompt)) for item in items]


def sample(model, prompt_ids, dtype: str, fp32_head: bool, max_new: int, eos: int):
    """(input_ids (B, L), attention_mask, completion mask, generator logprobs (B, L)), right-padded."""
    engine = TorchEngine(
        copy.deepcopy(model), TorchEngineConfig(max_batch=len(prompt_ids), dtype=dtype, fp32_lm_head=fp32_head)
    )
    params = EngineSampling(temperature=1.0, max_new_tokens=max_new, stop_token_ids=(eos,))
    engine.add_requests(
        [EngineRequest(str(i), p, EngineSampling(**{**params.__dict__, "seed": i})) for i, p in enumerate(prompt_ids)]
    )
    done = {}
    while engine.has_unfinished():
        engine.step()
        done.update((c.request_id, c) for c in engine.collect_finished())
    done.update((c.request_id, c) for c in engine.collect_finished())
    rows = [done[str(i)] for i in range(len(prompt_ids))]
    L = max(len(p) + len(c.token_ids) for p, c in zip(prompt_ids, rows))
    ids = torch.zeros(len(rows), L, dtype=torch.long)
    att, mask, gen = torch.zeros_like(ids), torch.zeros(len(rows), L), torch.zeros(len(rows), L)
    for r, (p, c) in enumerate(zip(prompt_ids, rows)):
        n, m = len(p), len(c.token_ids)
        ids[r, :n] = torch.tensor(p)
        ids[r, n : n + m] = torch.from_numpy(c.token_ids.astype("int64"))
        att[r, : n + m] = 1
        mask[r, n : n + m] = torch.from_numpy(1.0 - c.forced.astype("float32"))
        gen[r, n : n + m] = torch.from_numpy(c.logprobs.astype("float32"))
    return ids, att, mask, gen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=500, help="held-out addition prompts (500 at most)")
    ap.add_argument("--samples", type=int, default=4, help="completions per prompt")
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--random", action="store_true", help="a freshly initialised model even when one is cached")
    ap.add_argument("--no-bf16-trainer", action="store_true", help="skip the rows of a bf16 trainer")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model, tokenizer, what = load_model(args.random)
    model.eval()
    eos = tokenizer.eos_token_id if tokenizer is not None else char_tok.EOS_ID
    prompt_ids = [p for p in prompts(tokenizer, args.prompts) for _ in range(args.samples)]
    trainers = {"float32": model}
    if not args.no_bf16_trainer:
        trainers["bfloat16"] = copy.deepcopy(model).to(torch.bfloat16)
    cfg = LossConfig()
    rows = []
    for gen_dtype in ("bfloat16", "float32"):
        for head in (True, False):
            ids, att, mask, gen = sample(model, prompt_ids, gen_dtype, head, args.max_new_tokens, eos)
            for trainer_dtype, trainer in trainers.items():
                with torch.no_grad():
                    lp, _ = sequence_logprobs(trainer, ids, att, head, score_mask=mask)
                sums, abs_max = mismatch_sums(lp, gen, mask, cfg)
                stats = mismatch_stats(sums, float(abs_max), float(mask.sum()), cfg)
                rows.append((gen_dtype, trainer_dtype, head, int(mask.sum()), stats))
    n_prompts, new = args.prompts, args.max_new_tokens
    print(f"{what}; {n_prompts} prompts x {args.samples} samples, temperature 1, <= {new} new tokens, 1 thread")
    print()
    print("| generator | trainer | FP32 LM head | tokens | mismatch_kl | mean abs dlogp | max abs dlogp |")
    print("|---|---|---|---|---|---|---|")
    for gen_dtype, trainer_dtype, head, n, s in rows:
        print(
            f"| {gen_dtype} | {trainer_dtype} | {'on' if head else 'off'} | {n} | {s['mismatch_kl']:.2e} "
            f"| {s['mismatch_abs_mean']:.2e} | {s['mismatch_abs_max']:.2e} |"
        )
    print(f"\n({time.perf_counter() - t0:.1f} s)")


if __name__ == "__main__":
    main()
