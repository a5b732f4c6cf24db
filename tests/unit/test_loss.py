"""Losses and advantages against hand-computed values."""

import math

import pytest
import torch

from scalerl.trainer_service.advantages import advantages, zero_variance_groups
from scalerl.trainer_service.loss import LossConfig, aggregate, policy_loss

LN = math.log


def batch():
    # seq0: pi = (0.5, 0.25), pi_gen = (0.25, 0.25) -> rho = (2, 1); seq1: pi = pi_gen = 0.5 -> rho = (1, 1)
    logp = torch.tensor([[LN(0.5), LN(0.25)], [LN(0.5), LN(0.5)]], requires_grad=True)
    gen = torch.tensor([[LN(0.25), LN(0.25)], [LN(0.5), LN(0.5)]])
    adv = torch.tensor([1.0, -1.0])
    mask = torch.ones(2, 2)
    groups = torch.tensor([0, 0])
    return logp, gen, adv, mask, groups


def test_cispo_value_and_stop_gradient_weight():
    logp, gen, adv, mask, groups = batch()
    loss, stats = policy_loss(logp, gen, adv, mask, groups, LossConfig(kind="cispo", aggregation="token"))
    # -(2*1*ln.5 + 1*1*ln.25 - ln.5 - ln.5) / 4 = -2 ln 0.5 / 4
    assert loss.item() == pytest.approx(-2 * LN(0.5) / 4)
    loss.backward()
    # The weight is a constant: d/dlogp = -w*A/4 (a gradient through rho would change these)
    assert logp.grad.flatten().tolist() == pytest.approx([-0.5, -0.25, 0.25, 0.25])
    assert stats["mean_ratio"] == pytest.approx(1.25) and stats["clip_frac"] == 0.0


def test_cispo_truncates_weight_at_eps_max():
    logp, gen, adv, mask, groups = batch()
    loss, stats = policy_loss(
        logp, gen, adv, mask, groups, LossConfig(kind="cispo", aggregation="token", cispo_eps_max=1.5)
    )
    loss.backward()
    assert logp.grad[0, 0].item() == pytest.approx(-1.5 / 4)
    assert stats["clip_frac"] == pytest.approx(0.25)


def test_dapo_asymmetric_clip():
    logp, gen, adv, mask, groups = batch()
    loss, stats = policy_loss(logp, gen, adv, mask, groups, LossConfig(kind="dapo", aggregation="token"))
    # rho=2, A=1 is clipped to 1.28 (no gradient); the rest are rho * A
    assert loss.item() == pytest.approx((-1.28 - 1 + 1 + 1) / 4)
    loss.backward()
    assert logp.grad.flatten().tolist() == pytest.approx([0.0, -0.25, 0.25, 0.25])
    assert stats["clip_frac"] == pytest.approx(0.25)


def test_grpo_symmetric_clip_and_negative_advantage():
    logp = torch.tensor([[LN(0.5)], [LN(0.25)]], requires_grad=True)
    gen = torch.tensor([[LN(0.25)], [LN(0.5)]])  # rho = 2 and 0.5
    adv = torch.tensor([1.0, -1.0])
    loss, _ = policy_loss(
        logp, gen, adv, torch.ones(2, 1), torch.tensor([0, 1]), LossConfig(kind="grpo", aggregation="token")
    )
    # rho=2, A=1 -> min(2, 1.2) = 1.2; rho=0.5, A=-1 -> min(-0.5, -0.8) = -0.8 -> per-token (-1.2, +0.8)
    assert loss.item() == pytest.approx((-1.2 + 0.8) / 2)


def test_gspo_sequence_ratio():
    logp, gen, adv, mask, groups = batch()
    loss, _ = policy_loss(logp, gen, adv, mask, groups, LossConfig(kind="gspo", aggregation="token"))
    # seq0: s = exp((ln2 + 0)/2) = 1.414 -> clipped to 1.0004 (A=1); seq1: s = 1, A=-1
    assert loss.item() == pytest.approx((-1.0004 * 2 + 1 * 2) / 4, abs=1e-6)  # float32
    loss.backward()
    # seq1: both of its tokens carry -s*A = s, and ds/dlogp_t = s/n = 1/2: 2 tokens x 1/2 x 1/4 = 0.25
    assert logp.grad.flatten().tolist() == pytest.approx([0.0, 0.0, 0.25, 0.25])


def test_aggregations_by_hand():
    per_token = torch.tensor([[1.0, 2.0], [3.0, 0.0], [4.0, 0.0]])
    mask = torch.tensor([[1, 1], [1, 0], [1, 0]])
    groups = torch.tensor([0, 0, 1])
    assert aggregate(per_token, mask, groups, "token").item() == pytest.approx(10 / 4)
    assert aggregate(per_token, mask, groups, "sample").item() == pytest.approx((1.5 + 3 + 4) / 3)
    assert aggregate(per_token, mask, groups, "prompt").item() == pytest.approx((6 / 3 + 4) / 2)


@pytest.mark.parametrize("kind", ["cispo", "dapo", "grpo", "gspo"])
@pytest.mark.parametrize("how", ["prompt", "sample", "token"])
def test_empty_or_masked_batch_gives_zero_not_nan(kind, how):
    logp, gen, adv, mask, groups = batch()
    loss, stats = policy_loss(logp, gen, adv, torch.zeros_like(mask), groups, LossConfig(kind=kind, aggregation=how))
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(logp.grad).all() and stats["tokens"] == 0


def test_padding_does_not_count():
    logp, gen, adv, mask, groups = batch()
    mask[1, 1] = 0
    logp2 = logp.detach().clone()
    logp2[1, 1] = 123.0  # garbage in a padded slot must not change the loss
    cfg = LossConfig(kind="cispo", aggregation="prompt")
    a, _ = policy_loss(logp, gen, adv, mask, groups, cfg)
    b, _ = policy_loss(logp2, gen, adv, mask, groups, cfg)
    assert a.item() == pytest.approx(b.item())


def test_advantages_by_hand():
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0])
    groups = torch.tensor([0, 0, 1, 1])
    assert zero_variance_groups(rewards, groups).tolist() == [False, False, True, True]
    assert advantages(rewards, groups, "none").tolist() == pytest.approx([0.5, -0.5, 0.0, 0.0])
    # batch std of (0.5, -0.5, 0, 0) = sqrt(0.125)
    assert advantages(rewards, groups, "batch").tolist() == pytest.approx(
        [0.5 / 0.125**0.5, -0.5 / 0.125**0.5, 0, 0], rel=1e-4
    )
    assert advantages(rewards, groups, "prompt").tolist() == pytest.approx([1.0, -1.0, 0.0, 0.0], rel=1e-4)


@pytest.mark.parametrize("norm", ["batch", "prompt", "none"])
def test_advantages_of_huge_float32_rewards_stay_finite(norm):
    # float32 group sums of 4 x 3e38 overflowed: 'batch' and 'prompt' gave all NaN (inf - inf), 'none' -inf; the
    # whole step's loss was NaN. The statistics are now float64 and the result cast back.
    rewards = torch.tensor([3e38] * 4 + [0.0] * 4)
    adv = advantages(rewards, torch.zeros(8, dtype=torch.long), norm)
    assert adv.dtype == torch.float32 and torch.isfinite(adv).all(), adv
    assert adv[0] > 0 > adv[-1]
    assert zero_variance_groups(rewards, torch.zeros(8, dtype=torch.long)).tolist() == [False] * 8
