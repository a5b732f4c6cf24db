"""Resumable trainer checkpoints, written atomically, and the rules for resuming from them (docs/run-dir.md).

Layout: checkpoints/step-000042/{.metadata, __R_0.distcp..., state.json, hf/} plus checkpoints/latest naming the
newest complete one. Model, optimizer and each rank's torch RNG go through torch.distributed.checkpoint (DCP):
every rank writes its own shard, and a later run loads them at any world size (DCP reshards), sharded (FSDP2) or
not. state.json (step, prompt pipeline, LR schedule, clock, host RNG, and the sha256 of every other file) is plain
JSON from rank 0; hf/ holds the config, generation config and tokenizer of the model the run trains, so
`scalerl export` needs nothing else. Nothing is unpickled unrestricted: the .metadata index through an allow-list of
DCP's classes, the optimizer's settings through torch's weights-only reader.

A checkpoint is built in a hidden temp directory and renamed into place by rank 0 after every rank has written,
so a kill at any moment leaves the previous checkpoint intact. With several ranks the run directory must be on a
file system every rank sees (docs/slurm.md).

Resuming trusts no pointer: it walks the step directories newest first by step number and takes the first one
that verifies and loads, naming each one it skips and why. Files can still be damaged after the rename (a full
disk on another writer, a copy cut short, a hand edit), and going back silently to step 0 would cost a whole run.
"""

from __future__ import annotations

import copy
import errno
import hashlib
import io
import json
import logging
import os
import pickle
import random
import re
import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.planner import ReadItem
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)
from torch.distributed.tensor import DTensor

from scalerl.shared.errors import one_line
from scalerl.shared.run_dir import RunDirError, atomic_write_text, write_error, writing

LATEST = "latest"
BROKEN_PREFIX = "broken-"
# Re-saving a step sets the old copy aside under this name until the new one is in place: a kill between the two
# renames leaves it there, and resuming takes it back (a kill never loses a checkpoint that was complete).
OLD_PREFIX = ".old-"
METADATA = ".metadata"  # DCP's index of every saved tensor and where it lies
CHECKSUMS = "sha256"  # state.json: the sha256 of every other file of the checkpoint, by relative path
HF_DIR = "hf"  # config, generation config and tokenizer of the trained model (export reads them)
_STEP_DIR = re.compile(r"step-(\d+)")
_OLD_STEP_DIR = re.compile(re.escape(OLD_PREFIX) + r"(step-(\d+))")
# Files of the model directory that are not weights: what an HF directory needs besides them.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".h5", ".msgpack", ".index.json")

log = logging.getLogger("scalerl.trainer")


class CheckpointError(RunDirError):
    """A checkpoint that cannot be loaded; the message names the file and what is wrong with it."""


class CheckpointLoadFailure(CheckpointError):
    """A checkpoint whose files match their checksums but whose load failed all the same: out of memory, a file
    system error, a bug. Not damage, so a resume neither sets it aside nor falls back to an older one (which would
    cut metrics.jsonl back to that step, lines that cannot be written again); it stops, exit 2."""


# -- ranks ------------------------------------------------------------------------------------------------------
# Saving and loading are collective: every rank calls them together. `group` is the CPU (gloo) group the ranks
# agree on; None is the default group.


def _world(group: dist.ProcessGroup | None) -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(group), dist.get_world_size(group)
    return 0, 1


def _from_rank0(obj: Any, group: dist.ProcessGroup | None) -> Any:
    """Rank 0's `obj` on every rank: one decision (which checkpoint, did the write work) for all of them."""
    if _world(group)[1] == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, group=group)
    return box[0]


@contextmanager
def _quiet_single_process() -> Iterator[None]:
    # DCP warns on every call without a process group that it assumes one process: that is our normal case.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
        yield


def _rank_rng_keys(rank: int) -> tuple[str, str]:
    return f"rng.torch.rank{rank}", f"rng.cuda.rank{rank}"


