#!/usr/bin/env bash
# Fills bench/wheels/ for bench/gpu_check.sh on a machine with network, once, from an activated scalerl venv.
#
# bench/wheels/ is ignored by git: a device run gets it only when named in its carry list (carry: ["bench/wheels"]).
# It holds the cp312 manylinux wheels of what the GPU machine's Python 3.12 lacks (pyzmq, tomli-w; safetensors and
# msgpack in case), pure-Python wheels as they are, and scalerl-cache/: the warm built-in tiny model the pipeline
# step needs, copied from this machine's cache (built here first if missing: about 5 minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=${WHEELS:-bench/wheels}
PY_VERSION=${PY_VERSION:-3.12}
mkdir -p "$WHEELS"

python3 -m pip download -q --only-binary=:all: --python-version "$PY_VERSION" --implementation cp \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
  -d "$WHEELS" pyzmq tomli-w safetensors msgpack

cache=$(python3 -c "from scalerl.shared.models.tiny_model import ensure_tiny_model; print(ensure_tiny_model())")
rm -rf "$WHEELS/scalerl-cache"
mkdir -p "$WHEELS/scalerl-cache"
cp -r "$cache" "$WHEELS/scalerl-cache/"
ls -l "$WHEELS" "$WHEELS/scalerl-cache"
du -sh "$WHEELS"
