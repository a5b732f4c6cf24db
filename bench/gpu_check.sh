#!/usr/bin/env bash
# The prepared GPU check (docs/scaling.md, "The prepared GPU check"): one JSON line per step, printed and appended
# to $OUT, each step in its own process under its own `timeout`, so a failed or hung step leaves a line with its
# error and the next one still runs. About 4 minutes on one H100, at most ~7.5 (the sum of the timeouts).
#
#   bench/gpu_check_prep.sh                  # on a machine with network, once: fills bench/wheels/
#   bench/gpu_check.sh                       # on the GPU machine (carry bench/wheels: it is ignored by git)
#   DEVICE=cpu bench/gpu_check.sh            # every step that can run on CPU, with tiny shapes (CI runs this)
#
# Environment: DEVICE (cuda), OUT (gpu_check.jsonl), WORK (build/gpu_check: the pipeline's run dir),
# WHEELS (bench/wheels), PIPELINE_STEPS (5), GPU_CHECK_LIMITS (below). Exit status: 1 if any step reported ok=false.
#
# The GPU machine is assumed bare and offline, with torch, transformers, msgpack, click, rich, scipy and numpy but
# no pyzmq or tomli-w: those come from $WHEELS with --no-index. scalerl itself is not installed: a link tree puts
# this checkout on PYTHONPATH as `scalerl.<folder>`, so the check always runs the tree's code (a wheel of it would
# be stale). The pipeline's warm tiny model comes from $WHEELS/scalerl-cache, which the prep script fills (building
# it here would take minutes).
set -u
# Paths given by the caller are the caller's; the defaults are the checkout's.
OUT=$(realpath -m "${OUT:-gpu_check.jsonl}")
[ -n "${WORK:-}" ] && WORK=$(realpath -m "$WORK")
[ -n "${WHEELS:-}" ] && WHEELS=$(realpath -m "$WHEELS")
cd "$(dirname "$0")/.."
DEVICE=${DEVICE:-cuda}
WORK=${WORK:-$PWD/build/gpu_check}
WHEELS=${WHEELS:-$PWD/bench/wheels}
export PIPELINE_STEPS=${PIPELINE_STEPS:-5}
export GPU_CHECK_DIR=$WORK
mkdir -p "$WORK" "$(dirname "$OUT")"
if [ -z "${SCALERL_CACHE:-}" ] && [ -d "$WHEELS/scalerl-cache" ]; then export SCALERL_CACHE=$WHEELS/scalerl-cache; fi

# Inside an activated venv python3 is the venv's: CI's fresh clone runs this way.
if ! python3 -c "import scalerl.trainer_service" 2>/dev/null; then
  mkdir -p "$WORK/path/scalerl"
  for d in shared trainer_service generator_service cli curvefit; do ln -sfn "$PWD/$d" "$WORK/path/scalerl/$d"; done
  export PYTHONPATH="$WORK/path${PYTHONPATH:+:$PYTHONPATH}"
fi

missing=$(python3 -c "
import importlib.util
mods = {'zmq': 'pyzmq', 'tomli_w': 'tomli-w', 'safetensors': 'safetensors', 'msgpack': 'msgpack'}
print(' '.join(p for m, p in mods.items() if importlib.util.find_spec(m) is None))")
if [ -n "$missing" ]; then
  echo "gpu_check: installing $missing from $WHEELS" >&2
  # A distribution's python may refuse a system-wide install (PEP 668): then into the user's site.
  python3 -m pip install -q --no-index --find-links "$WHEELS" $missing 2>/dev/null \
    || python3 -m pip install -q --no-index --find-links "$WHEELS" --user --break-system-packages $missing >&2 \
    || {
      # No pip at all, or it refused: a wheel is a zip that imports once unpacked onto the path.
      echo "gpu_check: pip could not install $missing; unpacking the wheels into $WORK/site" >&2
      python3 - "$WHEELS" "$WORK/site" $missing <<'EOF'
import glob, os, sys, zipfile
wheels, site, names = sys.argv[1], sys.argv[2], sys.argv[3:]
for name in names:
    found = sorted(glob.glob(os.path.join(wheels, name.replace("-", "_") + "-*.whl")))
    if found:
        zipfile.ZipFile(found[-1]).extractall(site)
    else:
        print(f"gpu_check: no wheel for {name} in {wheels}; the steps that need it will fail", file=sys.stderr)
EOF
      export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
    }
fi

# Seconds each step may take on an H100; the sum stays under 8 minutes with the install above. GPU_CHECK_LIMITS
# ("step:seconds ...") replaces the list: a subset of the steps, or other limits.
if [ "$DEVICE" = cpu ]; then
  limits="versions:60 fsdp:90 head:90 memory8b:90 publish:60 dcp:60 pipeline:150"
else
  limits="versions:30 fsdp:45 head:120 memory8b:75 publish:45 dcp:45 pipeline:90"
fi
limits=${GPU_CHECK_LIMITS:-$limits}

t0=$SECONDS
failed=""
for entry in $limits; do
  name=${entry%%:*} limit=${entry##*:}
  echo "gpu_check: $name (at most $limit s)" >&2
  timeout -k 10 "$limit" python3 bench/gpu_check.py "$name" --device "$DEVICE" >"$WORK/$name.out" 2>"$WORK/$name.log"
  rc=$?
  line=$(tail -n 1 "$WORK/$name.out")
  if ! python3 -c 'import json, sys; json.loads(sys.argv[1])' "$line" 2>/dev/null; then
    # Killed, crashed before printing, or printed something else: the line says which, with its log's last line.
    why="exit $rc"
    [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && why="timed out after $limit s"
    line=$(python3 -c 'import json, sys; print(json.dumps({"step": sys.argv[1], "device": sys.argv[2], "ok": False,
"error": ": ".join(x for x in (sys.argv[3], sys.argv[4][-400:]) if x)}))' "$name" "$DEVICE" "$why" \
      "$(tail -n 1 "$WORK/$name.log")")
  fi
  echo "$line" | tee -a "$OUT"
  case "$line" in *'"ok": false'*) failed="$failed $name" ;; esac
done
python3 -c 'import json, sys; print(json.dumps({"step": "total", "device": sys.argv[1], "ok": not sys.argv[2].split(),
"failed": sys.argv[2].split(), "wall_s": int(sys.argv[3])}))' "$DEVICE" "$failed" "$((SECONDS - t0))" | tee -a "$OUT"
echo "gpu_check: $((SECONDS - t0)) s on $DEVICE, lines in $OUT, logs in $WORK;${failed:+ failed:$failed}" >&2
[ -z "$failed" ]
