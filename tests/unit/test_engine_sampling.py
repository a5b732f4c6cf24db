"""Pure pieces of the torch engine: the sampling math, the per-request budget rules and
request validation. Hand-checked values; no model needed."""

from __future__ import annotations

import math

import pytest
import torch

from scalerl.generator_service.backend import EngineRequest, EngineSampling
from scalerl.generator_service.engine.sampling import (
    MASK32,
    mix32,
    mix32_tensor,
    picked_logprobs,
    sample_tokens,
    seed_key,
    uniforms,
)
from scalerl.generator_service.engine.sequence import Sequence, draw_thinking_budget
from scalerl.generator_service.request_validation import request_problem

# ---- hashing / uniforms ------------------------------------------------------------------


def test_mix32_reference_values():
    # Hand-run of lowbias32 on 1: 1 ^ 0 = 1; *0x7feb352d = 0x7feb352d; ^>>15 = 0x7feb352d ^ 0xffd6
    x = 0x7FEB352D ^ (0x7FEB352D >> 15)
    x = (x * 0x846CA68B) & MASK32
    assert mix32(1) == x ^ (x >> 16)
    assert mix32(0) == 0  # 0 is the fixed point of lowbias32
    assert mix32(1 << 32) == 0  # only the low 32 bits count


def test_mix32_tensor_matches_python_including_wrapping_products():
    values = [0, 1, 2, 12345, 2**31 - 1, 2**31, 2**32 - 1, 0xDEADBEEF, 0x9E3779B9]
    got = mix32_tensor(torch.tensor(values, dtype=torch.int64)).tolist()
    assert got == [mix32(v) for v in values]


def test_uniforms_are_a_function_of_key_and_counter_and_look_uniform():
    keys = torch.full((20000,), seed_key(7), dtype=torch.int64)
    counters = torch.arange(20000, dtype=torch.int64)
    u = uniforms(keys, counters)
    assert u.dtype == torch.float32
    assert float(u.min()) >= 0.0 and float(u.max()) < 1.0
    assert torch.equal(u, uniforms(keys, counters))
    assert not torch.equal(u, uniforms(torch.full_like(keys, seed_key(8)), counters))
    # Mean and variance of U(0,1) are 1/2 and 1/12; 20k draws put the sample mean within ~0.002.
    assert abs(float(u.mean()) - 0.5) < 0.01
    assert abs(float(u.var()) - 1 / 12) < 0.005
    # Decile counts: chi-square with 9 dof; 40 is far beyond its 99.99th percentile (~33.7).
    counts = torch.bincount((u * 10).long(), minlength=10).double()
    assert float(((counts - 2000) ** 2 / 2000).sum()) < 40


# ---- sampling ----------------------------------------------------------------------------


def _logits(probs, order=None):
    lg = torch.tensor(probs, dtype=torch.float32).log()
    return lg[None, :] if order is None else lg[order][None, :]


@pytest.mark.parametrize(
    "u, expected",
    # probs 0.5, 0.3, 0.2 -> CDF 0.5, 0.8, 1.0: token i is the first whose CDF exceeds u.
    [(0.0, 0), (0.49, 0), (0.51, 1), (0.79, 1), (0.81, 2), (0.999, 2)],
)
def test_inverse_cdf_sampling_by_hand(u, expected):
    one = torch.ones(1)
    for use_top_p in (True, False):
        got = sample_tokens(_logits([0.5, 0.3, 0.2]), one, one, torch.tensor([u]), use_top_p)
        assert got.tolist() == [expected]


def test_sampling_maps_sorted_choice_back_to_vocabulary_ids():
    # Same distribution, vocabulary order 2, 0, 1: probs [0.2, 0.5, 0.3] at ids 0, 1, 2.
    logits = _logits([0.2, 0.5, 0.3])
    one = torch.ones(1)
    # Sorted: id1 (0.5), id2 (0.3), id0 (0.2).
    assert sample_tokens(logits, one, one, torch.tensor([0.4]), True).tolist() == [1]
    assert sample_tokens(logits, one, one, torch.tensor([0.6]), True).tolist() == [2]
    assert sample_tokens(logits, one, one, torch.tensor([0.9]), True).tolist() == [0]
    # Without the sort the CDF runs in id order: 0.2, 0.7, 1.0.
    assert sample_tokens(logits, one, one, torch.tensor([0.1]), False).tolist() == [0]


