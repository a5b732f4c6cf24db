"""Messages and their wire encoding: round trips, validation, hostile input."""

from __future__ import annotations

import dataclasses
import pathlib
import random
import re
import subprocess
import sys

import msgpack
import numpy as np
import pytest
from conftest import corrupt

from scalerl.shared.wire.codec import PROTOCOL_VERSION, decode, encode
from scalerl.shared.wire.messages import (
    MESSAGE_TYPES,
    Error,
    EvalRequest,
    EvalResult,
    GenerationRequest,
    Heartbeat,
    ProtocolError,
    Ready,
    Rollout,
    SamplingParams,
    Shutdown,
    TensorSpec,
    WeightUpdate,
    field_types,
)

DOCS = pathlib.Path(__file__).resolve().parents[2] / "docs" / "protocol.md"


def rollout(**over) -> Rollout:
    kw = dict(
        group_id="g-1",
        sample_index=2,
        prompt_index=7,
        item_id="gsm8k/12",
        prompt_ids=[1, 2, 3],
        completion_ids=[10, 11, 12, 13],
        logprobs=[-0.5, -1.25, 0.0, -3.0],
        versions=[4, 4, 5, 5],
        forced=[0, 1, 1, 0],
        finish_reason="interrupted",
        reward=1.0,
        verifier_info={"parsed": "42", "ok": True, "n": 3},
        t_queued=10.0,
        t_started=10.5,
        t_finished=12.25,
    )
    kw.update(over)
    return Rollout(**kw)


def examples() -> list:
    spec = TensorSpec(name="w", dtype="bfloat16", shape=(2, 3), bucket=0, offset=64, nbytes=12)
    return [
        GenerationRequest(
            group_id="g-1",
            prompt_ids=[1, 2, 3],
            n_samples=8,
            verifier="math",
            answer="42",
            prompt_index=7,
            item_id="gsm8k/12",
            sampling=SamplingParams(
                temperature=0.6, top_p=0.95, max_new_tokens=512, thinking_budget=400, answer_budget=None
            ),
        ),
        rollout(),
        rollout(completion_ids=[], logprobs=[], versions=[], forced=[], finish_reason="length"),
        WeightUpdate(
            version=3, transport="zmq", address="tcp://127.0.0.1:5000", bucket_sizes=(76, 0), manifest=(spec,)
        ),
        Ready(peer_id="gen-0", role="generator", version=-1, pid=123, info={"host": "a"}),
        Heartbeat(peer_id="gen-0", seq=5, sent_at=1.5, stats={"queue": 3, "tok_s": 812.5}),
        Shutdown(reason="done"),
        Error(peer_id="gen-0", code="bad_request", message="prompt too long", group_id="g-1"),
        EvalRequest(version=20),
        EvalResult(
            peer_id="eval-0",
            version=20,
            pass_rate=0.625,
            n_samples=8,
            eval_prompts=2,
            eval_k=4,
            pass_rate_interrupted=None,
            pass_rate_uninterrupted=0.625,
            interrupted_frac=0.0,
            eval_s=1.5,
        ),
        EvalResult(peer_id="eval-0", version=40, error="weights of v40 replaced by v60 before they arrived"),
    ]


