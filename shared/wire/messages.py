"""Message types exchanged between trainer and generators (wire format: codec.py).

Every message is a frozen dataclass that validates itself on construction, so a
message object that exists is a valid one, on the sending side and the receiving
side alike. Invalid content raises ProtocolError with a one-line reason.

Arrays are numpy 1-D arrays with a fixed little-endian dtype (I32, F32, U8);
constructors accept lists or arrays of other dtypes and convert them, refusing
values that would not survive the conversion. Arrays in decoded messages are
read-only views of the received bytes.

No torch here: the CLI imports this module.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Annotated, Any, Callable, Literal, Union

import numpy as np

from scalerl.shared.wire.values import Details, sampling_problem, show
from scalerl.shared.wire.weights.registry import WeightTransportName

I32 = Annotated[np.ndarray, "<i4"]
F32 = Annotated[np.ndarray, "<f4"]
U8 = Annotated[np.ndarray, "|u1"]

FinishReason = Literal["stop", "length", "interrupted"]
FINISH_REASONS: tuple[str, ...] = typing.get_args(FinishReason)

# The tensor dtypes a WeightUpdate may announce (names as torch prints them), spelled out so that type checkers
# see the Literal; DTYPE_SIZES below must name the same ones, which the check after it enforces at import.
TensorDtype = Literal["float32", "float16", "bfloat16", "float64", "int64", "int32", "int16", "int8", "uint8", "bool"]
DTYPE_SIZES: dict[TensorDtype, int] = {
    "float32": 4,
    "float16": 2,
    "bfloat16": 2,
    "float64": 8,
    "int64": 8,
    "int32": 4,
    "int16": 2,
    "int8": 1,
    "uint8": 1,
    "bool": 1,
}
if set(DTYPE_SIZES) != set(typing.get_args(TensorDtype)):
    raise AssertionError("DTYPE_SIZES and TensorDtype name different dtypes")

MAX_DETAILS = 64  # entries in a str->scalar dict; these are meant to stay small
MAX_REWARD = 1e6  # |Rollout.reward| at most: far past any verifier's scale, and its group sums stay finite in float32
MAX_TRANSFER_BYTES = 1 << 48  # a weight transfer's buckets together (256 TiB); beyond it no memory holds them


class ProtocolError(ValueError):
    """A message is malformed, of the wrong protocol version, or breaks an invariant."""


MAX_ERROR_CHARS = 400  # a ProtocolError's text is cut here, whatever it quotes


def _fail(where: str, problem: str) -> typing.NoReturn:
    text = f"{where}: {problem}".replace("\n", " ")
    raise ProtocolError(text if len(text) <= MAX_ERROR_CHARS else text[:MAX_ERROR_CHARS] + "...")


# ---------------------------------------------------------------- field checkers
# Built once per class from its type hints: one function per field that returns the
# (possibly converted) value or raises ProtocolError.


def _exact_type_checker(tp: type) -> Callable[[str, Any], Any]:
    # Exactly tp, not a subclass: a bool is not an int on the wire, nor a str subclass a str.
    def check(where: str, v: Any) -> Any:
        if type(v) is not tp:
            _fail(where, f"expected {tp.__name__}, got {type(v).__name__}")
        return v

    return check


def _check_float(where: str, v: Any) -> float:
    if type(v) is not float and type(v) is not int:
        _fail(where, f"expected float, got {type(v).__name__}")
    try:
        v = float(v)
    except OverflowError:
        _fail(where, "int too large for a float")
    if not math.isfinite(v):
        _fail(where, f"must be finite, got {v}")
    return v


def _array_checker(dtype: str) -> Callable[[str, Any], np.ndarray]:
    want = np.dtype(dtype)

    def check(where: str, v: Any) -> np.ndarray:
        if isinstance(v, np.ndarray) and v.dtype == want and v.ndim == 1:
            return v
        try:
            a = np.asarray(v)
        except Exception as e:  # ragged lists and the like
            _fail(where, f"not an array ({e})")
        if a.ndim != 1:
            _fail(where, f"expected a 1-D array, got shape {a.shape}")
        if a.size == 0:
            return np.zeros(0, dtype=want)
        if a.dtype.kind not in "biuf" or (want.kind in "iu" and a.dtype.kind == "f"):
            _fail(where, f"cannot hold {a.dtype} values as {want}")
        b = a.astype(want)
        if want.kind in "iu" and not np.array_equal(b, a):
            _fail(where, f"values out of range for {want}")
        return b

    return check


def _literal_checker(choices: tuple) -> Callable[[str, Any], Any]:
    def check(where: str, v: Any) -> Any:
        if type(v) is not str or v not in choices:
            _fail(where, f"{show(v)} is not one of {list(choices)}")
        return v

    return check


def _check_details(where: str, v: Any) -> dict:
    if type(v) is not dict:
        _fail(where, f"expected dict, got {type(v).__name__}")
    if len(v) > MAX_DETAILS:
        _fail(where, f"{len(v)} entries (max {MAX_DETAILS})")
    for k, x in v.items():
        if type(k) is not str:
            _fail(where, f"key {show(k)} is not a str")
        if type(x) not in (bool, int, float, str):
            _fail(where, f"value for {show(k)} is {type(x).__name__}, not a scalar")
    return v


def _check_shape(where: str, v: Any) -> tuple[int, ...]:
    if type(v) not in (list, tuple):
        _fail(where, f"expected a list of ints, got {type(v).__name__}")
    for x in v:
        if type(x) is not int or x < 0:
            _fail(where, f"dimension {show(x)} is not a non-negative int")
    return tuple(v)


def _nested_checker(cls: type) -> Callable[[str, Any], Any]:
    def check(where: str, v: Any) -> Any:
        if not isinstance(v, cls):
            _fail(where, f"expected {cls.__name__}, got {type(v).__name__}")
        return v

    return check


def _seq_checker(cls: type) -> Callable[[str, Any], tuple]:
    one = _nested_checker(cls)

    def check(where: str, v: Any) -> tuple:
        if type(v) not in (list, tuple):
            _fail(where, f"expected a list, got {type(v).__name__}")
        return tuple(one(f"{where}[{i}]", x) for i, x in enumerate(v))

    return check


def _optional(inner: Callable[[str, Any], Any]) -> Callable[[str, Any], Any]:
    return lambda where, v: None if v is None else inner(where, v)


def checker_for(tp: Any) -> Callable[[str, Any], Any]:
    """The validating converter for one field annotation (used by codec too)."""
    if tp in (str, int, bool):
        return _exact_type_checker(tp)
    if tp is float:
        return _check_float
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Annotated:
        return _array_checker(args[1])
    if origin is Literal:
        return _literal_checker(args)
    if origin in (Union, types.UnionType) and type(None) in args:
        (inner,) = [a for a in args if a is not type(None)]
        return _optional(checker_for(inner))
    if origin is dict:
        return _check_details
    if origin is tuple and args[0] is int:
        return _check_shape
    if origin is tuple:
        return _seq_checker(args[0])
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _nested_checker(tp)
    raise TypeError(f"no checker for {tp!r}")


def field_types(cls: type) -> dict[str, Any]:
    """Field name -> annotation, in declaration order."""
    hints = typing.get_type_hints(cls, include_extras=True)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


class _Validated:
    """Runs the per-field checkers, then the class's own cross-field `_check`."""

    _checkers: typing.ClassVar[tuple]

    def __post_init__(self) -> None:
        cls = type(self)
        if "_checkers" not in cls.__dict__:
            cls._checkers = tuple(
                (name, f"{cls.__name__}.{name}", checker_for(tp)) for name, tp in field_types(cls).items()
            )
        for name, where, check in cls._checkers:
            v = getattr(self, name)
            out = check(where, v)
            if out is not v:
                object.__setattr__(self, name, out)
        self._check()

    def _check(self) -> None:
        pass


