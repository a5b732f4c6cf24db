"""Router replay, router agreement, expert load and the load-balancing switch on a real Qwen3-MoE (the tiny
random-initialised one, shared/models/tiny_moe.py), through the trainer's own step."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import tiny_qwen2

from scalerl.shared.models.tiny_moe import build_tiny_moe
from scalerl.trainer_service.batch import TrainBatch
from scalerl.trainer_service.config import LossConfig
from scalerl.trainer_service.loss import load_balance_loss
from scalerl.trainer_service.moe import (
    NO_EXPERT,
    RouterHooks,
    load_entropy,
    moe_routers,
    moe_shape,
    replay_gate,
)
from scalerl.trainer_service.policy import sequence_logprobs
from scalerl.trainer_service.step import StepConfig, make_optimizer, train_step

LAYERS, EXPERTS, K = 4, 8, 2


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_tiny_moe(seed=0)


def batch(routed: torch.Tensor | None = None, seed: int = 0) -> TrainBatch:
    """Two prompts x two samples, lengths 9..12 (right-padded), completion from column 3."""
    g = torch.Generator().manual_seed(seed)
    B, L = 4, 12
    ids = torch.randint(3, 40, (B, L), generator=g)
    att = torch.zeros(B, L, dtype=torch.long)
    lengths = [12, 9, 11, 10]
    for i, n in enumerate(lengths):
        att[i, :n] = 1
    ids = ids * att
    loss_mask = att.float().clone()
    loss_mask[:, :3] = 0
    gen = torch.where(loss_mask > 0, -2.0 + 0.1 * torch.randn(B, L, generator=g), 0.0)
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5])
    return TrainBatch(ids, att, loss_mask, gen, adv, torch.tensor([0, 0, 1, 1]), routed)


def own_routing(model, b: TrainBatch) -> torch.Tensor:
    """(B, L, layers, k) the trainer's own top-k for every real token of the batch (padded layout), -1 elsewhere."""
    hooks = RouterHooks(model)
    with torch.no_grad(), hooks.active() as trace:
        sequence_logprobs(model, b.input_ids, b.attention_mask)
    B, L = b.input_ids.shape
    out = torch.stack(trace.own, 1).reshape(B, L, LAYERS, K).to(torch.int16)
    return torch.where(b.attention_mask[:, :, None, None] > 0, out, torch.full_like(out, NO_EXPERT))


def token_logprobs(model, b: TrainBatch, replay: torch.Tensor | None) -> torch.Tensor:
    hooks = RouterHooks(model)
    flat = None if replay is None else replay.reshape(-1, LAYERS, K).long()
    with torch.no_grad(), hooks.active(flat):
        lp, _ = sequence_logprobs(model, b.input_ids, b.attention_mask)
    return lp


def step(model, b: TrainBatch, replay: bool, coef: float = 0.0, **step_kw) -> dict:
    opt, sched = make_optimizer(
        model, type("O", (), dict(lr=0.0, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, warmup_steps=0))()
    )
    cfg = StepConfig(**step_kw)
    return train_step(
        model, opt, sched, b, LossConfig(load_balance_coef=coef), cfg, grad_clip=1e9, router_replay=replay
    )


def test_routers_are_found_in_layer_order(model):
    routers = moe_routers(model)
    assert moe_shape(model) == (LAYERS, EXPERTS, K)
    assert routers == [layer.mlp.gate for layer in model.model.layers]
    with pytest.raises(ValueError, match="Qwen2ForCausalLM is not a mixture-of-experts model"):
        moe_shape(tiny_qwen2())


