"""A tiny random-initialised Qwen3-MoE, built from a config with nothing downloaded (tests and the MoE docs).

4 decoder layers, each a sparse block of 8 experts with top-2 routing, hidden size 128: about 1.8M parameters, of
which the experts are 1.6M, with the character tokenizer of the tiny dense model (shared/models/tokenizer.py).
Untrained: it exercises the pipeline's MoE paths (FSDP2 over fused experts, checkpoint names for vLLM, router
outputs), not learning curves.

`save_tiny_moe_dir` writes an ordinary Hugging Face directory in the checkpoint layout (one Linear per expert,
as transformers' save_pretrained and Qwen3-MoE checkpoints on the Hub have it: shared/wire/weights/
checkpoint_names.py), which transformers and vLLM load offline.

Imports torch: never import this module from scalerl.shared.__init__ or the CLI.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

from scalerl.shared.models import tokenizer as char_tok
from scalerl.shared.models.tiny_model import build_char_model, char_model_config, save_model_dir

# head_dim 32 (vLLM wants a multiple of 8; its CPU attention takes 32); 2 kv heads for grouped-query attention.
TINY_MOE_ARCH: dict[str, Any] = dict(
    hidden_size=128,
    intermediate_size=256,  # only for dense layers (mlp_only_layers), of which there are none
    moe_intermediate_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=32,
    num_experts=8,
    num_experts_per_tok=2,
    norm_topk_prob=True,  # as Qwen3-30B-A3B
    decoder_sparse_step=1,
    mlp_only_layers=[],
    router_aux_loss_coef=0.001,
    max_position_embeddings=char_tok.MODEL_MAX_LENGTH,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
)


def tiny_moe_config() -> Qwen3MoeConfig:
    return char_model_config(Qwen3MoeConfig, **TINY_MOE_ARCH)


def build_tiny_moe(seed: int = 0) -> Qwen3MoeForCausalLM:
    """A freshly initialised tiny MoE in FP32; the caller's RNG state is left untouched."""
    return build_char_model(Qwen3MoeForCausalLM, tiny_moe_config(), seed)


def save_tiny_moe_dir(directory: str | Path, seed: int = 0) -> Path:
    """Build the tiny MoE with `seed` and save it as an HF model directory; returns the directory."""
    save_model_dir(build_tiny_moe(seed), directory)
    return Path(directory)
