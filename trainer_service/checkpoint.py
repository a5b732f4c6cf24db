"""Resumable trainer checkpoints, written atomically.

Layout: checkpoints/step-000042/{model.safetensors, optimizer.pt, rng.safetensors, state.json} plus
checkpoints/latest naming the newest complete one. A checkpoint is built in a hidden temp directory and
renamed into place, so a kill at any moment leaves the previous checkpoint intact. Weights use safetensors;
the optimizer state (tensors plus plain containers) uses torch.save and is read back with weights_only=True,
so loading never executes pickled code.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import cast

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from scalerl.shared.run_dir import atomic_write_text

LATEST = "latest"


def save_checkpoint(
    root: Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict, keep: int = 2
) -> Path:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:06d}"
    final = root / name
    tmp = root / f".tmp-{name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(_untie(tensors), str(tmp / "model.safetensors"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    save_file({"torch": torch.get_rng_state()}, str(tmp / "rng.safetensors"))
    # The legacy (default) form is always this tuple; numpy's stubs widen it to dict | tuple.
    numpy_state = cast(tuple[str, np.ndarray, int, int, float], np.random.get_state())
    name_, keys, pos, has_gauss, gauss = numpy_state
    host_rng = {"python": _jsonable(random.getstate()), "numpy": [name_, keys.tolist(), pos, has_gauss, gauss]}
    (tmp / "state.json").write_text(json.dumps({"step": step, "state": state, "rng": host_rng}))
    if final.exists():  # re-saving the same step (e.g. SIGTERM right after a periodic save)
        shutil.rmtree(final)
    tmp.rename(final)
    atomic_write_text(root / LATEST, name + "\n")
    for old in sorted(p for p in root.glob("step-*") if p.is_dir())[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(root: Path) -> Path | None:
    pointer = Path(root) / LATEST
    if not pointer.exists():
        return None
    path = Path(root) / pointer.read_text().strip()
    return path if (path / "state.json").exists() else None


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None) -> tuple[int, dict]:
    """Restore model, optimizer and RNG in place; returns (step, the caller's state dict)."""
    path = Path(path)
    weights = load_file(str(path / "model.safetensors"))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    # Tied weights are stored once; anything else missing is a real mismatch.
    missing = [k for k in missing if not _is_tied(model, k)]
    if missing or unexpected:
        raise ValueError(
            f"{path}: checkpoint does not match the model (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    if optimizer is not None:
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    torch.set_rng_state(load_file(str(path / "rng.safetensors"))["torch"])
    meta = json.loads((path / "state.json").read_text())
    random.setstate(_tuplify(meta["rng"]["python"]))
    name_, keys, pos, has_gauss, gauss = meta["rng"]["numpy"]
    np.random.set_state((name_, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    return int(meta["step"]), meta["state"]


def _untie(tensors: dict) -> dict:
    # safetensors refuses tensors that share storage (tied embeddings): store each storage once.
    seen, out = set(), {}
    for k, v in tensors.items():
        ptr = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape))
        if ptr in seen:
            continue
        seen.add(ptr)
        out[k] = v
    return out


def _is_tied(model, key) -> bool:
    tied = getattr(model, "_tied_weights_keys", None) or []
    if isinstance(tied, dict):
        tied = list(tied)
    return key in tied or any(key.endswith(t) for t in tied)


def _jsonable(obj):
    return [_jsonable(x) for x in obj] if isinstance(obj, tuple) else obj


def _tuplify(obj):
    return tuple(_tuplify(x) for x in obj) if isinstance(obj, list) else obj
