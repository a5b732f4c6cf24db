"""Which models the torch engine refuses, from config.json alone (generator_service/engine/support.py): every config
that names experts, the way the transformers MoE families do, and any model_type its forward does not cover."""

import json

import pytest

from scalerl.generator_service.engine.support import architecture_problem, is_moe_config, model_dir_problem


@pytest.mark.parametrize(
    "config",
    [
        {"model_type": "qwen3_moe", "architectures": ["Qwen3MoeForCausalLM"], "num_experts": 128},
        {"model_type": "mixtral", "architectures": ["MixtralForCausalLM"], "num_local_experts": 8},
        {"model_type": "deepseek_v3", "n_routed_experts": 256},
        {"model_type": "llama4", "text_config": {"num_local_experts": 16}},
        # An MoE config whose model_type the engine would otherwise take is still refused.
        {"model_type": "qwen3", "num_experts": 4},
    ],
)
def test_moe_configs_are_refused_naming_the_architecture(config):
    assert is_moe_config(config)
    problem = architecture_problem(config)
    assert problem is not None and "mixture-of-experts" in problem and "\n" not in problem
    assert f"model_type {config['model_type']!r}" in problem
    for arch in config.get("architectures", []):
        assert arch in problem


def test_dense_configs_pass_and_unknown_ones_are_named():
    assert architecture_problem({"model_type": "qwen2", "num_experts": 0}) is None  # 0 or 1 expert: dense
    assert architecture_problem({"model_type": "llama", "num_local_experts": 1}) is None
    problem = architecture_problem({"model_type": "gemma3", "architectures": ["Gemma3ForCausalLM"]})
    assert problem == (
        "torch engine: Gemma3ForCausalLM (model_type 'gemma3') is not supported "
        "(model types: ('qwen2', 'qwen3', 'llama'))"
    )


def test_model_dir_problem_reads_config_json(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2_moe", "num_experts": 60}))
    assert "qwen2_moe" in (model_dir_problem(tmp_path) or "")
    assert model_dir_problem(tmp_path / "missing") is None  # a missing or unreadable config is reported elsewhere
    (tmp_path / "config.json").write_text("{not json")
    assert model_dir_problem(tmp_path) is None