def same(a, b) -> bool:
    """Field-by-field equality, arrays compared by dtype and bytes."""
    if type(a) is not type(b):
        return False
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and a.tobytes() == b.tobytes()
    if dataclasses.is_dataclass(a):
        return all(same(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a))
    if isinstance(a, tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def wire(msg) -> list:
    return msgpack.unpackb(encode(msg), raw=False)


def rewire(msg, **fields) -> bytes:
    version, tag, body = wire(msg)
    body.update(fields)
    return msgpack.packb([version, tag, body])


@pytest.mark.parametrize("msg", examples(), ids=lambda m: type(m).__name__)
def test_round_trip(msg):
    assert same(decode(encode(msg)), msg)


def test_every_type_has_an_example():
    assert {type(m) for m in examples()} == set(MESSAGE_TYPES.values())


def test_arrays_travel_as_little_endian_bytes():
    r = rollout()
    version, tag, body = wire(r)
    assert (version, tag) == (PROTOCOL_VERSION, "rollout")
    assert body["completion_ids"] == np.array([10, 11, 12, 13], "<i4").tobytes()
    assert body["logprobs"] == np.array([-0.5, -1.25, 0.0, -3.0], "<f4").tobytes()
    assert body["versions"] == b"\x04\0\0\0\x04\0\0\0\x05\0\0\0\x05\0\0\0"
    assert body["forced"] == b"\0\1\1\0"
    back = decode(encode(r))
    assert back.logprobs.dtype == np.dtype("<f4") and back.versions.dtype == np.dtype("<i4")
    assert not back.completion_ids.flags.writeable  # a view of the received bytes


def test_constructor_converts_and_guards_dtypes():
    r = rollout(completion_ids=np.array([1, 2, 3, 4], np.int64), forced=np.array([0, 1, 1, 0], bool))
    assert r.completion_ids.dtype == np.int32 and r.forced.dtype == np.uint8
    with pytest.raises(ProtocolError, match="out of range for int32"):
        rollout(completion_ids=np.array([1, 2, 3, 2**40]))
    with pytest.raises(ProtocolError, match="cannot hold float64"):
        rollout(completion_ids=[1.0, 2.0, 3.0, 4.0])
    with pytest.raises(ProtocolError, match="1-D"):
        rollout(completion_ids=[[1, 2], [3, 4]])


@pytest.mark.parametrize(
    "data, problem",
    [
        (
            msgpack.packb([PROTOCOL_VERSION + 1, "shutdown", {"reason": ""}]),
            f"protocol version {PROTOCOL_VERSION + 1} not supported",
        ),
        # version 1: unsigned requests; its generators must be refused at Ready, not register and refuse each request
        (
            msgpack.packb([1, "ready", {"peer_id": "g"}]),
            f"protocol version 1 not supported (expected {PROTOCOL_VERSION})",
        ),
        (msgpack.packb([True, "shutdown", {"reason": ""}]), "protocol version True"),
        (msgpack.packb([PROTOCOL_VERSION, "pickle", {}]), "unknown message type 'pickle'"),
        (msgpack.packb([PROTOCOL_VERSION, "shutdown"]), "envelope"),
        (msgpack.packb({"v": 1}), "envelope"),
        (msgpack.packb([PROTOCOL_VERSION, "shutdown", {}]), "Shutdown: missing field(s) reason"),
        (msgpack.packb([PROTOCOL_VERSION, "shutdown", {"reason": "", "x": 1}]), "unknown field(s) ['x']"),
        (msgpack.packb([PROTOCOL_VERSION, "shutdown", {"reason": 3}]), "Shutdown.reason: expected str, got int"),
        (msgpack.packb([PROTOCOL_VERSION, "shutdown", {1: 3}]), "not valid msgpack"),
        (msgpack.packb([PROTOCOL_VERSION, "shutdown", msgpack.ExtType(5, b"")]), "extension type 5"),
        (b"\x93\x01", "not valid msgpack"),
        (b"", "not valid msgpack"),
    ],
)
def test_envelope_errors(data, problem):
    with pytest.raises(ProtocolError) as e:
        decode(data)
    assert problem in str(e.value) and "\n" not in str(e.value)


R = rollout()


@pytest.mark.parametrize(
    "fields, problem",
    [
        ({"logprobs": np.zeros(3, "<f4").tobytes()}, "Rollout.logprobs: 3 values, but completion_ids has 4"),
        ({"logprobs": b"\0" * 15}, "15 bytes is not a multiple of 4"),
        ({"completion_ids": [10, 11, 12, 13]}, "expected raw bytes of <i4, got list"),
        ({"finish_reason": "eos"}, "'eos' is not one of ['stop', 'length', 'interrupted']"),
        ({"finish_reason": "stop"}, "'stop' but forced tokens present"),
        ({"reward": float("nan")}, "Rollout.reward: must be finite"),
        # inf as float32, the trainer's rewards: the advantages and the whole step's loss became NaN.
        ({"reward": 1e39}, "Rollout.reward: 1e+39 is beyond +-1e+06"),
        ({"reward": -3.5e38}, "Rollout.reward: -3.5e+38 is beyond +-1e+06"),
        # finite in float32, but four of them overflowed the group sums: NaN advantages for the step
        ({"reward": 3e38}, "Rollout.reward: 3e+38 is beyond +-1e+06"),
        ({"reward": -1000001.0}, "Rollout.reward: -1000001.0 is beyond +-1e+06"),
        ({"reward": True}, "Rollout.reward: expected float, got bool"),
        ({"sample_index": 1.0}, "Rollout.sample_index: expected int, got float"),
        ({"sample_index": -1}, "Rollout.sample_index: must be >= 0"),
        ({"logprobs": np.array([0, np.nan, 0, 0], "<f4").tobytes()}, "Rollout.logprobs: contains NaN"),
        # -inf where sampled made the importance ratio inf: mean_ratio inf, mismatch_kl NaN, a loss 10^10 off.
        ({"logprobs": np.array([-np.inf, 0, 0, 0], "<f4").tobytes()}, "Rollout.logprobs: infinite where a token"),
        ({"logprobs": np.array([0, 0, 0, np.inf], "<f4").tobytes()}, "Rollout.logprobs: infinite where a token"),
        ({"versions": np.array([5, 4, 5, 5], "<i4").tobytes()}, "Rollout.versions: decreasing"),
        ({"versions": np.array([-1, 4, 5, 5], "<i4").tobytes()}, "Rollout.versions: negative version"),
        ({"completion_ids": np.array([1, -2, 3, 4], "<i4").tobytes()}, "negative token id"),
        ({"forced": b"\0\2\1\0"}, "mask values must be 0 or 1"),
        ({"prompt_ids": b""}, "Rollout.prompt_ids: empty prompt"),
        ({"t_started": 9.0}, "t_queued <= t_started <= t_finished"),
        ({"verifier_info": {"a": [1]}}, "value for 'a' is list, not a scalar"),
        ({"verifier_info": {str(i): i for i in range(65)}}, "65 entries"),
        ({"group_id": ""}, "Rollout.group_id: must not be empty"),
    ],
)
def test_rollout_validation(fields, problem):
    with pytest.raises(ProtocolError) as e:
        decode(rewire(R, **fields))
    assert problem in str(e.value) and "\n" not in str(e.value)


def test_forced_tokens_logprobs_may_be_infinite():
    # R forces tokens 1 and 2: their logprobs mean nothing and are masked out of the loss.
    back = decode(rewire(R, logprobs=np.array([-0.5, -np.inf, np.inf, -3.0], "<f4").tobytes()))
    assert np.isinf(back.logprobs[1:3]).all()


@pytest.mark.parametrize(
    "sampling, problem",
    [
        ({"temperature": -0.1}, "SamplingParams.temperature: must be finite and >= 0, got -0.1"),
        ({"top_p": 0.0}, "SamplingParams.top_p: must be in (0, 1], got 0.0"),
        ({"max_new_tokens": 0}, "SamplingParams.max_new_tokens: must be an int >= 1, got 0"),
        ({"thinking_budget": -1}, "SamplingParams.thinking_budget: must be an int >= 0, got -1"),
        ({"answer_budget": 0}, "SamplingParams.answer_budget: must be an int >= 1 or None, got 0"),
        ({"answer_budget": "5"}, "answer_budget: expected int, got str"),
    ],
)
def test_request_validation(sampling, problem):
    req = examples()[0]
    body = wire(req)[2]
    body["sampling"].update(sampling)
    with pytest.raises(ProtocolError, match=re.escape(problem)):
        decode(msgpack.packb([PROTOCOL_VERSION, "generation_request", body]))
    with pytest.raises(ProtocolError, match="n_samples: must be >= 1"):
        decode(rewire(req, n_samples=0))
    with pytest.raises(ProtocolError, match="sampling: fields must be a map"):
        decode(rewire(req, sampling=[1.0]))


def test_weight_update_validation():
    upd = examples()[3]
    spec = wire(upd)[2]["manifest"][0]
    cases = [
        ({"manifest": [{**spec, "bucket": 2}]}, "bucket 2 of 2"),
        ({"manifest": [{**spec, "offset": 68}]}, "overrun bucket 0 of 76 bytes"),
        ({"manifest": [{**spec, "offset": 3}]}, "offset 3 is not a non-negative multiple of 2"),
        ({"manifest": [{**spec, "nbytes": 10}]}, "nbytes 10 != prod([2, 3]) * 2"),
        ({"manifest": [{**spec, "dtype": "object"}]}, "'object' is not one of"),
        ({"manifest": [{**spec, "shape": [2, -3]}]}, "dimension -3"),
        ({"manifest": [spec, spec]}, "duplicate name"),
        ({"transport": "http"}, "'http' is not one of ['zmq', 'dist', 'vllm-nccl', 'vllm-gloo']"),
        ({"bucket_sizes": 76}, "expected a list of ints"),
        # msgpack ints reach 2**64-1: past 2**63 torch.empty raised TypeError out of the zmq receiver
        ({"bucket_sizes": [1 << 63, 0]}, "bytes in all, more than 281474976710656"),
        ({"bucket_sizes": [(1 << 64) - 1, 0]}, "bytes in all, more than"),
        ({"bucket_sizes": [1 << 47, 1 << 47, 1 << 47, 0]}, "bytes in all, more than"),
    ]
    for fields, problem in cases:
        with pytest.raises(ProtocolError, match=re.escape(problem)):
            decode(rewire(upd, **fields))
    assert decode(encode(upd)).total_bytes == 76


def test_hostile_bytes_only_ever_raise_protocol_error():
    rng = random.Random(1)
    goods = [encode(m) for m in examples()]
    n_ok = 0
    for i in range(3000):
        data = corrupt(rng, rng.choice(goods), i % 3)
        try:
            decode(data)
            n_ok += 1  # some bit flips (e.g. inside a string) still make a valid message
        except ProtocolError as e:
            assert "\n" not in str(e)
    assert n_ok < 1000


def test_the_docs_say_router_handover_is_off():
    # sockets.py sets ROUTER_HANDOVER 0 on the control and weight ROUTERs (with it, any process reaching the socket
    # could take over a peer's route by its id); protocol.md said handover "lets a restarted peer reuse its id".
    sockets = (DOCS.parents[1] / "shared" / "wire" / "sockets.py").read_text()
    assert "setsockopt(zmq.ROUTER_HANDOVER, 0)" in sockets
    text = " ".join(DOCS.read_text().split())
    assert "`ROUTER_HANDOVER` lets a restarted peer" not in text
    assert "`ROUTER_HANDOVER` is off" in text


def test_every_field_is_documented():
    text = DOCS.read_text()
    sections = dict(re.findall(r"^### (\w+)\n(.*?)(?=^##)", text + "\n##", re.S | re.M))
    classes = list(MESSAGE_TYPES.values()) + [SamplingParams, TensorSpec]
    for cls in classes:
        assert cls.__name__ in sections, f"docs/protocol.md: no section for {cls.__name__}"
        for name in field_types(cls):
            assert re.search(rf"^\| `{name}` \|", sections[cls.__name__], re.M), (
                f"docs/protocol.md: {cls.__name__}.{name} missing from its table"
            )
            assert re.search(rf"^\s+{name}: ", cls.__doc__, re.M), f"{cls.__name__} docstring does not describe {name}"
    for tag in MESSAGE_TYPES:
        assert f"`{tag}`" in text


def test_message_modules_do_not_import_torch():
    code = (
        "import sys, scalerl.shared.wire.codec, scalerl.shared.wire.sockets, scalerl.shared; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_messages_are_frozen_and_ints_accepted_as_floats():
    r = rollout()
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.reward = 2.0
    back = decode(rewire(r, reward=3))
    assert type(back.reward) is float and back.reward == 3.0


@pytest.mark.parametrize(
    "fields, problem",
    [
        (dict(pass_rate=1.5), "EvalResult.pass_rate"),
        (dict(interrupted_frac=-0.1), "EvalResult.interrupted_frac"),
        (dict(pass_rate_interrupted=2.0), "EvalResult.pass_rate_interrupted"),
        (dict(n_samples=0), "EvalResult.n_samples"),  # a score of nothing is only valid as an error
        (dict(version=-1), "EvalResult.version"),
        (dict(peer_id=""), "EvalResult.peer_id"),
        (dict(eval_s=float("nan")), "EvalResult.eval_s"),
    ],
)
def test_eval_result_validation(fields, problem):
    good = dict(peer_id="eval-0", version=3, pass_rate=0.5, n_samples=4, eval_prompts=1, eval_k=4)
    EvalResult(**good)
    with pytest.raises(ProtocolError, match=problem):
        EvalResult(**{**good, **fields})
    with pytest.raises(ProtocolError, match="EvalRequest.version"):
        EvalRequest(version=-2)


def _nested(depth: int) -> list:
    x: list = []
    for _ in range(depth):
        x = [x]
    return x


@pytest.mark.parametrize("depth", [1000, 1023])
def test_deep_nesting_is_a_protocol_error_not_a_recursion_error(depth):
    # msgpack unpacks up to 1024 levels; repr() of the value for the error text used to raise RecursionError,
    # which no receiving endpoint catches: a 1 KB message killed the trainer.
    ro = next(m for m in examples() if isinstance(m, Rollout))
    for data in (
        b"\x91" * depth + b"\x00",  # the envelope itself
        msgpack.packb([1, _nested(depth - 1), {}]),  # the type tag
        rewire(ro, finish_reason=_nested(depth - 2)),  # a field quoted in the error
        rewire(ro, routed_experts={"n_experts": 4, "dtype": "uint8", "shape": [1, _nested(depth - 4)], "experts": b""}),
    ):
        with pytest.raises(ProtocolError) as e:
            decode(data)
        assert len(str(e.value)) < 500 and "\n" not in str(e.value)


def test_error_text_stays_short_whatever_a_field_holds():
    ro = next(m for m in examples() if isinstance(m, Rollout))
    huge = list(range(2_000_000))
    for data in (
        rewire(ro, finish_reason=huge),
        rewire(ro, routed_experts={"n_experts": 4, "dtype": "uint8", "shape": [1] * 2_000_000, "experts": b"\x00"}),
        rewire(ro, verifier_info={"k" * 1_000_000: []}),
    ):
        with pytest.raises(ProtocolError) as e:
            decode(data)
        assert len(str(e.value)) <= 500, str(e.value)[:200]