# -- saving -----------------------------------------------------------------------------------------------------


def save_checkpoint(
    root: Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict,
    keep: int = 2,
    model_dir: Path | None = None,
    group: dist.ProcessGroup | None = None,
) -> Path:
    """Write step `step` (every rank calls this) and prune to the newest `keep` by step number; the new one is
    never pruned. `model_dir`: the HF directory the model came from (its config and tokenizer are copied).

    A failed write (disk full) removes the temp directory and raises a RunDirError naming it, on every rank."""
    root = Path(root)
    rank, _ = _world(group)
    name = f"step-{step:06d}"
    final, tmp = root / name, root / f".tmp-{name}"
    problem = None
    if rank == 0:
        try:
            with writing(tmp):
                root.mkdir(parents=True, exist_ok=True)
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir()
        except RunDirError as e:
            problem = str(e)
    _raise_if(_from_rank0(problem, group))
    try:
        with _quiet_single_process():
            dcp.save(
                _full_state(model, optimizer, rank), storage_writer=dcp.FileSystemWriter(str(tmp)), process_group=group
            )
    except BaseException as e:
        error = _dcp_write_error(tmp, e)  # before the cleanup: a full disk is told by the space left
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)  # a half checkpoint only takes space a retry needs
        raise error from e
    problem = None
    if rank == 0:
        try:
            _finish(root, tmp, final, step, state, model_dir)
        except BaseException as e:
            shutil.rmtree(tmp, ignore_errors=True)  # a failed checkpoint leaves no temp dir (docs/run-dir.md)
            if not isinstance(e, RunDirError):
                raise
            problem = str(e)
    _raise_if(_from_rank0(problem, group))
    if rank == 0:
        atomic_write_text(root / LATEST, name + "\n")
        _prune(root, keep, final)
    return final


def _raise_if(problem: str | None) -> None:
    if problem is not None:
        raise RunDirError(problem)


def _full_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None, rank: int) -> dict:
    """What DCP saves: model and optimizer by parameter name (FSDP2 or plain, the same names) and this rank's
    torch RNG, under a key of its own (one tensor per rank, so DCP does not treat them as one replicated value)."""
    torch_key, cuda_key = _rank_rng_keys(rank)
    if optimizer is None:
        out: dict[str, Any] = {"model": get_model_state_dict(model)}
    else:
        model_sd, optim_sd = get_state_dict(model, optimizer)
        out = {"model": model_sd, "optim": optim_sd}
    out[torch_key] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out[cuda_key] = torch.cuda.get_rng_state()
    return out


def _finish(root: Path, tmp: Path, final: Path, step: int, state: dict, model_dir: Path | None) -> None:
    """Rank 0, after every rank wrote its shard: state.json, the model's HF files, then the rename."""
    if model_dir is not None:
        with writing(tmp / HF_DIR):
            copy_hf_files(Path(model_dir), tmp / HF_DIR)
    # The legacy (default) form is always this tuple; numpy's stubs widen it to dict | tuple.
    numpy_state = cast(tuple[str, np.ndarray, int, int, float], np.random.get_state())
    name_, keys, pos, has_gauss, gauss = numpy_state
    host_rng = {"python": _jsonable(random.getstate()), "numpy": [name_, keys.tolist(), pos, has_gauss, gauss]}
    meta = {"step": step, "state": state, "rng": host_rng, "world_size": _world(None)[1]}
    with writing(tmp):
        # Every other file's content, checked by a full load: sizes (verify_checkpoint) miss a flipped byte.
        meta[CHECKSUMS] = {rel: _sha256(tmp / rel) for rel in _checksummed_files(tmp)}
    with writing(tmp / "state.json"):
        (tmp / "state.json").write_text(json.dumps(meta))
        # On disk before the rename makes it the checkpoint to resume from, and before pruning removes the older
        # ones: after a power loss the rename may survive while unsynced contents do not.
        _fsync_tree(tmp)
    old = final.with_name(OLD_PREFIX + final.name)
    with writing(final):
        if final.exists():  # re-saving the same step (e.g. SIGTERM right after a periodic save)
            shutil.rmtree(old, ignore_errors=True)
            final.rename(old)  # not removed before the new one is in place: a kill here must not lose both
        tmp.rename(final)
        _fsync_dir(root)
    shutil.rmtree(old, ignore_errors=True)


