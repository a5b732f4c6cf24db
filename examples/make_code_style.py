"""Write examples/data/code_style.jsonl: a code-output task (CRUXEval-O's format: a Python expression, predict what it
evaluates to) sized for the built-in tiny model, so that a multi-task run works offline (examples/multitask.toml).

    python examples/make_code_style.py [--out examples/data/code_style.jsonl] [--n 1500] [--seed 1]

Each row is {"id", "code", "prompt", "answer"}: `code` is the expression, `prompt` is the expression followed by "="
(what the model sees), and `answer` is repr() of what Python evaluates `code` to, computed here by running it, as
CRUXEval computes its gold outputs. The verifier is `exact`: scoring needs no sandbox, so the task costs no more per
sample than addition (the `code` verifier's sandbox takes ~0.1 s a sample; bench/bench_verifiers.py).

Why only sums of two-digit literals: the tiny model is a character model warm-started on "37+45=" at the start of
the sequence, and any other surface (a `def` before it, spaces, parentheses, "==") takes its pass rate to about 0
at temperature 1, where RL has nothing to reinforce. The expressions here are drawn from a different slice of the
sums than examples/make_gsm8k_style.py's questions (sums above 100 only: a carry into the hundreds), so the two
tasks of the example have their own starting pass rates and curves.

Deterministic: the same arguments write the same file.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path


def rows(n: int, seed: int) -> list[dict]:
    exprs = [f"{a}+{b}" for a in range(10, 100) for b in range(10, 100) if a + b >= 100]
    random.Random(seed).shuffle(exprs)
    out = []
    for i, code in enumerate(exprs[:n]):
        value = eval(compile(code, "<code_style>", "eval"), {"__builtins__": {}})  # literals only, written above
        out.append({"id": f"code-style-{i}", "code": code, "prompt": f"{code}=", "answer": repr(value)})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "data" / "code_style.jsonl")
    p.add_argument("--n", type=int, default=1500)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("".join(json.dumps(r) + "\n" for r in rows(args.n, args.seed)))
    print(f"wrote {args.n} rows to {args.out}")


if __name__ == "__main__":
    main()