def _require(cond: bool, where: str, problem: str) -> None:
    if not cond:
        _fail(where, problem)


def _nonempty(where: str, s: str) -> None:
    _require(len(s) > 0, where, "must not be empty")


# ---------------------------------------------------------------- messages


@dataclass(frozen=True, kw_only=True)
class SamplingParams(_Validated):
    """How to sample the completions of one GenerationRequest.

    Attributes:
        temperature: softmax temperature, >= 0 (0 = greedy).
        top_p: nucleus sampling mass, in (0, 1].
        max_new_tokens: hard cap on completion tokens, >= 1 (forced tokens count).
        thinking_budget: completion tokens allowed before the generator interrupts the
            thinking section and forces its interruption text; None = generator default.
        answer_budget: tokens allowed after the interruption text for the final answer;
            None = generator default.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int
    thinking_budget: int | None = None
    answer_budget: int | None = None

    def _check(self) -> None:
        problem = sampling_problem(
            self.temperature, self.top_p, self.max_new_tokens, self.thinking_budget, self.answer_budget
        )
        if problem is not None:
            field_name, _, rest = problem.partition(" ")
            _fail(f"SamplingParams.{field_name}", rest)


@dataclass(frozen=True, kw_only=True, eq=False)  # arrays: compare fields explicitly
class GenerationRequest(_Validated):
    """Trainer -> generator: sample `n_samples` completions of one prompt (one group).

    Attributes:
        group_id: unique id of this group; echoed in every Rollout it produces.
        prompt_ids: prompt token ids (chat template already applied), int32, >= 1 token.
        n_samples: completions to generate, >= 1 (the group size for advantages).
        sampling: sampling parameters (SamplingParams).
        prompt_index: index of the prompt in the trainer's data order, >= 0; echoed.
        item_id: dataset item id; echoed.
        verifier: name of the reward function the generator applies (e.g. "math").
        answer: ground truth handed to the verifier (may be empty).
    """

    group_id: str
    prompt_ids: I32
    n_samples: int
    sampling: SamplingParams
    prompt_index: int = 0
    item_id: str = ""
    verifier: str
    answer: str = ""

    def _check(self) -> None:
        _nonempty("GenerationRequest.group_id", self.group_id)
        _nonempty("GenerationRequest.verifier", self.verifier)
        _require(len(self.prompt_ids) > 0, "GenerationRequest.prompt_ids", "empty prompt")
        _require(self.prompt_ids.min() >= 0, "GenerationRequest.prompt_ids", "negative token id")
        _require(self.n_samples >= 1, "GenerationRequest.n_samples", "must be >= 1")
        _require(self.prompt_index >= 0, "GenerationRequest.prompt_index", "must be >= 0")


# Expert indices per dtype of RoutedExperts: the smallest unsigned integer that holds every expert index.
ROUTED_DTYPES: dict[str, np.dtype] = {"uint8": np.dtype("|u1"), "uint16": np.dtype("<u2")}


def routed_dtype(n_experts: int) -> Literal["uint8", "uint16"]:
    """The wire dtype of the expert indices of a model with n_experts routed experts."""
    return "uint8" if n_experts <= 256 else "uint16"


@dataclass(frozen=True, kw_only=True, eq=False)  # arrays: compare fields explicitly
class RoutedExperts(_Validated):
    """The experts the generator's router chose for each token, per MoE layer (router replay, docs/trainer.md).

    Packed compactly: `experts` holds the raw little-endian bytes of a (tokens, layers, k) array of `dtype`
    (uint8 when n_experts <= 256, else uint16); `array()` is the view. Row t is the routing of the token at
    position t of prompt + completion, as vLLM's `routed_experts` returns it.

    Attributes:
        n_experts: routed experts per MoE layer, >= 1; every index is < n_experts.
        dtype: "uint8" or "uint16", which must be routed_dtype(n_experts).
        shape: [tokens, layers, k], each >= 1, k <= n_experts.
        experts: the bytes, prod(shape) * itemsize of them.
    """

    n_experts: int
    dtype: Literal["uint8", "uint16"]
    shape: tuple[int, ...]
    experts: U8

    @classmethod
    def pack(cls, experts: Any, n_experts: int) -> "RoutedExperts":
        """From a (tokens, layers, k) integer array; raises ProtocolError for values that do not fit."""
        a = np.asarray(experts)
        if a.ndim != 3 or a.dtype.kind not in "iu":
            _fail("RoutedExperts.experts", f"expected a 3-D integer array, got {a.dtype} of shape {a.shape}")
        if type(n_experts) is not int or n_experts < 1:
            _fail("RoutedExperts.n_experts", f"must be an int >= 1, got {show(n_experts)}")
        if a.size and (a.min() < 0 or a.max() >= n_experts):
            _fail("RoutedExperts.experts", f"indices outside [0, {n_experts})")
        dtype = routed_dtype(n_experts)
        raw = np.ascontiguousarray(a, dtype=ROUTED_DTYPES[dtype]).reshape(-1).view(np.uint8)
        return cls(n_experts=n_experts, dtype=dtype, shape=tuple(int(x) for x in a.shape), experts=raw)

    def array(self) -> np.ndarray:
        """The (tokens, layers, k) indices, a read-only view of the bytes."""
        return self.experts.view(ROUTED_DTYPES[self.dtype]).reshape(self.shape)

    def _check(self) -> None:
        if not 1 <= self.n_experts <= 65536:
            _fail("RoutedExperts.n_experts", f"must be in [1, 65536], got {self.n_experts}")
        if self.dtype != routed_dtype(self.n_experts):
            want_dtype = routed_dtype(self.n_experts)
            _fail("RoutedExperts.dtype", f"{self.dtype} for {self.n_experts} experts (expected {want_dtype})")
        if len(self.shape) != 3 or min(self.shape) < 1:
            _fail("RoutedExperts.shape", f"expected [tokens, layers, k], each >= 1, got {show(list(self.shape))}")
        if self.shape[2] > self.n_experts:
            _fail("RoutedExperts.shape", f"k = {self.shape[2]} > n_experts = {self.n_experts}")
        want = math.prod(self.shape) * ROUTED_DTYPES[self.dtype].itemsize
        if len(self.experts) != want:
            have = len(self.experts)
            _fail("RoutedExperts.experts", f"{have} bytes, expected {want} for {show(list(self.shape))} {self.dtype}")
        if int(self.experts.view(ROUTED_DTYPES[self.dtype]).max()) >= self.n_experts:
            _fail("RoutedExperts.experts", f"expert index >= n_experts = {self.n_experts}")


@dataclass(frozen=True, kw_only=True, eq=False)  # arrays: compare fields explicitly
class Rollout(_Validated):
    """Generator -> trainer: one completion of a GenerationRequest, scored.

    The four per-token arrays have one entry per completion token.

    Attributes:
        group_id: the request's group_id.
        sample_index: which of the request's n_samples this is, >= 0.
        prompt_index: echoed from the request.
        item_id: echoed from the request.
        prompt_ids: the prompt token ids, int32 (echoed so a rollout is self-contained).
        completion_ids: generated token ids, int32, ids >= 0 (may be empty).
        logprobs: behaviour-policy log-probability of each token as the generator
            computed it while sampling, float32, never NaN, finite where sampled. Meaningless where `forced`.
        versions: policy version that produced each token, int32, >= 0, non-decreasing
            (weights may change mid-completion).
        forced: uint8 mask, 1 where the token was inserted by the generator
            (interruption text) rather than sampled; the trainer masks these out.
        finish_reason: "stop" (end-of-sequence sampled), "length" (max_new_tokens
            reached), or "interrupted" (thinking budget hit, interruption text forced;
            exactly the rollouts with any forced token).
        reward: scalar reward from the verifier, finite, |reward| <= MAX_REWARD (1e6): a reward near float32's
            limit made the trainer's group sums and squares overflow, and one such rollout made a step's loss NaN.
        verifier_info: small str -> scalar dict of verifier details (e.g. parsed answer).
        t_queued: time.time() when the generator received the request.
        t_started: time.time() when generation of this sample started.
        t_finished: time.time() when it finished; t_queued <= t_started <= t_finished.
        routed_experts: with router replay, the experts the generator routed each token of prompt + completion
            to (RoutedExperts, one row per token; the last completion token may lack its row, since no forward
            pass ran on it); None otherwise.
    """

    group_id: str
    sample_index: int
    prompt_index: int = 0
    item_id: str = ""
    prompt_ids: I32
    completion_ids: I32
    logprobs: F32
    versions: I32
    forced: U8
    finish_reason: FinishReason
    reward: float
    verifier_info: Details = field(default_factory=dict)
    t_queued: float
    t_started: float
    t_finished: float
    routed_experts: RoutedExperts | None = None

    def _check(self) -> None:
        # Plain ifs and few numpy calls (~1 us each): this is most of the decode time.
        n = len(self.completion_ids)
        for name in ("logprobs", "versions", "forced"):
            if len(getattr(self, name)) != n:
                _fail(f"Rollout.{name}", f"{len(getattr(self, name))} values, but completion_ids has {n}")
        if not self.group_id:
            _fail("Rollout.group_id", "must not be empty")
        if self.sample_index < 0:
            _fail("Rollout.sample_index", "must be >= 0")
        if self.prompt_index < 0:
            _fail("Rollout.prompt_index", "must be >= 0")
        if len(self.prompt_ids) == 0:
            _fail("Rollout.prompt_ids", "empty prompt")
        if self.prompt_ids.min() < 0:
            _fail("Rollout.prompt_ids", "negative token id")
        if not abs(self.reward) <= MAX_REWARD:  # near float32's limit: a NaN loss for the whole step
            _fail("Rollout.reward", f"{self.reward!r} is beyond +-{MAX_REWARD:g}")
        if not self.t_queued <= self.t_started <= self.t_finished:
            _fail("Rollout.t_*", "times must satisfy t_queued <= t_started <= t_finished")
        if self.routed_experts is not None:
            rows, total = self.routed_experts.shape[0], len(self.prompt_ids) + n
            if rows not in (total - 1, total):
                _fail("Rollout.routed_experts", f"{rows} token rows for {total} tokens of prompt + completion")
        interrupted = self.finish_reason == "interrupted"
        if n == 0:
            if interrupted:
                _fail("Rollout.finish_reason", "'interrupted' without forced tokens")
            return
        if self.completion_ids.min() < 0:
            _fail("Rollout.completion_ids", "negative token id")
        if not np.isfinite(self.logprobs).all():
            if np.isnan(self.logprobs).any():
                _fail("Rollout.logprobs", "contains NaN")
            if not np.isfinite(self.logprobs[self.forced == 0]).all():  # forced tokens' values mean nothing
                _fail("Rollout.logprobs", "infinite where a token was sampled")
        v = self.versions
        if v[0] < 0:
            _fail("Rollout.versions", "negative version")
        if n > 1 and (v[1:] < v[:-1]).any():
            _fail("Rollout.versions", "decreasing")
        top = int(self.forced.max())
        if top > 1:
            _fail("Rollout.forced", "mask values must be 0 or 1")
        if (top == 1) != interrupted:
            _fail("Rollout.finish_reason", f"{self.finish_reason!r} but forced tokens {'present' if top else 'absent'}")


@dataclass(frozen=True, kw_only=True)
class TensorSpec(_Validated):
    """Where one tensor lies in a weight transfer (an entry of WeightUpdate.manifest).

    Attributes:
        name: state_dict key.
        dtype: element type name as torch spells it ("bfloat16", "float32", ...).
        shape: tensor shape (list of non-negative ints; [] for a scalar).
        bucket: index of the bucket holding its bytes.
        offset: byte offset inside the bucket, a multiple of the element size.
        nbytes: byte length, = prod(shape) * element size.
    """

    name: str
    dtype: TensorDtype
    shape: tuple[int, ...]
    bucket: int
    offset: int
    nbytes: int

    def _check(self) -> None:
        where = f"TensorSpec({show(self.name)})"
        size = DTYPE_SIZES[self.dtype]
        _require(
            self.nbytes == math.prod(self.shape) * size,
            where,
            f"nbytes {self.nbytes} != prod({show(list(self.shape))}) * {size}",
        )
        _require(
            self.offset >= 0 and self.offset % size == 0,
            where,
            f"offset {self.offset} is not a non-negative multiple of {size}",
        )
        _require(self.bucket >= 0, where, "negative bucket index")


@dataclass(frozen=True, kw_only=True)
class WeightUpdate(_Validated):
    """Trainer -> generators: policy `version` is available, and how to fetch it.

    Also the header of a zmq weight transfer (shared/wire/weights/).

    Attributes:
        version: policy version (trainer optimizer steps), >= 0.
        transport: "zmq" (buckets follow as frames of the same zmq message),
            "dist" (buckets follow as torch.distributed broadcasts, in order), or
            "vllm-nccl" / "vllm-gloo" (vLLM's weight-transfer engines receive the
            buckets, packed as vLLM packs them, as broadcasts from rank 0).
        address: zmq endpoint of the weight sender, or the init_method of the
            torch.distributed group.
        bucket_sizes: byte size of each bucket, in transfer order.
        manifest: one TensorSpec per tensor; every byte range lies inside its bucket.
    """

    version: int
    transport: WeightTransportName
    address: str
    bucket_sizes: tuple[int, ...]
    manifest: tuple[TensorSpec, ...]

    @property
    def total_bytes(self) -> int:
        return sum(self.bucket_sizes)

    def _check(self) -> None:
        _require(self.version >= 0, "WeightUpdate.version", "must be >= 0")
        # msgpack ints reach 2**64-1: torch.empty raises TypeError past 2**63, and no memory holds anything near
        _require(
            self.total_bytes < MAX_TRANSFER_BYTES,
            "WeightUpdate.bucket_sizes",
            f"{show(self.total_bytes)} bytes in all, more than {MAX_TRANSFER_BYTES}",
        )
        seen: set[str] = set()
        for spec in self.manifest:
            where = f"WeightUpdate.manifest[{show(spec.name)}]"
            _require(spec.name not in seen, where, "duplicate name")
            seen.add(spec.name)
            _require(spec.bucket < len(self.bucket_sizes), where, f"bucket {spec.bucket} of {len(self.bucket_sizes)}")
            _require(
                spec.offset + spec.nbytes <= self.bucket_sizes[spec.bucket],
                where,
                f"bytes [{spec.offset}, {spec.offset + spec.nbytes}) overrun bucket "
                f"{spec.bucket} of {self.bucket_sizes[spec.bucket]} bytes",
            )


@dataclass(frozen=True, kw_only=True)
class Ready(_Validated):
    """Peer -> server, first message on a control or weight connection (the handshake).

    A weight receiver sends it again after each transfer to ask for a newer version.

    Attributes:
        peer_id: stable, unique name of the sender; its zmq routing id (sockets.routing_id) must name it.
        role: what the peer is: "generator", "trainer", "weight_receiver", ...
        version: policy version the peer holds; -1 if none.
        pid: OS process id of the peer (diagnostics).
        info: small str -> scalar dict (host, device, engine, ...).
        token: the run's secret (RUN/.secret); a trainer refuses a control peer whose token differs.
    """

    peer_id: str
    role: str
    version: int = -1
    pid: int = 0
    info: Details = field(default_factory=dict)
    token: str = ""

    def _check(self) -> None:
        _nonempty("Ready.peer_id", self.peer_id)
        _require(self.version >= -1, "Ready.version", "must be >= -1")


@dataclass(frozen=True, kw_only=True)
class Heartbeat(_Validated):
    """Either direction, periodically: the sender is alive.

    Attributes:
        peer_id: name of the sender.
        seq: sequence number, counting up from 0 per sender.
        sent_at: sender's time.time() at sending.
        stats: small str -> scalar dict of load figures (queue depth, tokens/s, ...).
    """

    peer_id: str
    seq: int
    sent_at: float
    stats: Details = field(default_factory=dict)

    def _check(self) -> None:
        _require(self.seq >= 0, "Heartbeat.seq", "must be >= 0")


@dataclass(frozen=True, kw_only=True)
class Shutdown(_Validated):
    """Server -> peers: stop after finishing or dropping in-flight work.

    Attributes:
        reason: one line saying why (logged by the receiver).
    """

    reason: str = ""


@dataclass(frozen=True, kw_only=True)
class Error(_Validated):
    """Either direction: something failed that the other side should know about.

    Attributes:
        peer_id: name of the reporting peer.
        code: short machine-readable category, e.g. "bad_request", "engine_failure".
        message: one human-readable line.
        group_id: the request concerned; "" if none.
    """

    peer_id: str
    code: str
    message: str
    group_id: str = ""


@dataclass(frozen=True, kw_only=True)
class EvalRequest(_Validated):
    """Trainer -> evaluator (control channel): score policy `version` on the held-out set.

    The weights of that version arrive on the evaluation weight channel (wiring.eval_weights_addr); the
    evaluator scores exactly them, whatever newer versions exist by then.

    Attributes:
        version: policy version to evaluate (the trainer's step), >= 0.
    """

    version: int

    def _check(self) -> None:
        _require(self.version >= 0, "EvalRequest.version", "must be >= 0")


@dataclass(frozen=True, kw_only=True)
class EvalResult(_Validated):
    """Evaluator -> trainer (control channel): the held-out score of one EvalRequest.

    Attributes:
        peer_id: name of the evaluator.
        version: the version scored (the request's).
        pass_rate: mean reward over every sample, in [0, 1].
        n_samples: samples scored (eval_prompts x eval_k); 0 only with `error`.
        eval_prompts: held-out prompts scored.
        eval_k: samples per prompt.
        pass_rate_interrupted: pass rate of the samples cut by the thinking budget; None if none was.
        pass_rate_uninterrupted: pass rate of the others; None if every sample was cut.
        interrupted_frac: share of samples cut by the thinking budget, in [0, 1].
        eval_s: seconds the evaluation took on the evaluator.
        error: "" for a score; else why version could not be scored (e.g. its weights were replaced by a newer
            version before they arrived), and the scores are meaningless.
    """

    peer_id: str
    version: int
    pass_rate: float = 0.0
    n_samples: int = 0
    eval_prompts: int = 0
    eval_k: int = 0
    pass_rate_interrupted: float | None = None
    pass_rate_uninterrupted: float | None = None
    interrupted_frac: float = 0.0
    eval_s: float = 0.0
    error: str = ""

    def _check(self) -> None:
        _nonempty("EvalResult.peer_id", self.peer_id)
        _require(self.version >= 0, "EvalResult.version", "must be >= 0")
        for name in ("pass_rate", "pass_rate_interrupted", "pass_rate_uninterrupted", "interrupted_frac"):
            v = getattr(self, name)
            _require(v is None or 0.0 <= v <= 1.0, f"EvalResult.{name}", f"must be in [0, 1], got {v}")
        _require(self.eval_s >= 0, "EvalResult.eval_s", "must be >= 0")
        _require(self.n_samples >= 1 or bool(self.error), "EvalResult.n_samples", "must be >= 1 unless error is set")
        _require(self.eval_prompts >= 0 and self.eval_k >= 0, "EvalResult.eval_prompts", "counts must be >= 0")


Message = Union[GenerationRequest, Rollout, WeightUpdate, Ready, Heartbeat, Shutdown, Error, EvalRequest, EvalResult]

# Type tag on the wire -> class. Tags are part of the protocol: never reuse one.
MESSAGE_TYPES: dict[str, type] = {
    "generation_request": GenerationRequest,
    "rollout": Rollout,
    "weight_update": WeightUpdate,
    "ready": Ready,
    "heartbeat": Heartbeat,
    "shutdown": Shutdown,
    "error": Error,
    "eval_request": EvalRequest,
    "eval_result": EvalResult,
}
TYPE_TAGS: dict[type, str] = {cls: tag for tag, cls in MESSAGE_TYPES.items()}