def _fsync_tree(top: Path) -> None:
    """Every file under `top`, then every directory (its entries), deepest first."""
    dirs = [top]
    for p in sorted(top.rglob("*")):
        if p.is_dir():
            dirs.append(p)
        elif p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    for d in reversed(dirs):
        _fsync_dir(d)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # a platform that cannot open directories has no way to sync them either
        return
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):  # some file systems refuse a directory fsync
            raise
    finally:
        os.close(fd)


def _checksummed_files(top: Path) -> list[str]:
    return sorted(p.relative_to(top).as_posix() for p in top.rglob("*") if p.is_file() and p != top / "state.json")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def check_contents(path: Path) -> str | None:
    """Why the content of checkpoint `path` is not what was saved (naming the file), or None. Reads every file:
    the full load does this, verify_checkpoint (sizes only) does not. A checkpoint saved before checksums were
    written has none to check."""
    path = Path(path)
    try:
        sums = json.loads((path / "state.json").read_text(encoding="utf-8")).get(CHECKSUMS)
    except (OSError, ValueError, AttributeError) as e:
        return f"{path / 'state.json'}: unreadable ({one_line(e)})"
    if sums is None:
        return None
    if not isinstance(sums, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in sums.items()):
        return f"{path / 'state.json'}: malformed {CHECKSUMS} entry"
    for rel, want in sorted(sums.items()):
        file = path / rel
        if ".." in Path(rel).parts or Path(rel).is_absolute():
            return f"{path / 'state.json'}: {CHECKSUMS} names a file outside the checkpoint ({rel})"
        try:
            got = _sha256(file)
        except FileNotFoundError:
            return f"{file}: missing"
        except OSError as e:
            return f"{file}: unreadable ({e.strerror or e})"
        if got != want:
            return f"{file}: content differs from what was saved (sha256 mismatch: damaged)"
    return None


def _has_checksums(path: Path) -> bool:
    """Whether the checkpoint's state.json holds the sha256 of its files (every checkpoint since they were added)."""
    try:
        return isinstance(json.loads((Path(path) / "state.json").read_text(encoding="utf-8")).get(CHECKSUMS), dict)
    except (OSError, ValueError, AttributeError):
        return False


def copy_hf_files(model_dir: Path, out: Path) -> None:
    """The files of an HF model directory that are not weights (config, generation config, tokenizer)."""
    out.mkdir(parents=True, exist_ok=True)
    for p in sorted(Path(model_dir).iterdir()):
        if p.is_file() and not p.name.endswith(_WEIGHT_SUFFIXES):
            shutil.copy2(p, out / p.name)


def _dcp_write_error(tmp: Path, e: BaseException) -> BaseException:
    """DCP gathers each rank's failure into one CheckpointException; a full disk inside it says so, naming the
    checkpoint being written."""
    for c in _causes(e):
        mapped = write_error(tmp, c)
        if mapped is not None:
            return mapped
    return e


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
    for _, old in _set_aside_copies(root):
        if (root / old.name[len(OLD_PREFIX) :]).is_dir():  # the re-save it was set aside for finished
            shutil.rmtree(old, ignore_errors=True)


# -- verifying --------------------------------------------------------------------------------------------------


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


