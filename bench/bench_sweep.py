"""The leave-one-out sweep of the full recipe on the built-in tiny model, then the paper-style table.

Runs `scalerl sweep SWEEP_DIR --leave-one-out --config examples/full_recipe.toml --max-minutes M` (every variant gets
the same wall time, so the same GPU-hours), then `scalerl compare SWEEP_DIR --json` and `scalerl plot SWEEP_DIR`,
and prints the table of docs/sweeps.md in markdown. An interrupted bench continues where it stopped (the sweep's
own --resume).

Run: python bench/bench_sweep.py [SWEEP_DIR] [minutes per variant]   (defaults runs/loo-sweep, 3)
"""

import json
import subprocess
import sys
from pathlib import Path


def cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "scalerl.cli", *map(str, args)], **kw)


def main():
    sweep = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("runs/loo-sweep")
    minutes = float(sys.argv[2]) if len(sys.argv) > 2 else 3.0
    config = Path(__file__).resolve().parent.parent / "examples" / "full_recipe.toml"
    if (sweep / "sweep.json").exists():
        cli("sweep", sweep, "--resume", check=True)
    else:
        cli("sweep", sweep, "--leave-one-out", "--config", config, "--max-minutes", minutes, check=True)
    # A few minutes give each variant 5-10 evaluations: none can be spared for the warm-up rule (the same choice
    # as scalerl train's own end-of-run fit).
    fit_args = ["--exclude-before", 0]
    doc = json.loads(cli("compare", sweep, "--json", *fit_args, capture_output=True, text=True, check=True).stdout)
    cli("plot", sweep, "-o", sweep / "sweep.png", *fit_args, check=True)
    (sweep / "compare.json").write_text(json.dumps(doc, indent=1))
    runs = {r["name"]: r for r in doc["runs"]}
    verdicts = {row["variant"]: row for row in doc["sweep"]["ingredients"]}
    pairs = {p["runs"][1]: p for p in doc["pairs"]}

    def ci(r, k, fmt):
        lo, hi = r["ci"][k]
        return f"{fmt.format(r[k])} [{fmt.format(lo)}, {fmt.format(hi)}]"

    cols = ["variant", "drops", "evals", "last pass rate", "A [90%]", "B [90%]", "C_mid (GPU-h) [90%]"]
    print("| " + " | ".join(cols + ["shared-A B (base / variant)", "effect"]) + " |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in runs.items():
        v, p = verdicts.get(name), pairs.get(name)
        shared = p.get("shared_A") if p else None
        b = f"{shared['B'][doc['sweep']['baseline']]:.2f} / {shared['B'][name]:.2f}" if shared else "-"
        effect = f"{v['effect']} ({v['basis']})" if v and v["basis"] else (v["effect"] if v else "(baseline)")
        drops = f"{v['ingredient']} -> {v['alternative']}" if v else "-"
        evals = [json.loads(x) for x in (sweep / name / "run" / "metrics.jsonl").read_text().splitlines()]
        evals = [e for e in evals if e["kind"] == "eval"]
        last = f"{evals[-1]['pass_rate']:.3f} (step {evals[-1]['step']})"
        a = ci(r, "A", "{:.3f}") + ("" if r["identified"] else " (not identified)")
        row = [name, drops, str(len(evals)), last, a, ci(r, "B", "{:.2f}"), ci(r, "C_mid", "{:.3g}"), b, effect]
        print("| " + " | ".join(row) + " |")
    print(f"\nplot: {sweep / 'sweep.png'}; compare: {sweep / 'compare.json'}")


if __name__ == "__main__":
    main()
