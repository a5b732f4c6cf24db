"""The one place for defaults that depend on the model; every command that resolves a config applies them.

Order, lowest first: a section's dataclass defaults, these model defaults, the config file, --set. `scalerl train`
and the service commands (`scalerl trainer | generator | evaluator`) apply the same layers, so one file gives one
set of values whichever command reads it, and `scalerl config show` names the layer each value came from.
"""

from __future__ import annotations

import copy

from scalerl.shared.wire.weights.registry import VLLM_NCCL

# Defaults that depend on the model. The built-in tiny model's are tuned for it on 2 CPU cores (addition: 0.2 ->
# 0.95 in 1,000 steps, 3-6 minutes); they do not transfer to other models. A user's model (run.model) gets the paper's
# recipe where it transfers, and must set what does not: the learning rate and the completion length depend on
# the model and the task. `scalerl config show` says which of these set each value.
BUILTIN_MODEL_DEFAULTS = {
    "trainer": {
        "max_off_policy": 2,
        "max_steps": 1000,
        "max_new_tokens": 16,
        "param_dtype": "float32",  # a 1M-parameter model: bf16 buys nothing and its recipe was tuned in FP32
        "optim": {"lr": 2e-5, "eps": 1e-8},
    },
    "eval": {"every": 20, "prompts": 200, "k": 4},
    # max_seq_len: the model's max_position_embeddings (shared/models/tokenizer.py MODEL_MAX_LENGTH, not imported:
    # it loads the tokenizers library), so that its KV cache is not sized for positions it was never given. Its
    # tasks' prompts and completions take a few dozen tokens, far below either limit.
    "generator": {"max_batch": 128, "max_seq_len": 512},
}
PAPER_DEFAULTS = {
    # k = 8, AdamW eps 1e-15 (ScaleRL); bf16 compute with FP32 master weights on GPU ("auto": FP32 on CPU).
    "trainer": {"max_off_policy": 8, "param_dtype": "auto", "optim": {"eps": 1e-15}},
}
REQUIRED_FOR_USER_MODEL = {
    ("trainer", "optim", "lr"): "the built-in model's 2e-5 does not transfer (the paper uses 5e-7 for an 8B model)",
    ("trainer", "max_new_tokens"): "the longest completion depends on the task and model (the paper: up to 12288)",
}
# A user's model on a GPU node (the paper and the peers: vLLM generating in bf16 and receiving over NCCL, the trainer
# recomputing activations and cutting each rank's share into micro-batches). Without these an 8B model's first step
# runs out of memory. CPU runs and the built-in model keep the values above.
GPU_DEFAULTS: dict[str, dict] = {
    "trainer": {"activation_checkpointing": True, "step": {"max_tokens_per_microbatch": 16384}},
    "generator": {"dtype": "bfloat16"},
}
GPU_VLLM_DEFAULTS: dict[str, dict] = {"generator": {"backend": "vllm", "weights_transport": VLLM_NCCL}}
NO_VLLM_ON_GPU = (
    "scalerl: a GPU is visible but vLLM is not installed: generating with the built-in torch engine "
    "(pip install 'scalerl[vllm]' for the vLLM backend)"
)
SOURCE_BUILTIN, SOURCE_PAPER, SOURCE_DEFAULT = "default (built-in model)", "default (paper)", "default"
SOURCE_GPU = "default (GPU)"


def model_defaults(user_model: bool) -> dict:
    """The defaults for this kind of model, by section: the layer between the sections' own defaults and the file."""
    return copy.deepcopy(PAPER_DEFAULTS if user_model else BUILTIN_MODEL_DEFAULTS)


def gpu_defaults(user_model: bool, gpu: bool, vllm: bool) -> dict:
    """The GPU layer, above the model defaults: only for a user's model on a node with a GPU."""
    if not (user_model and gpu):
        return {}
    out = copy.deepcopy(GPU_DEFAULTS)
    if vllm:
        for name, keys in GPU_VLLM_DEFAULTS.items():
            out.setdefault(name, {}).update(keys)
    return out


def gpu_visible() -> bool:
    """Whether this node has a CUDA device. Imports torch, so it is asked only where the answer matters (a user's
    model, trainer.device = 'cuda')."""
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


def device_problem(device: str) -> str | None:
    """Why trainer.device cannot take effect on this node, or None: checked before any process starts (scalerl train,
    a bare scalerl trainer), where the trainer would otherwise die on it after start."""
    if device == "cuda" and not gpu_visible():
        return (
            "trainer.device = 'cuda' but torch sees no CUDA device here; set trainer.device = 'auto' (CUDA when "
            "visible) or 'cpu'"
        )
    return None


def vllm_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


# A section without a `model` key of its own: the section whose `model` key says which kind of model it serves.
MODEL_OF = {"eval": "trainer"}


def section_defaults(name: str, section: dict, tables: dict | None = None) -> dict:
    """One section's model defaults, for a service command that reads only its own sections (`scalerl trainer`,
    `scalerl generator`, `scalerl evaluator`): the section's `model` key (for [eval], [trainer]'s in `tables`, the
    file's tables with --set applied) says which kind of model it runs, so that the same file resolves to the same
    values there as under `scalerl train`."""
    owner = (tables or {}).get(MODEL_OF[name], {}) if name in MODEL_OF else section
    return model_defaults(user_model=bool(owner.get("model"))).get(name, {})
