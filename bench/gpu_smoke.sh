#!/usr/bin/env bash
# GPU smoke test of the trainer's numerics, a few minutes on one GPU. Run from anywhere:
#   bash bench/gpu_smoke.sh               # DEVICE=cuda
#   DEVICE=cpu bash bench/gpu_smoke.sh    # dry run of the same steps on CPU (bf16 FSDP2 over a 1-rank gloo mesh)
# Steps:
#   1. the trainer's step on $DEVICE in bf16 with FSDP2 at world size 1 (FP32 master weights, FP32 head);
#   2. a $TOKENS-token step (default 4096 on cuda, 512 on cpu) of a random-initialised ~103M Qwen3 model, without
#      and with activation checkpointing: tokens/s and peak memory;
#   3. the tiny default pipeline (`scalerl train`, $PIPELINE_STEPS steps) with the trainer on $DEVICE.
# Needs torch and transformers. Step 3 also needs pyzmq, msgpack, click, rich, scipy and tomli-w: missing ones are
# installed from $WHEELS (default build/wheels; fill it on a machine with internet with
#   pip download pyzmq msgpack click rich scipy tomli-w -d build/wheels --python-version 3.11 --only-binary=:all:
# ), else step 3 is skipped with a message. The tiny model comes from $SCALERL_CACHE, else build/scalerl-cache if it
# exists, else ~/.cache/scalerl: copy ~/.cache/scalerl/tiny-addition-* to build/scalerl-cache and carry it to a
# fresh machine, or its warm start (~5 minutes on CPU) runs first.
# Results: one JSON line per check, and $OUT/gpu_smoke/ (default build/gpu_smoke_out) holds the pipeline's run dir.
set -uo pipefail
cd "$(dirname "$0")/.."
DEVICE=${DEVICE:-cuda}
if [ "$DEVICE" = cpu ]; then TOKENS=${TOKENS:-512}; else TOKENS=${TOKENS:-4096}; fi
PIPELINE_STEPS=${PIPELINE_STEPS:-10}
WHEELS=${WHEELS:-build/wheels}
# A carried build/scalerl-cache wins over the default cache (~/.cache/scalerl), which a fresh GPU machine lacks.
if [ -z "${SCALERL_CACHE:-}" ] && [ -d build/scalerl-cache ]; then export SCALERL_CACHE=$PWD/build/scalerl-cache; fi
RESULTS=${OUT:-build/gpu_smoke_out}/gpu_smoke
PY=${PYTHON:-python}
mkdir -p "$RESULTS"

# The repo's folders import as scalerl.<folder> (pyproject package-dir); without an install, a link tree does it.
if ! $PY -c "import scalerl.trainer_service" 2>/dev/null; then
  mkdir -p build/gpu_smoke/scalerl
  for d in shared trainer_service generator_service cli curvefit; do ln -sfn "../../../$d" "build/gpu_smoke/scalerl/$d"; done
  export PYTHONPATH="$PWD/build/gpu_smoke${PYTHONPATH:+:$PYTHONPATH}"
fi
export DEVICE
fail=0
step() { echo "== $*" >&2; }

step "1. FSDP2 world size 1, bf16, on $DEVICE"
$PY bench/gpu_smoke.py fsdp || fail=1

step "2. $TOKENS-token step, ~103M Qwen3, activation checkpointing off / on"
$PY bench/gpu_smoke.py long --tokens "$TOKENS" --ac 0 || fail=1
$PY bench/gpu_smoke.py long --tokens "$TOKENS" --ac 1 || fail=1

step "3. tiny default pipeline, trainer on $DEVICE, $PIPELINE_STEPS steps"
missing=$($PY - <<'EOF'
import importlib.util
mods = {"zmq": "pyzmq", "msgpack": "msgpack", "click": "click", "rich": "rich", "scipy": "scipy", "tomli_w": "tomli-w"}
print(" ".join(p for m, p in mods.items() if importlib.util.find_spec(m) is None))
EOF
)
if [ -n "$missing" ] && [ -d "$WHEELS" ]; then
  $PY -m pip install --quiet --no-index --find-links "$WHEELS" $missing || true
  missing=$($PY -c "
import importlib.util
mods = {'zmq': 'pyzmq', 'msgpack': 'msgpack', 'click': 'click', 'rich': 'rich', 'scipy': 'scipy', 'tomli_w': 'tomli-w'}
print(' '.join(p for m, p in mods.items() if importlib.util.find_spec(m) is None))")
fi
if [ -n "$missing" ]; then
  echo "{\"check\": \"pipeline\", \"ok\": null, \"skipped\": \"missing $missing; put wheels in $WHEELS (see the header)\"}"
else
  run="$RESULTS/run-$(date +%s)"
  t0=$(date +%s)
  # The trainer's device and dtype; the generator stays on the CPU torch backend (no vLLM there).
  $PY -m scalerl.cli train --run-dir "$run" --max-steps "$PIPELINE_STEPS" \
      --set trainer.device="$DEVICE" --set trainer.eval_prompts=50 --set trainer.eval_every="$PIPELINE_STEPS" \
      > "$RESULTS/pipeline.log" 2>&1
  rc=$?
  summary=$($PY - "$run" "$rc" "$PIPELINE_STEPS" "$(( $(date +%s) - t0 ))" "$RESULTS/pipeline.log" <<'EOF'
import json, sys
run, rc, want, seconds, log = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
try:
    lines = [json.loads(x) for x in open(f"{run}/metrics.jsonl") if x.strip()]
except OSError:
    lines = []
train = [x for x in lines if x.get("kind") == "train"]
evals = [(x["step"], round(x["pass_rate"], 3)) for x in lines if x.get("kind") == "eval"]
ok = rc == 0 and len(train) >= want
print(json.dumps({"check": "pipeline", "ok": ok, "exit": rc, "train_lines": len(train), "seconds": int(seconds),
                  "evals": evals, "device": train[-1].get("device") if train else None, "log": log}))
EOF
)
  echo "$summary"
  case "$summary" in *'"ok": true'*) ;; *) tail -20 "$RESULTS/pipeline.log" >&2; fail=1 ;; esac
fi
exit $fail