def test_replay_gate_is_the_routers_own_output_at_its_own_experts(model):
    router = model.model.layers[0].mlp.gate
    h = torch.randn(10, router.hidden_dim)
    logits, weights, idx = router(h)
    w, i, own = replay_gate(logits, None, K, router.norm_topk_prob)
    assert torch.equal(i, idx) and torch.equal(own, idx) and torch.equal(w, weights)
    # Other experts: softmax at those, renormalised over them (norm_topk_prob), with the router's gradient.
    other = (idx + 1) % EXPERTS
    other[:3] = NO_EXPERT  # these rows keep the router's own choice
    w2, i2, _ = replay_gate(logits, other, K, True)
    p = torch.softmax(logits.float(), -1)
    want = p.gather(-1, other.clamp_min(0))
    want = want / want.sum(-1, keepdim=True)
    assert torch.equal(i2[3:], other[3:]) and torch.equal(i2[:3], idx[:3])
    torch.testing.assert_close(w2[3:], want[3:]) and torch.testing.assert_close(w2[:3], weights[:3])
    assert w2.requires_grad


def test_replaying_the_trainers_own_routing_changes_nothing(model):
    b = batch()
    base = token_logprobs(model, b, None)
    assert torch.equal(token_logprobs(model, b, own_routing(model, b)), base)


def test_a_handmade_disagreement_changes_the_loss_exactly_where_the_router_disagrees(model):
    b = batch()
    base = token_logprobs(model, b, None)
    gen = own_routing(model, b)
    # The generator routed row 1's token at column 5 to another expert in the last MoE layer: nothing after that
    # layer mixes positions, so only the token that column predicts (column 6) can change.
    row, col = 1, 5
    theirs = gen.clone()
    chosen = set(theirs[row, col, -1].tolist())
    theirs[row, col, -1, 0] = next(e for e in range(EXPERTS) if e not in chosen)
    replayed = token_logprobs(model, b, theirs)
    changed = (replayed - base).abs() > 1e-7
    assert changed.nonzero().tolist() == [[row, col + 1]]
    assert (replayed - base).abs().max() > 1e-5
    # The step agrees: without replay the trainer's router left one token-layer choice of all unmatched; with
    # replay its forward used the generator's experts everywhere, and the loss moved.
    b_gen = batch(theirs)
    off, on = step(model, b_gen, replay=False), step(model, b_gen, replay=True)
    choices = int(b.attention_mask.sum()) * LAYERS
    assert off["router_agreement"] == off["router_own_agreement"] == pytest.approx(1 - 1 / choices)
    assert on["router_agreement"] == 1.0 and on["router_own_agreement"] == pytest.approx(1 - 1 / choices)
    assert on["loss"] != off["loss"]
    same = step(model, batch(gen), replay=True)
    assert same["loss"] == off["loss"] or math.isclose(same["loss"], off["loss"], rel_tol=1e-6)
    assert same["router_own_agreement"] == 1.0


@pytest.mark.parametrize("pack", [False, True])
def test_replay_on_gives_agreement_one_on_every_replayed_token(model, pack):
    b = batch()
    g = torch.Generator().manual_seed(1)
    # A generator that routed at random: most of its choices differ from the trainer's.
    rand = torch.argsort(torch.rand(4, 12, LAYERS, EXPERTS, generator=g), -1)[..., :K].to(torch.int16)
    rand[b.attention_mask == 0] = NO_EXPERT
    on = step(model, batch(rand), replay=True, pack=pack, max_tokens_per_microbatch=24)
    off = step(model, batch(rand), replay=False, pack=pack, max_tokens_per_microbatch=24)
    assert on["router_agreement"] == 1.0
    # Without replay the experts used are the router's own; with it, the router's own choices in later layers
    # move too (their inputs came through the replayed experts), so both figures are low but not equal.
    assert off["router_agreement"] == off["router_own_agreement"] < 0.5 and on["router_own_agreement"] < 0.5
    assert 0.5 < on["expert_load_entropy"] <= 1.0 and 0.5 < off["expert_load_entropy"] <= 1.0
    assert on["loss"] != off["loss"]


