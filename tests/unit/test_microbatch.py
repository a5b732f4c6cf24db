"""Micro-batch plans and layouts, and whole-step loss weights that survive any split."""

import dataclasses
import random
from types import SimpleNamespace

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from scalerl.trainer_service.batch import TrainBatch
from scalerl.trainer_service.config import LossConfig
from scalerl.trainer_service.loss import MISMATCH_SUMS, aggregate, unit_weights
from scalerl.trainer_service.microbatch import lengths_of, materialise, materialise_step, plan, unpack
from scalerl.trainer_service.policy import sequence_logprobs
from scalerl.trainer_service.step import StepConfig, micro_batch


def random_batch(lengths, n_groups=3, prompt=3, vocab=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    B, L = len(lengths), max(lengths) + 2
    ids = torch.zeros((B, L), dtype=torch.long)
    att = torch.zeros((B, L), dtype=torch.long)
    loss = torch.zeros((B, L))
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(1, vocab, (n,), generator=g)
        att[i, :n] = 1
        loss[i, prompt:n] = 1
    gen = -torch.rand((B, L), generator=g) * loss
    adv = torch.randn(B, generator=g)
    return TrainBatch(ids, att, loss, gen, adv, torch.arange(B) % n_groups)


@pytest.mark.parametrize("pack", [False, True])
@pytest.mark.parametrize("n_ranks", [1, 2, 3])
@pytest.mark.parametrize("budget", [0, 16, 40])
def test_plan_covers_every_row_once_and_gives_every_rank_the_same_count(pack, n_ranks, budget):
    rng = random.Random(n_ranks * 100 + budget)
    lengths = [rng.randint(4, 30) for _ in range(23)]
    p = plan(lengths, n_ranks, budget, pack)
    assert len(p) == n_ranks and len({len(r) for r in p}) == 1
    rows = sorted(i for r in p for mb in r for i in mb)
    assert rows == list(range(len(lengths)))
    for r in p:
        for mb in r:
            if budget and len(mb) > 1:  # only a single over-long row may exceed the budget
                cost = sum(lengths[i] for i in mb) if pack else len(mb) * max(lengths[i] for i in mb)
                assert cost <= budget
    # Token balance: ranks differ by at most one longest row.
    loads = [sum(lengths[i] for mb in r for i in mb) for r in p]
    assert max(loads) - min(loads) <= max(lengths)


def test_plan_pads_short_ranks_with_empty_micro_batches():
    p = plan([30, 5, 5, 5, 5, 5, 5], 2, 12, pack=True)
    assert p == [[[0], [], []], [[1, 2], [3, 4], [5, 6]]]


def test_packed_layout_restarts_positions_and_maps_back():
    batch = random_batch([5, 9, 7])
    mb = materialise(batch, [0, 2], pack=True)
    assert mb.input_ids.shape == (1, 12) and mb.attention_mask is None
    assert mb.position_ids.tolist() == [[0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 5, 6]]
    back = unpack(mb.input_ids, mb) * batch.attention_mask[mb.rows, : mb.width]
    assert torch.equal(back, batch.input_ids[[0, 2], :7])
    # The first token of each packed sequence is never scored: its predecessor is another sequence's token.
    assert not mb.score_mask[0, 0] and not mb.score_mask[0, 5]


def tiny(attn="sdpa"):
    torch.manual_seed(0)
    cfg = Qwen2Config(
        vocab_size=50,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        attn_implementation=attn,
    )
    return Qwen2ForCausalLM(cfg).eval()


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_rows_score_like_padded_rows(attn):
    """transformers builds a per-sequence causal mask from restarting position ids: packing changes no value."""
    model = tiny(attn)
    batch = random_batch([6, 13, 9, 4, 11])
    rows = [0, 1, 2, 3, 4]
    with torch.no_grad():
        want = [unpack(v, m) for m in [materialise(batch, rows, pack=False)] for v in _scores(model, m)]
        got = [unpack(v, m) for m in [materialise(batch, rows, pack=True)] for v in _scores(model, m)]
    mask = batch.loss_mask[:, : max(lengths_of(batch))] > 0
    for w, g in zip(want, got):
        torch.testing.assert_close(g[mask], w[mask], rtol=1e-5, atol=1e-5)
    assert mask.sum() > 20


def _scores(model, mb):
    return sequence_logprobs(
        model, mb.input_ids, mb.attention_mask, position_ids=mb.position_ids, score_mask=mb.score_mask
    )


@pytest.mark.parametrize("how", ["prompt", "sample", "token"])
def test_unit_weights_sum_over_any_split_to_the_aggregate(how):
    batch = random_batch([5, 9, 7, 12, 8, 6, 10], n_groups=3)
    per_token = torch.randn(batch.loss_mask.shape)
    want = aggregate(per_token, batch.loss_mask, batch.group_ids, how)
    w, units = unit_weights(batch.loss_mask, batch.group_ids, how)
    # Rows of one prompt in different pieces: each piece sums its rows with the whole-step weights.
    pieces = [[0, 4], [1, 2, 6], [3, 5]]
    got = sum((per_token[p] * w[p]).sum() for p in pieces) / units
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("pack", [False, True])
def test_host_built_score_index_selects_what_the_mask_selects(pack):
    model = tiny()
    batch = random_batch([6, 13, 9, 4, 11])
    for mb in materialise_step(batch, [[0, 2], [1, 3, 4], []], pack):
        assert torch.equal(mb.score_index, mb.score_mask[:, 1:].reshape(-1).nonzero()[:, 0])
        args = (model, mb.input_ids, mb.attention_mask)
        kw = dict(position_ids=mb.position_ids, score_mask=mb.score_mask)
        with torch.no_grad():
            for got, want in zip(
                sequence_logprobs(*args, **kw, score_index=mb.score_index), sequence_logprobs(*args, **kw)
            ):
                assert torch.equal(got, want)


class _MetaModel(torch.nn.Module):
    """Embedding then LM head, on the meta device: tensors without data, so any op that needs a device value on
    the host (nonzero, boolean-mask indexing, .item(), .tolist(), .cpu()) raises, as each would sync on CUDA."""

    def __init__(self, vocab=50, hidden=8):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, hidden, device="meta")
        self.lm_head = torch.nn.Linear(hidden, vocab, bias=False, device="meta")
        self.model = lambda input_ids, **_: SimpleNamespace(last_hidden_state=self.emb(input_ids))


