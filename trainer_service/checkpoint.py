"""Resumable trainer checkpoints, written atomically, and the rules for resuming from them (docs/run-dir.md).

Layout: checkpoints/step-000042/{model.safetensors, optimizer.pt, rng.safetensors, state.json} plus
checkpoints/latest naming the newest complete one. A checkpoint is built in a hidden temp directory and
renamed into place, so a kill at any moment leaves the previous checkpoint intact. Weights use safetensors;
the optimizer state (tensors plus plain containers) uses torch.save and is read back with weights_only=True,
so loading never executes pickled code.

Resuming trusts no pointer: it walks the step directories newest first by step number and takes the first one
that verifies, naming each one it skips and why. Files can still be damaged after the rename (a full disk on
another writer, a copy cut short, a hand edit), and going back silently to step 0 would cost a whole run.
"""

from __future__ import annotations

import json
import logging
import random
import re
import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from scalerl.shared.errors import one_line
from scalerl.shared.run_dir import RunDirError, atomic_write_text, writing

LATEST = "latest"
BROKEN_PREFIX = "broken-"
_STEP_DIR = re.compile(r"step-(\d+)")
FILES = ("state.json", "model.safetensors", "optimizer.pt", "rng.safetensors")

log = logging.getLogger("scalerl.trainer")


class CheckpointError(RunDirError):
    """A checkpoint that cannot be loaded; the message names the file and what is wrong with it."""


def save_checkpoint(
    root: Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict, keep: int = 2
) -> Path:
    """Write step `step` and prune to the newest `keep` by step number; the new one is never pruned.

    A failed write (disk full) removes its temp directory and raises a RunDirError naming the file."""
    root = Path(root)
    name = f"step-{step:06d}"
    final = root / name
    tmp = root / f".tmp-{name}"
    with writing(tmp):
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    try:
        tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        with writing(tmp / "model.safetensors"):
            save_file(_untie(tensors), str(tmp / "model.safetensors"))
        # Through a Python file, a full disk is an OSError; torch.save to a path reports it as "unexpected pos".
        with writing(tmp / "optimizer.pt"), open(tmp / "optimizer.pt", "wb") as f:
            torch.save(optimizer.state_dict(), f)
        with writing(tmp / "rng.safetensors"):
            save_file({"torch": torch.get_rng_state()}, str(tmp / "rng.safetensors"))
        # The legacy (default) form is always this tuple; numpy's stubs widen it to dict | tuple.
        numpy_state = cast(tuple[str, np.ndarray, int, int, float], np.random.get_state())
        name_, keys, pos, has_gauss, gauss = numpy_state
        host_rng = {"python": _jsonable(random.getstate()), "numpy": [name_, keys.tolist(), pos, has_gauss, gauss]}
        with writing(tmp / "state.json"):
            (tmp / "state.json").write_text(json.dumps({"step": step, "state": state, "rng": host_rng}))
        with writing(final):
            if final.exists():  # re-saving the same step (e.g. SIGTERM right after a periodic save)
                shutil.rmtree(final)
            tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a half checkpoint only takes space a retry needs
        raise
    atomic_write_text(root / LATEST, name + "\n")
    _prune(root, keep, final)
    return final


def _prune(root: Path, keep: int, written: Path) -> None:
    # By step number: names sort the same only up to 999999 steps, and after a resume that went back, older
    # runs' higher steps must not push out the checkpoint just written.
    dirs = [p for _, p in checkpoint_dirs(root)]
    kept = set(dirs[-max(keep, 1) :]) | {written}
    for old in dirs:
        if old not in kept:
            shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".tmp-step-*"):  # left by a kill mid-save; one trainer writes a run dir at a time
        shutil.rmtree(stale, ignore_errors=True)


def checkpoint_dirs(root: Path) -> list[tuple[int, Path]]:
    """(step, directory) of every step-N directory under root, oldest step first (temp and set-aside dirs excluded)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_DIR.fullmatch(p.name)
        if m and p.is_dir():
            found.append((int(m.group(1)), p))
    return sorted(found)


def verify_checkpoint(path: Path) -> str | None:
    """Why `path` cannot be resumed from (naming the file), or None. Cheap: reads headers, not tensors.

    state.json must parse and agree with the directory's step; the safetensors files must be as long as their
    headers say; optimizer.pt must be a complete torch zip archive (its index sits at the end of the file)."""
    path = Path(path)
    m = _STEP_DIR.fullmatch(path.name)
    if m is None:
        return f"{path}: not a step-N checkpoint directory"
    state_file = path / "state.json"
    try:
        meta = json.loads(state_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"{state_file}: missing"
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return f"{state_file}: not valid JSON ({one_line(e)})"
    except OSError as e:
        return f"{state_file}: unreadable ({e.strerror or e})"
    if not isinstance(meta, dict) or not isinstance(meta.get("state"), dict) or not isinstance(meta.get("rng"), dict):
        return f"{state_file}: lacks the step, state or rng entry"
    if meta.get("step") != int(m.group(1)):
        return f"{state_file}: says step {meta.get('step')!r} but the directory is step {int(m.group(1))}"
    for name in ("model.safetensors", "rng.safetensors"):
        problem = _safetensors_problem(path / name)
        if problem:
            return problem
    return _torch_file_problem(path / "optimizer.pt")


def _safetensors_problem(p: Path) -> str | None:
    try:
        size = p.stat().st_size
        with open(p, "rb") as f:
            head = f.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else -1
            if n < 0 or n > size - 8:
                return f"{p}: truncated ({size} bytes, shorter than its header)"
            header = json.loads(f.read(n))
    except FileNotFoundError:
        return f"{p}: missing"
    except OSError as e:
        return f"{p}: unreadable ({e.strerror or e})"
    except (json.JSONDecodeError, UnicodeDecodeError):
        return f"{p}: not a safetensors file (its header is not JSON)"
    try:
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (AttributeError, KeyError, TypeError, ValueError, IndexError):
        return f"{p}: not a safetensors file (malformed header)"
    if size != 8 + n + end:
        return f"{p}: truncated ({size} bytes, its header needs {8 + n + end})"
    return None


def _torch_file_problem(p: Path) -> str | None:
    try:
        with zipfile.ZipFile(p) as z:
            names = z.namelist()
    except FileNotFoundError:
        return f"{p}: missing"
    except (zipfile.BadZipFile, OSError) as e:
        return f"{p}: not a complete torch file, truncated? ({one_line(e)})"
    if not any(n.endswith("data.pkl") for n in names):
        return f"{p}: not a torch file (no data.pkl inside)"
    return None


def find_resumable(root: Path) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest checkpoint (by step number) that verifies, and the newer ones skipped with the reason."""
    skipped: list[tuple[Path, str]] = []
    for _, path in reversed(checkpoint_dirs(root)):
        reason = verify_checkpoint(path)
        if reason is None:
            return path, skipped
        skipped.append((path, reason))
    return None, skipped