def test_packed_and_padded_replay_agree(model):
    b = batch()
    g = torch.Generator().manual_seed(2)
    rand = torch.argsort(torch.rand(4, 12, LAYERS, EXPERTS, generator=g), -1)[..., :K].to(torch.int16)
    rand[b.attention_mask == 0] = NO_EXPERT
    padded = step(model, batch(rand), replay=True, pack=False, max_tokens_per_microbatch=24)
    packed = step(model, batch(rand), replay=True, pack=True, max_tokens_per_microbatch=24)
    for key in ("loss", "router_own_agreement", "expert_load_entropy"):
        assert packed[key] == pytest.approx(padded[key], rel=1e-5), key


def test_replay_is_refused_for_a_dense_model_or_a_batch_without_experts(model):
    with pytest.raises(ValueError, match="router_replay needs a mixture-of-experts model; Qwen2ForCausalLM is dense"):
        step(tiny_qwen2(), batch(), replay=True)
    with pytest.raises(ValueError, match="no rollout of this batch carries routed experts"):
        step(model, batch(), replay=True)
    line = step(model, batch(), replay=False)  # no experts from the generator: no agreement, but the load
    assert "router_agreement" not in line and "router_own_agreement" not in line  # never NaN in metrics.jsonl
    assert 0 < line["expert_load_entropy"] <= 1
    assert "load_balance_loss" not in line


def test_expert_load_entropy():
    assert load_entropy(torch.ones(3, 8)) == pytest.approx(1.0)
    assert load_entropy(torch.tensor([[5.0, 0, 0, 0]])) == 0.0
    assert load_entropy(torch.tensor([[1.0, 1, 0, 0]])) == pytest.approx(0.5)
    assert math.isnan(load_entropy(torch.zeros(2, 4)))


def test_load_balancing_switch_adds_exactly_its_term_to_the_gradient():
    b = batch()
    grads = {}
    for coef in (0.0, 0.5):
        m = build_tiny_moe(seed=0)
        line = step(m, b, replay=False, coef=coef)
        grads[coef] = {n: p.grad.clone() for n, p in m.named_parameters()}
        if coef == 0.0:
            assert "load_balance_loss" not in line  # off by default: no term, no entry
        else:
            lb_line = line["load_balance_loss"]
    # The term alone, from transformers' own forward (output_router_logits) on the same tokens.
    m = build_tiny_moe(seed=0)
    out = m(input_ids=b.input_ids, attention_mask=b.attention_mask, output_router_logits=True)
    assert lb_line == pytest.approx(float(out.aux_loss), rel=1e-5)
    hooks = RouterHooks(m)
    with hooks.active() as trace:
        sequence_logprobs(m, b.input_ids, b.attention_mask)
    lb = load_balance_loss(trace.logits, EXPERTS, K, b.attention_mask.reshape(-1) > 0)
    torch.testing.assert_close(lb, out.aux_loss)
    (0.5 * lb).backward()
    for name, p in m.named_parameters():
        want = p.grad if p.grad is not None else torch.zeros_like(p)
        torch.testing.assert_close(grads[0.5][name] - grads[0.0][name], want, atol=1e-6, rtol=1e-4, msg=name)
    assert any(p.grad is not None and p.grad.abs().max() > 0 for n, p in m.named_parameters() if "gate.weight" in n)


def test_routed_experts_of_another_shape_are_refused_with_one_line(model):
    b = batch()
    with pytest.raises(ValueError, match=r"replay has shape \(48, 3, 2\), expected \(tokens, 4, k\)"):
        token_logprobs_raw(model, b, torch.zeros(48, 3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"router replay: layer 0 got \(48, 3\) experts for 48 tokens x top-2"):
        token_logprobs_raw(model, b, torch.zeros(48, 4, 3, dtype=torch.long))
    wrong = torch.zeros(4, 12, 3, K, dtype=torch.int16)  # a generator's model with 3 MoE layers
    with pytest.raises(ValueError, match="replay has shape"):
        step(model, batch(wrong), replay=True)


def token_logprobs_raw(model, b: TrainBatch, flat: torch.Tensor) -> torch.Tensor:
    with torch.no_grad(), RouterHooks(model).active(flat):
        return sequence_logprobs(model, b.input_ids, b.attention_mask)[0]
