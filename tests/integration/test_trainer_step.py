"""One training step on a real Qwen2 model: a micro-batched step equals the unsplit one, and an FSDP2 step at 2 gloo
ranks equals a 1-rank step on the same batch."""

import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from scalerl.shared.wire.messages import Rollout
from scalerl.trainer_service.batch import batch_stats, build_batch
from scalerl.trainer_service.config import OptimSection, TrainerConfig
from scalerl.trainer_service.loss import LossConfig
from scalerl.trainer_service.microbatch import lengths_of, plan
from scalerl.trainer_service.parallel import full_state_dict, init_distributed, shard_model
from scalerl.trainer_service.step import StepConfig, broadcast_batch, make_optimizer, train_step
from tests.conftest import leave_ranks, tiny_qwen2


def tiny_model(seed=0):
    return tiny_qwen2(seed)


def rollout(group, k, reward, n_tok, version=0, forced_tail=0):
    rng = np.random.default_rng(hash((group, k)) % 2**32)
    forced = np.zeros(n_tok, np.uint8)
    if forced_tail:
        forced[-forced_tail:] = 1
    return Rollout(
        group_id=f"g{group}",
        sample_index=k,
        prompt_ids=rng.integers(1, 40, 5).astype(np.int32),
        completion_ids=rng.integers(1, 40, n_tok).astype(np.int32),
        logprobs=(-rng.random(n_tok) * 3).astype(np.float32) * (1 - forced),
        versions=np.full(n_tok, version, np.int32),
        forced=forced,
        finish_reason="interrupted" if forced_tail else "stop",
        reward=float(reward),
        t_queued=0.0,
        t_started=0.0,
        t_finished=0.0,
    )


def groups():
    # 4 informative groups of 4 samples, plus one all-correct group that the zero-variance filter drops.
    out = []
    for g in range(4):
        out.append(
            [
                rollout(g, k, reward=(k + g) % 2, n_tok=3 + (k + g) % 4, forced_tail=2 if (g, k) == (1, 1) else 0)
                for k in range(4)
            ]
        )
    out.append([rollout(9, k, reward=1.0, n_tok=4) for k in range(4)])
    return out


def uneven_groups():
    # One more group, with a 25-token row (over every budget below) and two short ones: ranks then get
    # different multisets of lengths, and so different numbers of micro-batches before padding.
    return groups() + [[rollout(7, k, reward=k % 2, n_tok=n) for k, n in enumerate((20, 3, 4))]]


def test_build_batch_filters_zero_variance_and_masks_forced_tokens():
    batch, n_zero = build_batch(groups(), "batch", zero_variance_filter=True)
    assert n_zero == 1 and batch.n_groups == 4 and batch.input_ids.shape[0] == 16
    # The interrupted sample (group 1, sample 1) has its 2 forced tokens out of the loss.
    row = 5
    n_completion = 3 + (1 + 1) % 4
    assert batch.loss_mask[row].sum().item() == n_completion - 2
    assert batch.attention_mask[row].sum().item() == 5 + n_completion
    none, _ = build_batch([groups()[-1]], "batch", zero_variance_filter=True)
    assert none is None
    stats = batch_stats(groups(), version=3)
    assert (
        stats["staleness_max"] == 3 and stats["samples"] == 20 and stats["interruption_rate"] == pytest.approx(1 / 20)
    )


def test_batch_normalisation_ignores_the_groups_the_filter_drops():
    # One informative group beside 0, 3 or 15 solved ones: the filter drops the solved groups, and the batch std is
    # the kept groups' own, so the kept advantages stay +-1 (counting the dropped zeros gave +-2 and +-4).
    informative = [rollout(0, k, reward=k % 2, n_tok=3) for k in range(4)]
    for n_solved in (0, 3, 15):
        solved = [[rollout(10 + g, k, reward=1.0, n_tok=3) for k in range(4)] for g in range(n_solved)]
        batch, n_zero = build_batch([informative] + solved, "batch", zero_variance_filter=True)
        assert n_zero == n_solved
        assert torch.allclose(batch.adv.abs(), torch.ones(4), atol=1e-4), (n_solved, batch.adv)
    # Without the filter the solved groups stay in the batch, and so in its std.
    batch, _ = build_batch([informative] + solved, "batch", zero_variance_filter=False)
    assert batch.adv[:4].abs().min().item() == pytest.approx(4.0, rel=1e-4)


def _sgd(model):
    # Plain SGD without clipping: Adam's first step and clipping are blind to the gradient's scale,
    # and a wrong normalisation across ranks or micro-batches is exactly a scale error.
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)


def _one_step(model, batch, sgd=False, loss_cfg: LossConfig | None = None, **step):
    if sgd:
        opt, sched = _sgd(model)
    else:
        opt, sched = make_optimizer(model, OptimSection(lr=1e-2, warmup_steps=0))
    loss_cfg = loss_cfg or LossConfig()
    return train_step(model, opt, sched, batch, loss_cfg, StepConfig(**step), grad_clip=1e9 if sgd else 1.0)


def _assert_same(got: dict, want: dict, what: str):
    assert set(got) == set(want)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-6, msg=f"{what}: {name}")


def test_single_rank_step_changes_parameters_and_logs():
    model = tiny_model()
    before = [p.detach().clone() for p in model.parameters()]
    batch, _ = build_batch(groups(), "batch", True)
    stats = _one_step(model, batch)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    for key in ("loss", "mean_ratio", "clip_frac", "entropy", "grad_norm"):
        assert np.isfinite(stats[key]), key
    assert stats["entropy"] > 0 and stats["trained_tokens"] == int(batch.loss_mask.sum())