def _meta(x):
    return x.to("meta") if isinstance(x, torch.Tensor) else x


@pytest.mark.parametrize("pack", [False, True])
@pytest.mark.parametrize("is_correction", ["none", "tis", "mis"])
def test_a_micro_batch_reads_nothing_back_from_the_device(pack, is_correction):
    """Issue 22 item 5: the per-micro-batch path (step.micro_batch) queues work without one host-device sync."""
    host = random_batch([6, 13, 9, 4, 11])
    mbs = materialise_step(host, [[0, 2], [1, 3, 4], []], pack)
    batch = TrainBatch(*(_meta(getattr(host, f.name)) for f in dataclasses.fields(TrainBatch)))
    weights = torch.ones(host.loss_mask.shape, device="meta")
    sums = torch.zeros(4 + len(MISMATCH_SUMS), dtype=torch.float64, device="meta")
    abs_max = torch.zeros((), dtype=torch.float64, device="meta")
    model, loss_cfg = _MetaModel(), LossConfig(is_correction=is_correction)
    for mb in mbs:
        mb = dataclasses.replace(mb, **{f.name: _meta(getattr(mb, f.name)) for f in dataclasses.fields(mb)})
        abs_max = micro_batch(model, batch, mb, weights, 1.0, sums, abs_max, loss_cfg, StepConfig())
        if not mb.empty:
            # The boolean-mask selection the step used before: meta catches its sync.
            with pytest.raises(NotImplementedError):
                micro_batch(
                    model,
                    batch,
                    dataclasses.replace(mb, score_index=None),
                    weights,
                    1.0,
                    sums,
                    abs_max,
                    loss_cfg,
                    StepConfig(),
                )
    assert model.lm_head.weight.grad is not None and abs_max.device.type == "meta"
