"""Checkpoints restore training exactly, and a half-written one never replaces a good one."""

import torch

from scalerl.trainer_service.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint


def make():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    return model, opt


def train(model, opt, steps):
    for _ in range(steps):
        x = torch.randn(16, 4)  # draws from the global RNG, which the checkpoint must restore
        loss = (model(x) - x.sum(1, keepdim=True)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_resume_is_bit_exact(tmp_path):
    model, opt = make()
    train(model, opt, 5)
    save_checkpoint(tmp_path, 5, model, opt, {"epoch": 1, "pass_rates": {"p1": 0.5}})
    train(model, opt, 5)
    reference = [p.detach().clone() for p in model.parameters()]

    fresh, fresh_opt = make()
    step, state = load_checkpoint(latest_checkpoint(tmp_path), fresh, fresh_opt)
    assert step == 5 and state == {"epoch": 1, "pass_rates": {"p1": 0.5}}
    train(fresh, fresh_opt, 5)
    for a, b in zip(reference, fresh.parameters()):
        assert torch.equal(a, b)


def test_keeps_last_checkpoints_and_ignores_partial_ones(tmp_path):
    model, opt = make()
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, model, opt, {}, keep=2)
    assert sorted(p.name for p in tmp_path.glob("step-*")) == ["step-000002", "step-000003"]
    (tmp_path / ".tmp-step-000004").mkdir()  # a crash mid-save leaves only a hidden temp dir
    assert latest_checkpoint(tmp_path).name == "step-000003"


def test_tied_embeddings_round_trip(tmp_path):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(
        vocab_size=32,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        tie_word_embeddings=True,
    )
    torch.manual_seed(1)
    model = Qwen2ForCausalLM(cfg)
    opt = torch.optim.AdamW(model.parameters())
    save_checkpoint(tmp_path, 1, model, opt, {})
    torch.manual_seed(2)
    other = Qwen2ForCausalLM(cfg)
    load_checkpoint(latest_checkpoint(tmp_path), other, None)
    for (k, a), (_, b) in zip(model.state_dict().items(), other.state_dict().items()):
        assert torch.equal(a, b), k