def nothing_to_resume(root: Path, skipped: list[tuple[Path, str]]) -> str:
    why = "; ".join(reason for _, reason in skipped) if skipped else "none was written"
    return f"{root}: no checkpoint to resume from ({why}); pass --resume-from-scratch to start over at step 0"


def latest_checkpoint(root: Path) -> Path | None:
    """The checkpoint a resume would take (the `latest` pointer is informational only)."""
    return find_resumable(root)[0]


@dataclass
class Resumed:
    path: Path | None  # None: started over at step 0 (--resume-from-scratch)
    step: int
    state: dict
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def resume_checkpoint(
    root: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    from_scratch: bool = False,
    tidy: bool = True,
) -> Resumed:
    """Restore the newest checkpoint that verifies and loads; log each one skipped and the one taken.

    With none: a CheckpointError (exit 2) naming every reason, unless `from_scratch`, which starts at step 0.
    `tidy` (rank 0 only) renames skipped checkpoints to broken-step-N, kept for inspection but out of the way of
    later resumes and of pruning, and points `latest` at the one taken."""
    root = Path(root)
    skipped: list[tuple[Path, str]] = []
    for _, path in reversed(checkpoint_dirs(root)):
        reason = verify_checkpoint(path)
        if reason is None:
            try:
                step, state = load_checkpoint(path, model, optimizer)
            except CheckpointError as e:
                reason = str(e)
            except Exception as e:  # a damaged tensor payload fails only on the full read
                reason = f"{path}: does not load ({type(e).__name__}: {one_line(e)})"
        if reason is not None:
            log.warning("resume: skipping %s: %s", path.name, reason)
            skipped.append((path, reason))
            continue
        log.info("resume: continuing from %s (step %d)", path, step)
        if tidy:
            _set_aside(skipped)
            atomic_write_text(root / LATEST, path.name + "\n")
        return Resumed(path, step, state, skipped)
    if not from_scratch:
        raise CheckpointError(nothing_to_resume(root, skipped))
    log.warning("resume: no checkpoint in %s to resume from; starting over at step 0 (--resume-from-scratch)", root)
    if tidy:
        _set_aside(skipped)
        (root / LATEST).unlink(missing_ok=True)
    return Resumed(None, 0, {}, skipped)


def _set_aside(skipped: list[tuple[Path, str]]) -> None:
    for path, _ in skipped:
        target = path.with_name(BROKEN_PREFIX + path.name)
        n = 1
        while target.exists():
            n += 1
            target = path.with_name(f"{BROKEN_PREFIX}{path.name}.{n}")
        with writing(target):
            path.rename(target)
        log.warning("resume: set %s aside as %s (delete it when done looking)", path.name, target.name)


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None) -> tuple[int, dict]:
    """Restore model, optimizer and RNG in place; returns (step, the caller's state dict).

    Everything is read and checked before anything is changed, so a checkpoint that fails to load leaves the
    model and optimizer as they were (the resume then tries an older one)."""
    path = Path(path)
    problem = verify_checkpoint(path)
    if problem:
        raise CheckpointError(problem)
    meta = json.loads((path / "state.json").read_text(encoding="utf-8"))
    weights = load_file(str(path / "model.safetensors"))
    expected = model.state_dict()
    # Tied weights are stored once; anything else missing is a real mismatch.
    missing = [k for k in expected if k not in weights and not _is_tied(model, k)]
    unexpected = [k for k in weights if k not in expected]
    reshaped = [k for k in weights if k in expected and tuple(weights[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or reshaped:
        raise CheckpointError(
            f"{path / 'model.safetensors'}: does not match the model (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}, other shape {reshaped[:3]})"
        )
    optim_state: dict = torch.load(path / "optimizer.pt", weights_only=True) if optimizer is not None else {}
    torch_rng = load_file(str(path / "rng.safetensors"))["torch"]
    try:
        name_, keys, pos, has_gauss, gauss = meta["rng"]["numpy"]
        python_rng = _tuplify(meta["rng"]["python"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path / 'state.json'}: malformed rng entry ({one_line(e)})") from None
    if optimizer is not None:
        try:  # checks the parameter groups before it changes anything
            optimizer.load_state_dict(optim_state)
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"{path / 'optimizer.pt'}: does not match the optimizer ({one_line(e)})") from None
    model.load_state_dict(weights, strict=False)
    torch.set_rng_state(torch_rng)
    random.setstate(python_rng)
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
