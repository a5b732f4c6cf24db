"""Write examples/data/gsm8k_style.jsonl: GSM8K's format (question, worked answer ending "#### N") on problems the
built-in tiny model can do, so that the real format runs offline end to end.

    python examples/make_gsm8k_style.py [--out examples/data/gsm8k_style.jsonl] [--n 2000] [--seed 0]

GSM8K rows are {"question": ..., "answer": "<reasoning with <<calc>> annotations>\\n#### 72"}. The tiny model is a
character model warm-started on two-digit sums ("37+45=" -> "82") and cannot read word problems, so the questions
here are those sums; the answers are written as GSM8K writes them, and the `math` verifier reads the gold after
"####". Train on it with:

    scalerl train --set trainer.task.name=jsonl --set trainer.task.path=examples/data/gsm8k_style.jsonl \\
        --set trainer.task.prompt_field=question --set trainer.task.verifier=math

Deterministic: the same arguments write the same file.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path


def rows(n: int, seed: int) -> list[dict]:
    pairs = [(a, b) for a in range(10, 100) for b in range(10, 100)]
    random.Random(seed).shuffle(pairs)
    return [
        {
            "id": f"gsm8k-style-{i}",
            "question": f"{a}+{b}=",
            "answer": f"{a}+{b} = <<{a}+{b}={a + b}>>{a + b}\n#### {a + b}",
        }
        for i, (a, b) in enumerate(pairs[:n])
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "data" / "gsm8k_style.jsonl")
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("".join(json.dumps(r) + "\n" for r in rows(args.n, args.seed)))
    print(f"wrote {args.n} rows to {args.out}")


if __name__ == "__main__":
    main()