def _set_aside_copies(root: Path) -> list[tuple[int, Path]]:
    """(step, directory) of every .old-step-N a re-save set aside (one a kill stopped before it was removed)."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted((int(m.group(2)), p) for p in root.iterdir() if (m := _OLD_STEP_DIR.fullmatch(p.name)) and p.is_dir())


def _candidates(root: Path) -> list[tuple[int, Path]]:
    """checkpoint_dirs, plus each set-aside copy of a step whose step-N a kill left missing, oldest step first."""
    have = checkpoint_dirs(root)
    steps = {step for step, _ in have}
    return sorted(have + [(step, p) for step, p in _set_aside_copies(root) if step not in steps])


def _take_back_set_aside(root: Path) -> None:
    """Rank 0, before resuming: a set-aside copy whose step-N is missing (a kill between the re-save's renames)
    goes back in place; one whose step-N exists is what a finished re-save left, and goes."""
    for _, old in _set_aside_copies(root):
        final = old.with_name(old.name[len(OLD_PREFIX) :])
        if final.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            with writing(final):
                old.rename(final)
            log.warning("resume: %s was set aside by a re-save that did not finish; took it back", final.name)


class _MetadataUnpickler(pickle.Unpickler):
    """DCP's .metadata is a pickle: read it with only the classes a DCP index is made of, so a damaged or
    planted file is refused instead of executed. (DCP's own reader, which runs after this check, trusts it.)

    Exact (module, name) pairs, never a module prefix: pickle protocol 4 resolves a dotted name attribute by
    attribute, so (torch.distributed.checkpoint.filesystem, "os.system") would reach os.system. The list is what
    unpickling the indexes this code writes asks for (plain and FSDP2 models, any dtype, with and without an
    optimizer)."""

    _ALLOWED = {
        ("torch", "Size"),
        ("torch.serialization", "_get_layout"),
        ("pathlib", "PosixPath"),
        ("pathlib", "PurePosixPath"),
        ("collections", "OrderedDict"),
        ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
        ("torch.distributed.checkpoint.metadata", "BytesStorageMetadata"),
        ("torch.distributed.checkpoint.metadata", "ChunkStorageMetadata"),
        ("torch.distributed.checkpoint.metadata", "Metadata"),
        ("torch.distributed.checkpoint.metadata", "MetadataIndex"),
        ("torch.distributed.checkpoint.metadata", "StorageMeta"),
        ("torch.distributed.checkpoint.metadata", "TensorProperties"),
        ("torch.distributed.checkpoint.metadata", "TensorStorageMetadata"),
        ("torch.distributed.checkpoint.metadata", "_MEM_FORMAT_ENCODING"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if "." in name:  # protocol 4 walks a dotted name attribute by attribute: out of any module
            raise pickle.UnpicklingError(f"{module}.{name} is not part of a DCP index")
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a DCP index")


class _PlainBytesLoadPlanner(DefaultLoadPlanner):
    """DCP's default planner unpickles the checkpoint's non-tensor items (the optimizer's param_groups: lr, betas,
    eps, ...) with torch.load(weights_only=False), so a shard written over could run code on a resume. These items
    are plain numbers, strings, tuples and dicts: read them with the weights-only unpickler, and refuse anything
    else naming the item. (Tensors DCP already reads weights-only.)"""

    def load_bytes(self, read_item: ReadItem, value: io.BytesIO) -> None:
        try:
            obj = torch.load(value, map_location="cpu", weights_only=True)
        except Exception as e:
            raise pickle.UnpicklingError(f"item {read_item.dest_index.fqn}: {one_line(e)}") from None
        plain = io.BytesIO()  # what the default planner reads back now holds only what the safe reader built
        torch.save(obj, plain)
        plain.seek(0)
        super().load_bytes(read_item, plain)


def read_metadata(path: Path) -> Any:
    """The DCP index of checkpoint `path`; raises CheckpointError naming the file."""
    meta_file = Path(path) / METADATA
    try:
        with open(meta_file, "rb") as f:
            return _MetadataUnpickler(f).load()
    except FileNotFoundError:
        raise CheckpointError(f"{meta_file}: missing") from None
    except OSError as e:
        raise CheckpointError(f"{meta_file}: unreadable ({e.strerror or e})") from None
    except Exception as e:  # a truncated or foreign pickle fails in many ways
        raise CheckpointError(f"{meta_file}: not a DCP index, truncated? ({type(e).__name__}: {one_line(e)})") from None


def verify_checkpoint(path: Path) -> str | None:
    """Why `path` cannot be resumed from (naming the file), or None. Cheap: reads the index, not the tensors.

    state.json must parse and agree with the directory's step; the DCP index must parse and hold the model; every
    shard file it names must exist and be as long as the index says."""
    path = Path(path)
    m = _STEP_DIR.fullmatch(path.name)
    if m is None and (side := _OLD_STEP_DIR.fullmatch(path.name)) is not None:
        m = _STEP_DIR.fullmatch(side.group(1))
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
    try:
        index = read_metadata(path)
    except CheckpointError as e:
        return str(e)
    try:
        names = list(index.state_dict_metadata)
        extents: dict[str, int] = {}
        for info in index.storage_data.values():
            extents[info.relative_path] = max(extents.get(info.relative_path, 0), info.offset + info.length)
    except (AttributeError, TypeError) as e:
        return f"{path / METADATA}: not a DCP index ({one_line(e)})"
    if not any(n.startswith("model.") for n in names):
        return f"{path / METADATA}: holds no model"
    for rel, needed in sorted(extents.items()):
        shard = path / rel
        try:
            size = shard.stat().st_size
        except FileNotFoundError:
            return f"{shard}: missing"
        except OSError as e:
            return f"{shard}: unreadable ({e.strerror or e})"
        if size < needed:
            return f"{shard}: truncated ({size} bytes, the index needs {needed})"
    return None


def find_resumable(root: Path) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest checkpoint (by step number) that verifies, and the newer ones skipped with the reason."""
    skipped: list[tuple[Path, str]] = []
    for _, path in reversed(_candidates(root)):
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


# -- loading ----------------------------------------------------------------------------------------------------


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
    group: dist.ProcessGroup | None = None,
) -> Resumed:
    """Restore the newest checkpoint that verifies and loads (every rank calls this); log each one skipped.

    With none: a CheckpointError (exit 2) naming every reason, unless `from_scratch`, which starts at step 0.
    `tidy` (rank 0 only) renames skipped checkpoints to broken-step-N, kept for inspection but out of the way of
    later resumes and of pruning, and points `latest` at the one taken. Rank 0's verdicts decide for every rank,
    so all of them load the same checkpoint."""
    root = Path(root)
    rank, _ = _world(group)
    fresh_optimizer = optimizer is not None and not optimizer.state
    if rank == 0:
        _take_back_set_aside(root)
    skipped: list[tuple[Path, str]] = []
    taken: tuple[Path, int, dict] | None = None
    for path in _from_rank0([p for _, p in reversed(checkpoint_dirs(root))], group):
        reason = _from_rank0(verify_checkpoint(path), group)
        if reason is None:
            try:
                step, state = load_checkpoint(path, model, optimizer, group=group, verified=True)
                taken = (path, step, state)
            except CheckpointLoadFailure:
                raise  # not the files' fault: nothing is set aside, metrics.jsonl is left as it is
            except CheckpointError as e:
                reason = str(e)
            except Exception as e:  # a damaged tensor payload fails only on the full read
                reason = f"{path}: does not load ({type(e).__name__}: {one_line(e)})"
        if taken is not None:
            break
        log.warning("resume: skipping %s: %s", path.name, reason)
        skipped.append((path, reason))
    if taken is not None:
        path, step, state = taken
        log.info("resume: continuing from %s (step %d)", path, step)
        if tidy and rank == 0:
            _set_aside(skipped)
            atomic_write_text(root / LATEST, path.name + "\n")
        return Resumed(path, step, state, skipped)
    if fresh_optimizer and optimizer is not None:
        optimizer.state.clear()  # a failed load may have initialised it: a fresh run starts from none
    if not from_scratch:
        raise CheckpointError(nothing_to_resume(root, skipped))
    log.warning("resume: no checkpoint in %s to resume from; starting over at step 0 (--resume-from-scratch)", root)
    if tidy and rank == 0:
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


def load_checkpoint(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    group: dist.ProcessGroup | None = None,
    verified: bool = False,
) -> tuple[int, dict]:
    """Restore model, optimizer and RNG in place (every rank calls this); returns (step, the caller's state dict).

    Names and shapes are checked against the index before any tensor is read, so a checkpoint of another model
    leaves the model and optimizer as they were (the resume then tries an older one). The world size may differ
    from the one that saved: DCP reads each rank's part from whichever shards hold it."""
    path = Path(path)
    problem = None if verified else verify_checkpoint(path)
    if problem:
        raise CheckpointError(problem)
    meta = json.loads((path / "state.json").read_text(encoding="utf-8"))
    try:
        name_, keys, pos, has_gauss, gauss = meta["rng"]["numpy"]
        python_rng = _tuplify(meta["rng"]["python"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path / 'state.json'}: malformed rng entry ({one_line(e)})") from None
    rank, _ = _world(group)
    problem = _from_rank0(check_contents(path) if rank == 0 else None, group)  # one rank reads the files
    if problem:
        raise CheckpointError(problem)
    index = read_metadata(path)
    saved = set(index.state_dict_metadata)
    # DCP writes into the live tensors item by item: a failure part way (a damaged later item) would leave the
    # model and optimizer a mix of this checkpoint and what they were, and a fallback (an older checkpoint,
    # --resume-from-scratch) would go on from that mix. Put them back as they were on any failure.
    before = _Snapshot(model, optimizer)
    try:
        target = _full_state(model, optimizer, rank)
        for key in _rank_rng_keys(rank):  # a rank the saving run did not have keeps its own RNG
            if key not in saved:
                target.pop(key, None)
        _check_names(path, saved, target)
        try:
            with _quiet_single_process():
                dcp.load(
                    target,
                    storage_reader=dcp.FileSystemReader(str(path)),
                    planner=_PlainBytesLoadPlanner(),
                    process_group=group,
                )
        except (Exception, CheckpointException) as e:  # DCP's exception is a BaseException
            why = f"does not load into the model or optimizer ({_first_failure(e)})"
            if _has_checksums(path):  # every file is as saved and the names match: the cause is not the files
                raise CheckpointLoadFailure(
                    f"{path}: {why}, though every file matches its checksum: not damage, so it is not set aside; "
                    f"fix the cause and --resume again"
                ) from None
            raise CheckpointError(f"{path}: {why}") from None
        if optimizer is None:
            set_model_state_dict(model, target["model"])
        else:
            set_state_dict(model, optimizer, model_state_dict=target["model"], optim_state_dict=target["optim"])
    except BaseException:
        before.restore()
        raise
    torch_key, cuda_key = _rank_rng_keys(rank)
    if torch_key in target:
        torch.set_rng_state(target[torch_key])
    if cuda_key in target:
        torch.cuda.set_rng_state(target[cuda_key])
    random.setstate(python_rng)
    np.random.set_state((name_, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    return int(meta["step"]), meta["state"]


class _Snapshot:
    """A copy (in host memory) of every tensor of the model and optimizer state, by the live tensor it came from,
    and of the optimizer's state and settings, to put back after a failed load. Sharded (DTensor) tensors are
    copied by their local shard: each rank keeps and restores its own part."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None) -> None:
        self.optimizer = optimizer
        self.tensors: list[tuple[torch.Tensor, torch.Tensor]] = []
        for t in model.state_dict().values():
            self._keep(t)
        self.optim_state: dict[Any, dict] = {}
        self.groups: list[dict] = []
        if optimizer is not None:
            self.optim_state = {p: dict(s) for p, s in optimizer.state.items()}
            for s in self.optim_state.values():
                for v in s.values():
                    self._keep(v)
            self.groups = [{k: copy.deepcopy(v) for k, v in g.items() if k != "params"} for g in optimizer.param_groups]

    def _keep(self, t: Any) -> None:
        if isinstance(t, torch.Tensor):
            live = (t.to_local() if isinstance(t, DTensor) else t).detach()
            self.tensors.append((live, live.to("cpu", copy=True)))

    def restore(self) -> None:
        with torch.no_grad():
            for live, saved in self.tensors:
                live.copy_(saved)
        if self.optimizer is not None:
            self.optimizer.state.clear()  # what a failed load initialised or replaced goes; the old tensors return
            self.optimizer.state.update({p: dict(s) for p, s in self.optim_state.items()})
            for group, saved_group in zip(self.optimizer.param_groups, self.groups):
                group.update(copy.deepcopy(saved_group))


def _check_names(path: Path, saved: set[str], target: dict) -> None:
    """Same parameters by name and shape, before DCP reads anything (it would load a subset silently)."""
    wanted = {f"model.{k}": v for k, v in target["model"].items()}
    missing = [k for k in wanted if k not in saved]
    unexpected = [k for k in saved if k.startswith("model.") and k not in wanted]
    if missing or unexpected:
        raise CheckpointError(
            f"{path / METADATA}: does not match the model (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )


def _causes(e: BaseException) -> list[BaseException]:
    """`e` and, for DCP's CheckpointException, each rank's own exception (its failures map a rank to the exception,
    or to an (exception, traceback) pair)."""
    causes: list[BaseException] = [e]
    failures = getattr(e, "failures", None)
    if isinstance(failures, dict):
        for f in failures.values():
            f = f[0] if isinstance(f, tuple) and f else f
            if isinstance(f, BaseException):
                causes.append(f)
    return causes


def _first_failure(e: BaseException) -> str:
    causes = _causes(e)
    first = causes[1] if len(causes) > 1 else e
    return f"{type(first).__name__}: {_weights_only_short(one_line(first))}"


def _weights_only_short(text: str) -> str:
    """torch's weights-only refusal is a paragraph about torch versions; what it refused is what matters."""
    if "Weights only load failed" not in text:
        return text
    why = re.search(r"unsupported GLOBAL [\w.]+|WeightsUnpickler error: .*?(?= Check the documentation|$)", text, re.I)
    head = text[: text.index("Weights only load failed")].rstrip(" (")
    short = f"not plain data ({why.group(0) if why else 'refused by the weights-only reader'})"
    return f"{head} {short}" if head else short


def load_model_weights(path: Path, model: torch.nn.Module) -> None:
    """Only the model part of checkpoint `path`, into a plain (unsharded) model: what `scalerl export` needs."""
    problem = verify_checkpoint(path) or check_contents(path)
    if problem:
        raise CheckpointError(problem)
    saved = set(read_metadata(path).state_dict_metadata)
    target = {"model": model.state_dict()}  # loaded in place: these tensors are the model's
    _check_names(path, saved, target)
    try:
        with _quiet_single_process():
            dcp.load(target, storage_reader=dcp.FileSystemReader(str(path)), planner=_PlainBytesLoadPlanner())
    except (Exception, CheckpointException) as e:
        raise CheckpointError(f"{path}: does not match the model ({_first_failure(e)})") from None


def saved_model_dtype(path: Path) -> torch.dtype | None:
    """The dtype the checkpoint's floating-point model weights were saved in (None when it holds none)."""
    for key, md in read_metadata(path).state_dict_metadata.items():
        dtype = getattr(getattr(md, "properties", None), "dtype", None)
        if key.startswith("model.") and isinstance(dtype, torch.dtype) and dtype.is_floating_point:
            return dtype
    return None


def _jsonable(obj):
    return [_jsonable(x) for x in obj] if isinstance(obj, tuple) else obj


def _tuplify(obj):
    return tuple(_tuplify(x) for x in obj) if isinstance(obj, list) else obj