def test_top_p_by_hand():
    logits = _logits([0.5, 0.3, 0.2])
    one = torch.ones(1)
    # top_p 0.6: mass before token 1 is 0.5 < 0.6, before token 2 is 0.8 -> keep {0, 1}, renormalised
    # to 0.625 / 0.375, so u = 0.7 -> 0.7 * 0.8 = 0.56 lands on token 1 and token 2 never comes.
    assert sample_tokens(logits, one, torch.tensor([0.6]), torch.tensor([0.7]), True).tolist() == [1]
    assert sample_tokens(logits, one, torch.tensor([0.6]), torch.tensor([0.999]), True).tolist() == [1]
    # top_p 0.5: mass before token 1 is 0.5, not < 0.5 -> only token 0.
    assert sample_tokens(logits, one, torch.tensor([0.5]), torch.tensor([0.99]), True).tolist() == [0]


def test_temperature_zero_is_argmax_and_temperature_reshapes():
    logits = _logits([0.2, 0.5, 0.3])
    assert sample_tokens(logits, torch.zeros(1), torch.ones(1), torch.tensor([0.99]), True).tolist() == [1]
    # T = 2 turns p into p^(1/2) / Z: sqrt(.2), sqrt(.5), sqrt(.3) / Z -> CDF 0.284, 0.734, 1.0.
    z = math.sqrt(0.2) + math.sqrt(0.5) + math.sqrt(0.3)
    cdf0 = math.sqrt(0.2) / z
    two = torch.tensor([2.0])
    assert sample_tokens(logits, two, torch.ones(1), torch.tensor([cdf0 - 0.01]), False).tolist() == [0]
    assert sample_tokens(logits, two, torch.ones(1), torch.tensor([cdf0 + 0.01]), False).tolist() == [1]


def test_empirical_frequencies_follow_the_truncated_tempered_distribution():
    torch.manual_seed(0)
    base = torch.randn(12) * 2
    rows = 40000
    logits = base.expand(rows, -1).contiguous()
    temp = torch.full((rows,), 0.8)
    top_p = torch.full((rows,), 0.9)
    keys = torch.tensor([seed_key(s) for s in range(rows)], dtype=torch.int64)
    u = uniforms(keys, torch.zeros(rows, dtype=torch.int64))
    counts = torch.bincount(sample_tokens(logits, temp, top_p, u, True), minlength=12).double() / rows
    p = torch.softmax(base / 0.8, -1).double()
    sp, order = p.sort(descending=True)
    keep = (sp.cumsum(0) - sp) < 0.9
    expected = torch.zeros(12, dtype=torch.float64)
    expected[order[keep]] = sp[keep] / sp[keep].sum()
    assert torch.allclose(counts, expected, atol=0.01)


def test_picked_logprobs_is_untempered_log_softmax():
    torch.manual_seed(1)
    logits = torch.randn(5, 30)
    tokens = torch.randint(0, 30, (5,))
    expected = torch.log_softmax(logits, -1).gather(1, tokens[:, None]).squeeze(1)
    assert torch.allclose(picked_logprobs(logits, tokens), expected, atol=1e-6)


# ---- per-request rules -------------------------------------------------------------------

INTERRUPT = (60, 61, 62)


def _seq(**params) -> Sequence:
    return Sequence(EngineRequest("r", (1, 2, 3), EngineSampling(**params)), seed=5, submitted=0.0)


def _feed(seq: Sequence, tokens) -> list[int]:
    appended = []
    for t in tokens:
        if seq.finish_reason is not None:
            break
        appended.append(seq.push(t, -1.0, 0))
    return appended


def test_interruption_fires_exactly_at_the_budget_then_answer_budget_ends_it():
    seq = _seq(max_new_tokens=100, thinking_budget=(4, 4), interruption_token_ids=INTERRUPT, answer_budget=2)
    appended = _feed(seq, [9] * 50)
    assert appended == [9, 9, 9, 9, 60, 61, 62, 9, 9]
    assert seq.forced == [False] * 4 + [True] * 3 + [False] * 2
    assert seq.logprobs == [-1.0] * 4 + [0.0] * 3 + [-1.0] * 2
    assert seq.finish_reason == "interrupted"