@pytest.mark.parametrize("norm", ["batch", "prompt", "none"])
def test_a_step_on_rewards_at_the_wire_limit_is_finite(norm):
    # Rollout refuses |reward| > MAX_REWARD; at the limit every group statistic and the step stay finite.
    from scalerl.shared.wire.messages import MAX_REWARD

    big = [[rollout(g, k, reward=MAX_REWARD * (-1) ** (k + g), n_tok=3 + k) for k in range(4)] for g in range(2)]
    batch, _ = build_batch(big, norm, True)
    stats = _one_step(tiny_model(), batch)
    for key in ("loss", "grad_norm"):
        assert np.isfinite(stats[key]), (key, stats[key])


# A budget that cuts groups: rows are 8-12 tokens and groups 4 rows, so a 20-token micro-batch holds at most 2 rows.
SPLIT = 20


@pytest.mark.parametrize("pack", [False, True], ids=["sorted-padded", "packed"])
@pytest.mark.parametrize(
    "loss_cfg",
    [LossConfig(), LossConfig(aggregation="sample"), LossConfig(kind="gspo", aggregation="token")],
    ids=["cispo-prompt", "cispo-sample", "gspo-token"],
)
def test_microbatched_step_equals_unsplit(pack, loss_cfg):
    batch, _ = build_batch(groups(), "batch", True)
    mbs = plan(lengths_of(batch), 1, SPLIT, pack)[0]
    assert len(mbs) > 1
    # Some prompt's samples are in different micro-batches: prompt-level means must come from the whole step.
    gid = batch.group_ids.tolist()
    assert any(len({k for k, mb in enumerate(mbs) if g in {gid[i] for i in mb}}) > 1 for g in set(gid))
    whole, split = tiny_model(), tiny_model()
    want = _one_step(whole, batch, sgd=True, loss_cfg=loss_cfg)
    got = _one_step(split, batch, sgd=True, loss_cfg=loss_cfg, max_tokens_per_microbatch=SPLIT, pack=pack)
    _assert_same(split.state_dict(), whole.state_dict(), "micro-batched vs unsplit")
    for key in ("loss", "mean_ratio", "entropy", "grad_norm"):
        assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-7), key


# 2 ranks, FSDP2 over a CPU mesh, against one plain process: (name, train_step options).
SCENARIOS = [
    ("one micro-batch per rank", {}),
    ("packed micro-batches", {"max_tokens_per_microbatch": SPLIT, "pack": True}),
    # Rank 0 has one micro-batch fewer than rank 1 here: without the empty one that pads it, FSDP2's
    # collectives would hang.
    ("sorted-padded micro-batches", {"max_tokens_per_microbatch": SPLIT, "pack": False}),
]


def _rank_main(rank, world_size, init_file, out_dir):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        cfg = TrainerConfig(device="cpu")
        d = init_distributed(cfg)
        assert d.uses_fsdp and d.world == world_size and d.param_dtype is None
        for k, (_, step) in enumerate(SCENARIOS):
            model = shard_model(tiny_model(), d, cfg)
            batch = build_batch(uneven_groups(), "batch", True)[0] if rank == 0 else None
            batch = broadcast_batch(batch)
            stats = _one_step(model, batch, sgd=True, **step)
            state = full_state_dict(model)  # a collective: every rank gathers, rank 0 keeps it
            if rank == 0:
                save_file({n: v.contiguous() for n, v in state.items()}, os.path.join(out_dir, f"two_ranks_{k}.st"))
                torch.save(stats, os.path.join(out_dir, f"stats_{k}.pt"))
        # bf16 compute with FP32 master weights and FP32 gradient reduction, as on GPU: trains, stays finite.
        bf16 = TrainerConfig(device="cpu", param_dtype="bfloat16", activation_checkpointing=True)
        d = init_distributed(bf16)
        assert d.param_dtype == torch.bfloat16
        model = shard_model(tiny_model(), d, bf16)
        before = {n: v.clone() for n, v in full_state_dict(model).items()}
        stats = _one_step(model, broadcast_batch(build_batch(groups(), "batch", True)[0] if rank == 0 else None))
        after = full_state_dict(model)
        if rank == 0:
            assert all(v.dtype == torch.float32 for v in after.values())
            assert np.isfinite(stats["loss"]) and any(not torch.equal(before[n], after[n]) for n in after)
            open(os.path.join(out_dir, "bf16_ok"), "w").close()
        leave_ranks()  # tests/conftest.py: why a rank skips gloo's teardown
    finally:  # only when the work raised: the error is what the test reports
        dist.destroy_process_group()


def test_two_gloo_ranks_match_one_rank(tmp_path):
    """FSDP2 at 2 ranks (rows split by tokens, so prompts straddle ranks) equals one unsharded process."""
    batch, _ = build_batch(uneven_groups(), "batch", True)
    assert [] in plan(lengths_of(batch), 2, SPLIT, False)[0]
    mp.spawn(_rank_main, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    for k, (name, _) in enumerate(SCENARIOS):
        model = tiny_model()
        want = _one_step(model, batch, sgd=True)
        two = load_file(str(tmp_path / f"two_ranks_{k}.st"))
        _assert_same(two, model.state_dict(), name)
        got = torch.load(tmp_path / f"stats_{k}.pt")
        for key in ("loss", "mean_ratio", "entropy", "grad_norm"):
            assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-7), (name, key)
    assert (tmp_path / "bf16_ok").exists()
