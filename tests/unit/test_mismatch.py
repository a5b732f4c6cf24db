"""Train/inference mismatch: the statistics of every train line and the optional corrections (TIS, MIS), against
hand-computed values (docs/trainer.md, "Train/inference mismatch")."""

import math

import numpy as np
import pytest
import torch

from scalerl.shared.config import ConfigError, from_dict
from scalerl.shared.wire.messages import Rollout
from scalerl.trainer_service.batch import build_batch
from scalerl.trainer_service.config import LossConfig, OptimSection
from scalerl.trainer_service.loss import aggregate, policy_loss
from scalerl.trainer_service.policy import sequence_logprobs
from scalerl.trainer_service.step import StepConfig, make_optimizer, train_step
from tests.conftest import leave_ranks, tiny_qwen2

LN = math.log
LN2 = LN(2)


def two_by_three():
    # ratio pi_train / pi_gen: row 0 = (2, 0.5, masked 9), row 1 = (1, 2, 4). The masked slot stands for padding or
    # a forced token: its large ratio must count nowhere.
    train = torch.tensor([[LN(0.5), LN(0.25), LN(0.9)], [LN(0.5), LN(0.2), LN(0.4)]], requires_grad=True)
    gen = torch.tensor([[LN(0.25), LN(0.5), LN(0.1)], [LN(0.5), LN(0.1), LN(0.1)]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    return train, gen, torch.tensor([1.0, -1.0]), mask, torch.tensor([0, 0])


def test_mismatch_statistics_by_hand():
    train, gen, adv, mask, groups = two_by_three()
    _, stats = policy_loss(train, gen, adv, mask, groups, LossConfig(cispo_eps_max=3.0))
    # k3 = rho - 1 - ln rho per real token: (1 - ln2) + (ln2 - 1/2) + 0 + (1 - ln2) + (3 - 2 ln2) = 4.5 - 3 ln2
    assert stats["mismatch_kl"] == pytest.approx((4.5 - 3 * LN2) / 5, rel=1e-6)
    # |log rho| = ln2, ln2, 0, ln2, 2 ln2
    assert stats["mismatch_abs_mean"] == pytest.approx(5 * LN2 / 5, rel=1e-6)
    assert stats["mismatch_abs_max"] == pytest.approx(2 * LN2, rel=1e-6)
    assert stats["ratio_beyond_cap"] == pytest.approx(1 / 5)  # rho = 4 > eps_max = 3; the masked 9 does not count
    assert "tis_clipped_frac" not in stats and "is_masked_frac" not in stats


def test_equal_logprobs_have_no_mismatch():
    train, _, adv, mask, groups = two_by_three()
    _, stats = policy_loss(train, train.detach().clone(), adv, mask, groups)
    assert stats["mismatch_kl"] == 0.0 and stats["mismatch_abs_max"] == 0.0 and stats["ratio_beyond_cap"] == 0.0


def test_none_is_the_cispo_loss_bit_for_bit():
    """The default ("none") computes exactly what the loss computed before the corrections existed."""
    train, gen, adv, mask, groups = two_by_three()
    loss, _ = policy_loss(train, gen, adv, mask, groups, LossConfig())
    (grad,) = torch.autograd.grad(loss, train)
    ref_train = train.detach().clone().requires_grad_()
    weight = (ref_train - gen).masked_fill(~mask.bool(), 0.0).detach().exp().clamp(max=4.0)
    ref = aggregate(-(weight * adv[:, None] * ref_train), mask.bool(), groups, "prompt")
    (ref_grad,) = torch.autograd.grad(ref, ref_train)
    assert torch.equal(loss, ref) and torch.equal(grad, ref_grad)


@pytest.mark.parametrize("kind", ["cispo", "dapo", "grpo", "gspo"])
def test_corrections_at_infinite_caps_change_nothing(kind):
    train, gen, adv, mask, groups = two_by_three()
    want, _ = policy_loss(train, gen, adv, mask, groups, LossConfig(kind=kind))
    (want_grad,) = torch.autograd.grad(want, train)
    for cfg in (
        LossConfig(kind=kind, is_correction="tis", tis_cap=math.inf),
        LossConfig(kind=kind, is_correction="mis", mis_threshold=math.inf),
    ):
        got, _ = policy_loss(train, gen, adv, mask, groups, cfg)
        (got_grad,) = torch.autograd.grad(got, train)
        assert torch.equal(got, want) and torch.equal(got_grad, want_grad), cfg


def test_tis_truncates_each_ratio_at_the_cap_cispo():
    train, gen, adv, mask, groups = two_by_three()
    cfg = LossConfig(aggregation="token", cispo_eps_max=3.0, is_correction="tis", tis_cap=1.5)
    loss, stats = policy_loss(train, gen, adv, mask, groups, cfg)
    # weights min(rho, 1.5, eps_max 3): row 0 (1.5, 0.5), row 1 (1, 1.5, 1.5); A = (+1, -1); 5 tokens
    w = torch.tensor([[1.5, 0.5, 0.0], [1.0, 1.5, 1.5]])
    lp = train.detach()
    assert loss.item() == pytest.approx(float(-(w * adv[:, None] * lp).sum() / 5), rel=1e-6)
    loss.backward()
    torch.testing.assert_close(train.grad, -w * adv[:, None] / 5)
    assert stats["tis_clipped_frac"] == pytest.approx(3 / 5)  # rho = 2, 2, 4 are over 1.5
    assert stats["ratio_beyond_cap"] == pytest.approx(1 / 5)  # the raw rho = 4 against eps_max = 3, not the truncated


def test_tis_bounds_dapos_unclipped_negative_advantage_tokens():
    # A < 0 and rho > 1 + eps: DAPO's min() keeps the unclipped rho * A, so the gradient weight is rho itself.
    train = torch.tensor([[LN(0.6), LN(0.5)]], requires_grad=True)
    gen = torch.tensor([[LN(0.2), LN(0.5)]])  # rho = 3, 1
    args = (torch.tensor([-1.0]), torch.ones(1, 2), torch.tensor([0]))
    plain, _ = policy_loss(train, gen, *args, LossConfig(kind="dapo", aggregation="token"))
    (plain_grad,) = torch.autograd.grad(plain, train)
    tis, _ = policy_loss(train, gen, *args, LossConfig(kind="dapo", aggregation="token", is_correction="tis"))
    (tis_grad,) = torch.autograd.grad(tis, train)
    assert plain.item() == pytest.approx((3 + 1) / 2, rel=1e-6) and tis.item() == pytest.approx((2 + 1) / 2, rel=1e-6)
    torch.testing.assert_close(plain_grad, torch.tensor([[3 / 2, 1 / 2]]))
    torch.testing.assert_close(tis_grad, torch.tensor([[2 / 2, 1 / 2]]))  # min(rho, tis_cap = 2)


def test_mis_drops_exactly_the_sequences_beyond_the_threshold():
    # Geometric-mean ratios: 1.5 (kept), 2.5 (above 2: dropped), 0.3 (below 1/2: dropped), and a sequence with one
    # token at rho = 3 whose geometric mean sqrt(3 * 0.8) = 1.55 stays inside (kept: the mean, not the max, decides).
    rho = torch.tensor([[1.5, 1.5], [2.5, 2.5], [0.3, 0.3], [3.0, 0.8]])
    train = torch.log(torch.full((4, 2), 0.3)).requires_grad_()
    gen = train.detach() - rho.log()
    adv, mask, groups = torch.tensor([1.0, -1.0, 0.5, 2.0]), torch.ones(4, 2), torch.tensor([0, 0, 1, 1])
    plain, _ = policy_loss(train, gen, adv, mask, groups, LossConfig())
    (plain_grad,) = torch.autograd.grad(plain, train)
    mis, stats = policy_loss(train, gen, adv, mask, groups, LossConfig(is_correction="mis"))
    (mis_grad,) = torch.autograd.grad(mis, train)
    keep = torch.tensor([1.0, 0.0, 0.0, 1.0])[:, None]
    # The dropped rows' terms are zero; every denominator (tokens of each prompt) stays as it was.
    w = rho.clamp(max=4.0)
    want = aggregate(-(w * adv[:, None] * train.detach()) * keep, mask, groups, "prompt")
    assert mis.item() == pytest.approx(want.item(), rel=1e-6)
    assert torch.equal(mis_grad, plain_grad * keep)
    assert stats["is_masked_frac"] == pytest.approx(2 / 4)


def test_loss_config_checks_name_the_key():
    with pytest.raises(ValueError, match="tis_cap"):
        LossConfig(tis_cap=0.0).check()
    with pytest.raises(ValueError, match="mis_threshold"):
        LossConfig(mis_threshold=1.0).check()
    with pytest.raises(ConfigError, match="trainer.loss.is_correction"):
        from_dict(LossConfig, {"is_correction": "ice"}, "trainer.loss.")
    assert from_dict(LossConfig, {"is_correction": "mis", "mis_threshold": 3.0}).mis_threshold == 3.0


# The step: the same statistics from its own micro-batches as policy_loss gives on the whole batch at once.


def _tiny_model(seed=0):
    return tiny_qwen2(seed)


def _batch():
    rng = np.random.default_rng(0)
    groups = []
    for g in range(3):
        group = []
        for k in range(4):
            n = 3 + (g + k) % 4
            forced = np.zeros(n, np.uint8)
            forced[-1:] = (g, k) == (1, 2)
            group.append(
                Rollout(
                    group_id=f"g{g}",
                    sample_index=k,
                    prompt_ids=rng.integers(1, 40, 4).astype(np.int32),
                    completion_ids=rng.integers(1, 40, n).astype(np.int32),
                    # Near the tiny model's ~ -ln 40, so that some sequences fall inside MIS's band and some out.
                    logprobs=(-3.7 + rng.normal(0, 0.6, n)).astype(np.float32) * (1 - forced),
                    versions=np.zeros(n, np.int32),
                    forced=forced,
                    finish_reason="interrupted" if forced.any() else "stop",
                    reward=float((g + k) % 2),
                    t_queued=0.0,
                    t_started=0.0,
                    t_finished=0.0,
                )
            )
        groups.append(group)
    return build_batch(groups, "batch", True)[0]


@pytest.mark.parametrize("correction", ["none", "tis", "mis"])
def test_step_reports_what_policy_loss_computes(correction):
    torch.set_num_threads(1)
    cfg = LossConfig(is_correction=correction, tis_cap=1.2, mis_threshold=1.3)
    batch, model = _batch(), _tiny_model()
    with torch.no_grad():
        lp, _ = sequence_logprobs(model, batch.input_ids, batch.attention_mask)
    want_loss, want = policy_loss(lp, batch.gen_logprobs, batch.adv, batch.loss_mask, batch.group_ids, cfg)
    opt, sched = make_optimizer(model, OptimSection(lr=1e-3, warmup_steps=0))
    got = train_step(model, opt, sched, batch, cfg, StepConfig(max_tokens_per_microbatch=20))
    keys = {"mismatch_kl", "mismatch_abs_mean", "mismatch_abs_max", "ratio_beyond_cap"}
    keys |= {"tis": {"tis_clipped_frac"}, "mis": {"is_masked_frac"}, "none": set()}[correction]
    assert keys <= set(got) and not ({"tis_clipped_frac", "is_masked_frac"} - keys) & set(got)
    for key in keys:
        assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-7), key
    assert got["loss"] == pytest.approx(want_loss.item(), rel=1e-5, abs=1e-7)
    if correction != "none":
        assert (
            0 < got[next(iter(keys - {"mismatch_kl", "mismatch_abs_mean", "mismatch_abs_max", "ratio_beyond_cap"}))] < 1
        )


def _rank_main(rank, world_size, init_file, out_dir):
    import os

    import torch.distributed as dist

    from scalerl.trainer_service.config import TrainerConfig
    from scalerl.trainer_service.parallel import init_distributed, shard_model
    from scalerl.trainer_service.step import broadcast_batch

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        cfg = TrainerConfig(device="cpu")
        model = shard_model(_tiny_model(), init_distributed(cfg), cfg)
        batch = broadcast_batch(_batch() if rank == 0 else None)
        opt, sched = make_optimizer(model, OptimSection(lr=1e-3, warmup_steps=0))
        stats = train_step(model, opt, sched, batch, LossConfig(is_correction="mis", mis_threshold=1.3), StepConfig())
        torch.save(stats, os.path.join(out_dir, f"stats_{rank}.pt"))
        leave_ranks()  # tests/conftest.py: why a rank skips gloo's teardown
    finally:  # only when the work raised: the error is what the test reports
        dist.destroy_process_group()


def test_two_ranks_report_the_whole_step(tmp_path):
    """Each rank scores only its share of the rows; every rank must report the statistics of the whole step (the
    sums and the max reduced over ranks), equal to one process's."""
    import torch.multiprocessing as mp

    mp.spawn(_rank_main, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    model = _tiny_model()
    opt, sched = make_optimizer(model, OptimSection(lr=1e-3, warmup_steps=0))
    want = train_step(model, opt, sched, _batch(), LossConfig(is_correction="mis", mis_threshold=1.3), StepConfig())
    for rank in range(2):
        got = torch.load(tmp_path / f"stats_{rank}.pt")
        for key in ("mismatch_kl", "mismatch_abs_mean", "mismatch_abs_max", "ratio_beyond_cap", "is_masked_frac"):
            assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-7), (rank, key)
