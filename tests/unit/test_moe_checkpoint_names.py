"""Fused MoE experts -> per-expert checkpoint names (shared/wire/weights/checkpoint_names.py), checked against
what transformers' own save_pretrained writes for the same model."""

import pytest
import torch
from safetensors.torch import load_file

from scalerl.shared.models.tiny_moe import build_tiny_moe, save_tiny_moe_dir
from scalerl.shared.wire.weights.checkpoint_names import checkpoint_stream, checkpoint_tensors, split_experts


def test_split_equals_transformers_save_pretrained(tmp_path):
    model = build_tiny_moe(seed=3)
    model.save_pretrained(tmp_path / "hf")
    reference = load_file(tmp_path / "hf" / "model.safetensors")
    ours = checkpoint_tensors({k: v for k, v in model.state_dict().items() if k != "lm_head.weight"})
    assert sorted(ours) == sorted(reference)
    assert "model.layers.3.mlp.experts.7.up_proj.weight" in ours
    for name, tensor in reference.items():
        assert torch.equal(ours[name], tensor), name


def test_saved_dir_round_trips_through_transformers(tmp_path):
    from transformers import AutoModelForCausalLM

    directory = save_tiny_moe_dir(tmp_path / "moe", seed=1)
    assert not any(k.endswith("experts.gate_up_proj") for k in load_file(directory / "model.safetensors"))
    loaded = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    built = build_tiny_moe(seed=1)
    for name, tensor in built.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name


def test_stream_is_lazy_ordered_and_leaves_dense_names_alone():
    fused = torch.arange(2 * 6 * 3, dtype=torch.float32).reshape(2, 6, 3)
    down = torch.arange(2 * 3 * 3, dtype=torch.float32).reshape(2, 3, 3)
    named = {
        "model.embed_tokens.weight": torch.ones(5, 3),
        "model.layers.0.mlp.experts.gate_up_proj": fused,
        "model.layers.0.mlp.experts.down_proj": down,
        "model.layers.0.mlp.gate.weight": torch.zeros(2, 3),
    }
    meta = {k: torch.empty(v.shape, device="meta") for k, v in named.items()}
    pulled = []

    def pairs():
        for k, v in named.items():
            pulled.append(k)
            yield k, v

    new_meta, stream = checkpoint_stream(meta, pairs())
    first = next(stream)
    assert first[0] == "model.embed_tokens.weight" and pulled == ["model.embed_tokens.weight"]
    got = dict([first, *stream])
    assert list(got) == list(new_meta)
    assert all(tuple(new_meta[k].shape) == tuple(v.shape) for k, v in got.items())
    assert torch.equal(got["model.layers.0.mlp.experts.1.gate_proj.weight"], fused[1, :3])
    assert torch.equal(got["model.layers.0.mlp.experts.1.up_proj.weight"], fused[1, 3:])
    assert torch.equal(got["model.layers.0.mlp.experts.0.down_proj.weight"], down[0])
    assert got["model.layers.0.mlp.gate.weight"] is named["model.layers.0.mlp.gate.weight"]
    # A dense model's stream passes through untouched.
    dense = {"model.layers.0.mlp.gate_proj.weight": torch.ones(4, 3)}
    assert checkpoint_stream(dense, iter(dense.items()))[0] == dense


def test_malformed_fused_tensor_is_one_line():
    with pytest.raises(
        ValueError, match=r"^model.layers.0.mlp.experts.gate_up_proj: a fused experts tensor must be 3-D"
    ):
        split_experts("model.layers.0.mlp.experts.gate_up_proj", torch.ones(4, 3))
    with pytest.raises(ValueError, match="not gate and up halves"):
        split_experts("model.layers.0.mlp.experts.gate_up_proj", torch.ones(2, 5, 3))
