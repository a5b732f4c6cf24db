"""`scalerl export`: a trainer checkpoint as an ordinary Hugging Face model directory.

The checkpoint's DCP shards (any world size, sharded or not) are read into one unsharded model built from the
config the checkpoint carries (hf/), and written with save_pretrained as safetensors next to that config, the
generation config and the tokenizer: transformers' from_pretrained and vLLM load the result like any model.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import torch

from scalerl.shared.errors import one_line
from scalerl.shared.run_dir import RunDirError, writing

from .checkpoint import (
    HF_DIR,
    CheckpointError,
    find_resumable,
    load_model_weights,
    saved_model_dtype,
    verify_checkpoint,
)

log = logging.getLogger("scalerl.export")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Where an export into an existing OUT_DIR writes its files before renaming them into place.
EXPORT_TMP = ".scalerl-export.tmp"


def resolve_checkpoint(where: Path) -> Path:
    """A step-N directory as given; a run directory or its checkpoints/ directory: the newest that verifies."""
    where = Path(where)
    if (where / "state.json").exists() or where.name.startswith("step-"):
        problem = verify_checkpoint(where)
        if problem:
            raise CheckpointError(problem)
        return where
    root = where / "checkpoints" if (where / "checkpoints").is_dir() else where
    if not root.is_dir():
        raise RunDirError(f"{where}: no such checkpoint, run directory or checkpoints directory")
    chosen, skipped = find_resumable(root)
    if chosen is None:  # one line naming each, as `scalerl train --resume` refuses (docs/run-dir.md)
        why = "; ".join(r for _, r in skipped) or "none was written"
        raise CheckpointError(f"{root}: no checkpoint that verifies ({why})")
    for path, reason in skipped:
        log.warning("skipping %s: %s", path.name, reason)
    return chosen


def hf_files_of(checkpoint: Path) -> Path:
    """The config and tokenizer of the checkpoint's model: its hf/ copy, else the model dir it names."""
    hf = checkpoint / HF_DIR
    if (hf / "config.json").exists():
        return hf
    state = json.loads((checkpoint / "state.json").read_text(encoding="utf-8")).get("state", {})
    model_dir = Path(state.get("model_dir", ""))
    if state.get("model_dir") and (model_dir / "config.json").exists():
        return model_dir
    raise CheckpointError(f"{hf}: missing, and state.json names no model directory with a config.json")


def export_checkpoint(where: Path, out_dir: Path, dtype: str = "auto") -> dict:
    """Write the checkpoint at `where` into `out_dir`, a new directory or an existing empty one (kept: the files are
    moved into it); returns what was written (for the CLI)."""
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.initialization import no_init_weights
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # one line on stderr, not a bar per shard

    given, out_dir = Path(out_dir), Path(out_dir).absolute()  # "." has no name to put the temp sibling beside
    if out_dir.exists() and not out_dir.is_dir():
        raise RunDirError(f"{given}: exists and is not a directory; export writes a new directory")
    # A temp dir a killed export left inside OUT_DIR is no content of the user's: it is cleared below.
    if out_dir.exists() and any(p.name != EXPORT_TMP for p in out_dir.iterdir()):
        raise RunDirError(f"{given}: exists and is not empty; export writes a new directory")
    into = out_dir.exists()
    tmp = out_dir / EXPORT_TMP if into else out_dir.with_name(f".{out_dir.name}.tmp")
    # A link there would be written through, and a failed export's clean-up would delete the files it points at
    # (rmtree does not clear a link): only a directory of our own, or nothing, is ours to clear and write.
    if tmp.is_symlink() or (tmp.exists() and not tmp.is_dir()):
        raise RunDirError(f"{tmp}: export's temporary directory is a link or not a directory; remove it first")
    checkpoint = resolve_checkpoint(where)
    hf = hf_files_of(checkpoint)
    torch_dtype = DTYPES[dtype] if dtype != "auto" else saved_model_dtype(checkpoint) or torch.float32
    try:
        config = AutoConfig.from_pretrained(hf)
    except Exception as e:  # a damaged config.json (transformers raises several kinds) is the checkpoint's fault
        raise CheckpointError(f"{hf / 'config.json'}: not a model config ({one_line(e)})") from None
    with no_init_weights():  # every weight comes from the checkpoint: random init would only cost time
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    # Non-persistent buffers (rotary frequencies) are not in the checkpoint; from_config computed them.
    load_model_weights(checkpoint, model)
    _retie(model, config, checkpoint)
    model = model.to(torch_dtype).eval()
    # A new OUT_DIR appears whole: written under a temp name beside it, then renamed. An existing (empty) one keeps
    # its inode: renaming a new directory over it left a shell sitting in it (`scalerl export RUN .`) in a deleted
    # directory. Its files are written in a temp dir inside it and renamed into it one by one (each atomically).
    shutil.rmtree(tmp, ignore_errors=True)
    moved: list[Path] = []
    try:
        with writing(tmp):
            model.save_pretrained(tmp)
            for p in sorted(hf.iterdir()):  # the original config keeps keys older readers (vLLM) look for
                if p.is_file():
                    shutil.copy2(p, tmp / p.name)
            _set_dtype(tmp / "config.json", torch_dtype)
        with writing(out_dir):
            if not into:
                tmp.rename(out_dir)
            else:
                for p in sorted(tmp.iterdir()):
                    moved.append(p.rename(out_dir / p.name))
                tmp.rmdir()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for p in moved:  # a failed export leaves OUT_DIR as empty as it found it
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
        raise
    step = json.loads((checkpoint / "state.json").read_text(encoding="utf-8"))["step"]
    n_params = sum(p.numel() for p in model.parameters())
    return {
        "checkpoint": str(checkpoint),
        "out_dir": str(given),
        "step": step,
        "dtype": str(torch_dtype),
        "params": n_params,
    }


def _retie(model, config, checkpoint: Path) -> None:
    """A tied model's checkpoint holds the LM head as a tensor of its own (equal to the embeddings): tie them again,
    so that the export holds one copy and counts its parameters once (it wrote both and counted 12,800 too many for
    the built-in model). A head that differs from the embeddings under a tied config is refused: tying would drop it."""
    head, emb = model.get_output_embeddings(), model.get_input_embeddings()
    if not getattr(config, "tie_word_embeddings", False) or head is None or head.weight is emb.weight:
        return
    if not torch.equal(head.weight, emb.weight):
        raise CheckpointError(
            f"{checkpoint}: config.json ties the LM head to the embeddings, but the checkpoint's differ; "
            "set tie_word_embeddings = false in its hf/config.json to export both"
        )
    head.weight = emb.weight


def _set_dtype(config_file: Path, dtype: torch.dtype) -> None:
    cfg = json.loads(config_file.read_text(encoding="utf-8"))
    name = str(dtype).removeprefix("torch.")
    cfg["torch_dtype"] = name  # transformers 4.x and vLLM read this key; 5.x reads "dtype"
    if "dtype" in cfg:
        cfg["dtype"] = name
    config_file.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
