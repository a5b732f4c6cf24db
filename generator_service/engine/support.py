"""Which models the built-in torch engine runs, decided from config.json alone (no torch, no weights), so that
`scalerl train` can refuse a model before any process starts (cli/run_setup.py) and the engine refuses the same
way when it loads one (decoder.check_supported).

The engine's forward (decoder.py) is the Llama family with dense SwiGLU MLPs. A mixture-of-experts model (any
config naming experts: Qwen2/3-MoE, Mixtral, DeepSeek, OLMoE, Llama-4 ...) needs generator.backend = "vllm".
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

SUPPORTED_MODEL_TYPES = ("qwen2", "qwen3", "llama")
# Config keys by which the transformers MoE configs give their number of routed experts.
EXPERT_KEYS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")


def is_moe_config(config: Mapping[str, Any]) -> bool:
    text = config.get("text_config") or config
    return any(isinstance(text.get(k), int) and text[k] > 1 for k in EXPERT_KEYS)


def architecture_name(config: Mapping[str, Any]) -> str:
    names = config.get("architectures") or []
    arch = names[0] if names else "a model"
    return f"{arch} (model_type {config.get('model_type')!r})"


def architecture_problem(config: Mapping[str, Any]) -> str | None:
    """One line naming the architecture when the torch engine cannot run it, else None (the config-level checks;
    decoder.check_supported adds the ones that need the loaded config)."""
    if is_moe_config(config):
        return (
            f"torch engine: {architecture_name(config)} is a mixture-of-experts model, which the torch engine does "
            "not run (generator.backend = 'vllm' does)"
        )
    if config.get("model_type") not in SUPPORTED_MODEL_TYPES:
        return f"torch engine: {architecture_name(config)} is not supported (model types: {SUPPORTED_MODEL_TYPES})"
    return None


def model_dir_problem(model_dir: str | Path) -> str | None:
    """architecture_problem of a model directory's config.json (None when it has none: others say so)."""
    try:
        config = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return architecture_problem(config) if isinstance(config, dict) else None
