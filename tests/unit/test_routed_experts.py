"""The routed-experts payload of a Rollout (router replay): compact, exact over msgpack, and hostile bytes only
ever raise a one-line ProtocolError."""

from __future__ import annotations

import random
import re

import msgpack
import numpy as np
import pytest
from conftest import corrupt

from scalerl.shared.wire.codec import decode, encode
from scalerl.shared.wire.messages import ProtocolError, Rollout, RoutedExperts


def rollout(routed: RoutedExperts | None, n_completion: int = 4, **over) -> Rollout:
    kw = dict(
        group_id="g-1",
        sample_index=0,
        prompt_ids=[1, 2, 3],
        completion_ids=list(range(10, 10 + n_completion)),
        logprobs=[-0.5] * n_completion,
        versions=[0] * n_completion,
        forced=[0] * n_completion,
        finish_reason="stop",
        reward=1.0,
        t_queued=1.0,
        t_started=2.0,
        t_finished=3.0,
        routed_experts=routed,
    )
    kw.update(over)
    return Rollout(**kw)


def experts(tokens: int, layers: int = 4, k: int = 2, n: int = 8, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([rng.permutation(n)[:k] for _ in range(tokens * layers)]).reshape(tokens, layers, k)


def rewire(msg, **fields) -> bytes:
    version, tag, body = msgpack.unpackb(encode(msg), raw=False)
    body["routed_experts"] = {**body["routed_experts"], **fields}
    return msgpack.packb([version, tag, body], use_bin_type=True)


@pytest.mark.parametrize("rows", [6, 7])  # prompt + completion, or one fewer (the last token never ran)
def test_round_trip_is_exact_and_one_byte_per_index(rows):
    a = experts(rows)
    r = rollout(RoutedExperts.pack(a, 8))
    back = decode(encode(r))
    got = back.routed_experts.array()
    assert got.shape == (rows, 4, 2) and got.dtype == np.uint8 and np.array_equal(got, a)
    assert back.routed_experts.dtype == "uint8" and len(back.routed_experts.experts) == a.size
    # Twice through: decoded arrays are read-only views of the bytes; they must encode as they came.
    assert encode(back) == encode(r)
    # Raw bytes, not a list of numbers: the payload costs about one byte per index on the wire.
    assert len(encode(r)) - len(encode(rollout(None))) < a.size + 64


def test_many_experts_take_two_bytes_and_rollouts_without_experts_carry_nil():
    a = experts(7, layers=2, k=4, n=300)
    re_ = RoutedExperts.pack(a, 300)
    assert re_.dtype == "uint16" and len(re_.experts) == 2 * a.size
    assert np.array_equal(decode(encode(rollout(re_))).routed_experts.array(), a)
    assert decode(encode(rollout(None))).routed_experts is None


def test_pack_refuses_what_does_not_fit():
    with pytest.raises(ProtocolError, match=r"indices outside \[0, 8\)"):
        RoutedExperts.pack(np.full((2, 1, 2), 8), 8)
    with pytest.raises(ProtocolError, match="3-D integer array"):
        RoutedExperts.pack(np.zeros((2, 2)), 8)
    with pytest.raises(ProtocolError, match="3-D integer array"):
        RoutedExperts.pack(np.zeros((2, 1, 2), dtype=np.float32), 8)


def test_bad_payloads_are_refused_with_one_line_naming_the_field():
    good = rollout(RoutedExperts.pack(experts(7), 8))
    raw = good.routed_experts.experts.tobytes()
    cases = [
        ({"shape": [7, 4]}, "RoutedExperts.shape: expected [tokens, layers, k], each >= 1, got [7, 4]"),
        ({"shape": [7, 4, 0]}, "RoutedExperts.shape: expected [tokens, layers, k], each >= 1"),
        ({"shape": [7, 4, 2, 1]}, "RoutedExperts.shape"),
        ({"shape": [7, 2, 4]}, None),  # same bytes, another layout: valid (the trainer checks layers and k)
        ({"shape": [7, 1, 9]}, "k = 9 > n_experts = 8"),
        ({"shape": [8, 4, 2]}, "56 bytes, expected 64 for [8, 4, 2] uint8"),
        ({"experts": raw[:-1]}, "55 bytes, expected 56"),
        ({"experts": raw + b"\x00\x00"}, "58 bytes, expected 56"),
        ({"experts": raw[:-1] + b"\x08"}, "expert index >= n_experts = 8"),
        ({"experts": list(raw)}, "expected raw bytes"),
        ({"dtype": "uint16"}, "uint16 for 8 experts (expected uint8)"),
        ({"dtype": "int64"}, "'int64' is not one of"),
        ({"n_experts": 0}, "n_experts: must be in [1, 65536]"),
        ({"n_experts": 2}, "k = 2"),  # indices up to 7 with 2 experts: refused one way or the other
        ({"n_experts": 1.5}, "expected int"),
        ({"shape": "7,4,2"}, "expected a list of ints"),
    ]
    for fields, problem in cases:
        if problem is None:
            assert decode(rewire(good, **fields)).routed_experts.shape == tuple(fields["shape"])
            continue
        with pytest.raises(ProtocolError) as info:
            decode(rewire(good, **fields))
        msg = str(info.value)
        assert "\n" not in msg and msg.startswith(("RoutedExperts.", "Rollout.routed_experts")), msg
        if fields.get("n_experts") == 2:
            assert re.search("k = 2|expert index", msg), msg
        else:
            assert problem in msg, msg


def test_token_rows_must_match_the_sequence():
    for rows in (5, 8):  # 7 tokens of prompt + completion: 6 or 7 rows only
        with pytest.raises(ProtocolError, match=f"Rollout.routed_experts: {rows} token rows for 7 tokens"):
            rollout(RoutedExperts.pack(experts(rows), 8))
    r = rollout(RoutedExperts.pack(experts(7), 8))
    version, tag, body = msgpack.unpackb(encode(r), raw=False)
    body["routed_experts"] = "abc"
    with pytest.raises(ProtocolError, match="Rollout.routed_experts: fields must be a map"):
        decode(msgpack.packb([version, tag, body], use_bin_type=True))
    body.pop("routed_experts")
    with pytest.raises(ProtocolError, match="missing field.*routed_experts"):
        decode(msgpack.packb([version, tag, body], use_bin_type=True))


def test_fuzzed_payloads_only_ever_raise_one_line_protocol_errors():
    rng = random.Random(7)
    goods = [encode(rollout(RoutedExperts.pack(experts(t, seed=t), 8), n_completion=t - 3)) for t in (4, 7, 20)]
    goods.append(encode(rollout(RoutedExperts.pack(experts(9, layers=2, k=3, n=300), 300), n_completion=6)))
    n_ok = 0
    for i in range(3000):
        data = corrupt(rng, rng.choice(goods), i % 3)
        try:
            msg = decode(data)
        except ProtocolError as e:
            assert "\n" not in str(e)
            continue
        n_ok += 1  # some bit flips (an index, a log-probability) still make a valid message...
        if msg.routed_experts is not None:  # ...and then its experts are in range and shaped as announced
            a = msg.routed_experts.array()
            assert a.ndim == 3 and int(a.max()) < msg.routed_experts.n_experts
    assert n_ok < 1000
