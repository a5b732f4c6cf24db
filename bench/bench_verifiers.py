"""Can verification keep up with generation? Verifier throughput (completions/s) next to a generator's.

    python bench/bench_verifiers.py [--n 400] [--code-n 100] [--workers 1 2 4] [--threads 1] [--json]

- math: the `math` verifier (math-verify) on GSM8K / MATH-style completions, half right, half wrong, every
  gold answer distinct (so the gold-parse cache does not flatter it);
- code: the `code` verifier, one sandboxed process per completion (a small function and its asserts), in a
  thread pool of each --workers size (the sandbox waits on a child process, so threads overlap). With bwrap
  installed that is bwrap + a uid of the run's own + seccomp (docs/tasks.md); the line "sandbox" says which;
- numeric and exact, for reference;
- generator: the torch engine on the built-in tiny model, addition prompts, the embedded run's sampling
  (max_new_tokens 16, batch 128), completions/s on --threads threads.

A generator scores each completion in its own loop, so a verifier slower than the generator caps the run.
Nothing is downloaded; the tiny model is built on first use (cached).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from concurrent.futures import ThreadPoolExecutor


def math_cases(n: int, rng: random.Random) -> list[tuple[str, str]]:
    cases = []
    for i in range(n):
        a, b = rng.randrange(10, 999), rng.randrange(2, 99)
        kind, off = i % 3, i % 2  # odd cases are off by one somewhere
        if kind == 0:  # GSM8K: worked answer with "#### N"
            gold = f"{a} boxes of {b} is {a}*{b} = <<{a}*{b}={a * b}>>{a * b}.\n#### {a * b}"
            got = a * b + off
            completion = f"Each box holds {b}, so {a} boxes hold {a}*{b} = {got}.\n#### {got}"
        elif kind == 1:  # MATH: a fraction in a solution's \\boxed{}
            gold = f"Reduce: $\\boxed{{\\frac{{{a}}}{{{b}}}}}$"
            frac = f"\\frac{{{2 * a + off}}}{{{2 * b}}}"
            completion = f"The ratio is ${frac}$, so the answer is $\\boxed{{{frac}}}$."
        else:  # symbolic
            gold = f"x^2 + {2 * b}x + {b * b}"
            completion = f"Expanding gives \\boxed{{(x+{b + off})^2}}"
        cases.append((completion, gold))
    return cases


def code_cases(n: int, rng: random.Random) -> list[tuple[str, str]]:
    cases = []
    for i in range(n):
        a = rng.randrange(2, 50)
        body = f"def f(x):\n    return x * {a}\n" if i % 2 == 0 else f"def f(x):\n    return x + {a}\n"
        cases.append((f"```python\n{body}```", f"assert f(3) == {3 * a}\nassert f(0) == 0"))
    return cases


def rate(fn, cases, workers: int = 1) -> tuple[float, float]:
    """(completions/s, share rewarded)."""
    t0 = time.perf_counter()
    if workers == 1:
        rewards = [fn(c, a)[0] for c, a in cases]
    else:
        with ThreadPoolExecutor(workers) as pool:
            rewards = list(pool.map(lambda ca: fn(*ca)[0], cases))
    return len(cases) / (time.perf_counter() - t0), sum(rewards) / len(rewards)


def generator_rate(threads: int, n_prompts: int = 256, max_new_tokens: int = 16, batch: int = 128) -> float:
    import torch

    from scalerl.generator_service.backend import EngineRequest, EngineSampling
    from scalerl.generator_service.engine.torch_engine import TorchEngine, TorchEngineConfig
    from scalerl.shared.models.tiny_model import ensure_tiny_model, load_model_dir
    from scalerl.shared.tasks.catalog import get_task

    torch.set_num_threads(threads)
    model_dir = ensure_tiny_model()
    _, tokenizer = load_model_dir(model_dir)
    engine = TorchEngine.from_pretrained(str(model_dir), TorchEngineConfig(max_batch=batch, threads=threads))
    sampling = EngineSampling(temperature=1.0, max_new_tokens=max_new_tokens, stop_token_ids=(tokenizer.eos_token_id,))
    items = get_task("addition").train_items[:n_prompts]
    requests = [EngineRequest(str(i), tuple(tokenizer(it.prompt).input_ids), sampling) for i, it in enumerate(items)]
    t0 = time.perf_counter()
    engine.add_requests(requests)
    done = 0
    while engine.has_unfinished():
        engine.step()
        done += len(engine.collect_finished())
    done += len(engine.collect_finished())
    return done / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=400, help="math / numeric / exact completions")
    p.add_argument("--code-n", type=int, default=100, help="code completions per worker count")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--threads", type=int, default=1, help="torch threads of the generator")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()

    from scalerl.shared.tasks.code_verifier import code_match
    from scalerl.shared.tasks.math_verifier import math_match
    from scalerl.shared.tasks.sandbox import backend, run_python
    from scalerl.shared.tasks.verifiers import exact_match, numeric_match

    rng = random.Random(0)
    maths = math_cases(args.n, rng)
    math_match(*maths[0])  # imports (sympy, the LaTeX parser) are not throughput
    out: dict = {"backend": backend(), "isolation": list(run_python("pass").isolation)}
    out["math"], out["math_reward"] = rate(math_match, maths)
    out["numeric"], _ = rate(numeric_match, maths)
    out["exact"], _ = rate(exact_match, maths)
    codes = code_cases(args.code_n, rng)
    code_match(*codes[0])
    for w in args.workers:
        out[f"code_w{w}"], out["code_reward"] = rate(code_match, codes, w)
    out["generator"] = generator_rate(args.threads)
    if args.json:
        print(json.dumps(out))
        return
    gen = out["generator"]
    print(f"sandbox: {out['backend']} ({', '.join(out['isolation']) or 'rlimits, seccomp and audit hook only'})")
    print(f"generator (tiny model, torch engine, {args.threads} thread(s)): {gen:8.1f} completions/s")
    rows = [("math (math-verify)", out["math"]), ("numeric", out["numeric"]), ("exact", out["exact"])]
    rows += [(f"code, {w} worker(s)", out[f"code_w{w}"]) for w in args.workers]
    for name, r in rows:
        print(f"{name:<28}{r:10.1f} completions/s  {r / gen:8.2f}x the generator")
    print(f"(rewarded: math {out['math_reward']:.2f}, code {out['code_reward']:.2f}; both should be 0.50)")


if __name__ == "__main__":
    main()