def test_stop_token_before_the_budget_is_a_normal_stop():
    seq = _seq(max_new_tokens=100, stop_token_ids=(0,), thinking_budget=(4, 4), interruption_token_ids=INTERRUPT)
    assert _feed(seq, [9, 9, 0, 9]) == [9, 9, 0]
    assert seq.finish_reason == "stop"


def test_stop_token_in_the_answer_ends_an_interrupted_sequence():
    seq = _seq(max_new_tokens=100, stop_token_ids=(0,), thinking_budget=(2, 2), interruption_token_ids=INTERRUPT)
    assert _feed(seq, [9, 9, 9, 9, 9, 5, 0, 7]) == [9, 9, 60, 61, 62, 5, 0]
    assert seq.finish_reason == "interrupted"


def test_closing_thinking_alone_disables_the_interruption():
    seq = _seq(max_new_tokens=8, thinking_budget=(4, 4), interruption_token_ids=INTERRUPT, think_end_token_ids=(7, 8))
    assert _feed(seq, [9, 7, 8, 9, 9, 9, 9, 9, 9]) == [9, 7, 8, 9, 9, 9, 9, 9]
    assert not any(seq.forced)
    assert seq.finish_reason == "length"


def test_max_new_tokens_caps_the_interruption_and_keeps_the_reason():
    seq = _seq(max_new_tokens=5, thinking_budget=(3, 3), interruption_token_ids=INTERRUPT)
    assert _feed(seq, [9] * 10) == [9, 9, 9, 60, 61]
    assert seq.finish_reason == "interrupted"


def test_length_without_budget():
    seq = _seq(max_new_tokens=3)
    assert _feed(seq, [9] * 10) == [9, 9, 9]
    assert seq.finish_reason == "length"
    c = seq.to_completion(1.0)
    assert c.token_ids.dtype.name == "int32" and c.logprobs.dtype.name == "float32"
    assert c.versions.dtype.name == "int32" and c.forced.dtype.name == "bool"


def test_budget_draw_is_in_range_reproducible_and_spread():
    draws = [draw_thinking_budget((10_000, 12_000), seed) for seed in range(300)]
    assert all(10_000 <= d <= 12_000 for d in draws)
    assert draws == [draw_thinking_budget((10_000, 12_000), seed) for seed in range(300)]
    assert len(set(draws)) > 250
    assert draw_thinking_budget((7, 7), 3) == 7
    assert draw_thinking_budget(None, 3) is None


# ---- validation --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "request_, fragment",
    [
        (EngineRequest("a", ()), "empty prompt"),
        (EngineRequest("a", (1, 99)), "prompt_token_ids"),
        (EngineRequest("a", (1,), EngineSampling(max_new_tokens=0)), "max_new_tokens"),
        (EngineRequest("a", (1,) * 10, EngineSampling(max_new_tokens=995)), "exceeds max_seq_len 1000"),
        (EngineRequest("a", (1,), EngineSampling(temperature=-1.0)), "temperature"),
        (EngineRequest("a", (1,), EngineSampling(top_p=0.0)), "top_p"),
        (EngineRequest("a", (1,), EngineSampling(stop_token_ids=(64,))), "stop_token_ids"),
        (
            EngineRequest("a", (1,), EngineSampling(thinking_budget=(5, 4), interruption_token_ids=(1,))),
            "thinking_budget",
        ),
        (EngineRequest("a", (1,), EngineSampling(thinking_budget=(4, 5))), "interruption_token_ids"),
        (EngineRequest("", (1,)), "request_id"),
        ({"request_id": "a"}, "not an EngineRequest"),
    ],
)
def test_request_problems_are_one_line_and_name_the_field(request_, fragment):
    problem = request_problem(request_, vocab_size=64, max_seq_len=1000)
    assert problem is not None and fragment in problem and "\n" not in problem


def test_good_request_passes():
    req = EngineRequest("ok", (1, 2), EngineSampling(thinking_budget=(3, 9), interruption_token_ids=(4, 5)))
    assert request_problem(req, vocab_size=64, max_seq_len=1000) is None
