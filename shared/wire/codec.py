"""Wire encoding of messages.py types: msgpack, versioned, arrays as raw bytes.

A message on the wire is the msgpack array `[PROTOCOL_VERSION, type_tag, fields]`,
where `fields` maps every field name of the type to its value (all fields are
always present; an optional nested message is nil or its map). Arrays travel as
msgpack bin holding little-endian raw bytes
('<i4', '<f4', '|u1'): ~10x faster than lists of numbers. Nested types are maps.

decode() never constructs anything but plain msgpack values and our own message
types (no ext hooks, no pickle) and raises only ProtocolError, with one line
naming the problem.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Annotated, Any, Callable

import msgpack
import numpy as np

from scalerl.shared.wire.messages import MESSAGE_TYPES, TYPE_TAGS, Message, ProtocolError, field_types
from scalerl.shared.wire.values import show

# 2: GenerationRequests are signed (channel request). A version-1 generator with the secret registered, then refused
# every request ("expected 1 frame, got 2") and the run timed out; now its Ready is refused, naming the version.
# 3: what a peer sends to a ROUTER is signed on the channel bound to its routing id (auth.from_connection), so a
# version-2 peer's MACs no longer verify; the trainer logs the version instead of "wrong secret".
PROTOCOL_VERSION = 3

__all__ = ["PROTOCOL_VERSION", "ProtocolError", "encode", "decode"]


def encode(msg: Message) -> bytes:
    """Serialize a message (already valid: messages validate on construction)."""
    tag = TYPE_TAGS.get(type(msg))
    if tag is None:
        raise TypeError(f"not a protocol message: {type(msg).__name__}")
    return msgpack.packb([PROTOCOL_VERSION, tag, _to_wire(msg)], use_bin_type=True)


def decode(data: bytes | bytearray | memoryview) -> Message:
    """Parse and validate one message; raises ProtocolError on anything wrong."""
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True, ext_hook=_reject_ext)
    except ProtocolError:
        raise
    except Exception as e:  # msgpack raises a zoo of types for bad input
        raise ProtocolError(f"not valid msgpack ({type(e).__name__}: {_short(e)})") from None
    if type(obj) is not list or len(obj) != 3:
        raise ProtocolError(f"envelope must be [version, type, fields], got {_short(obj)}")
    version, tag, fields = obj
    if version != PROTOCOL_VERSION or type(version) is not int:
        raise ProtocolError(f"protocol version {_short(version)} not supported (expected {PROTOCOL_VERSION})")
    cls = MESSAGE_TYPES.get(tag) if type(tag) is str else None
    if cls is None:
        raise ProtocolError(f"unknown message type {_short(tag)}")
    try:
        return _from_wire(cls, fields, cls.__name__)
    except RecursionError:  # a safety net: msgpack nests up to 1024 deep; no check should recurse into that
        raise ProtocolError(f"{cls.__name__}: nested too deeply") from None


def _reject_ext(code: int, data: bytes) -> Any:
    raise ProtocolError(f"msgpack extension type {code} not allowed")


def _short(x: Any, n: int = 60) -> str:
    s = show(x)  # bounded: repr() of a peer's deep or huge value would raise RecursionError or take seconds
    return s if len(s) <= n else s[:n] + "..."


# ---------------------------------------------------------------- per-type converters
# Built once per message class from its annotations: (name, to_wire, from_wire).


def _field_converters(tp: Any) -> tuple[Callable, Callable]:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Annotated:
        dtype = np.dtype(args[1])
        return (lambda v: v.tobytes()), _bytes_to_array(dtype)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _to_wire, lambda v, where, name: _from_wire(tp, v, f"{where}.{name}")
    optional = [a for a in args if a is not type(None)] if type(None) in args else []
    if len(optional) == 1 and isinstance(optional[0], type) and dataclasses.is_dataclass(optional[0]):
        inner = optional[0]  # an optional nested message (Rollout.routed_experts): nil or its map
        return (lambda v: None if v is None else _to_wire(v)), (
            lambda v, where, name: None if v is None else _from_wire(inner, v, f"{where}.{name}")
        )
    if origin is tuple and isinstance(args[0], type) and dataclasses.is_dataclass(args[0]):
        item = args[0]
        return (lambda v: [_to_wire(x) for x in v]), _list_of(item)
    return (lambda v: v), (lambda v, where, name: v)  # checked by the message constructor


def _bytes_to_array(dtype: np.dtype) -> Callable[[Any, str, str], np.ndarray]:
    def conv(v: Any, where: str, name: str) -> np.ndarray:
        if type(v) is not bytes:
            raise ProtocolError(f"{where}.{name}: expected raw bytes of {dtype.str}, got {type(v).__name__}")
        if len(v) % dtype.itemsize:
            raise ProtocolError(f"{where}.{name}: {len(v)} bytes is not a multiple of {dtype.itemsize} ({dtype.str})")
        return np.frombuffer(v, dtype=dtype)

    return conv


def _list_of(cls: type) -> Callable[[Any, str, str], list]:
    def conv(v: Any, where: str, name: str) -> list:
        if type(v) is not list:
            raise ProtocolError(f"{where}.{name}: expected a list, got {type(v).__name__}")
        return [_from_wire(cls, x, f"{where}.{name}[{i}]") for i, x in enumerate(v)]

    return conv


_CONVERTERS: dict[type, tuple[frozenset, tuple]] = {}


def _converters(cls: type) -> tuple[frozenset, tuple]:
    conv = _CONVERTERS.get(cls)
    if conv is None:
        fields = tuple((name, *_field_converters(tp)) for name, tp in field_types(cls).items())
        conv = _CONVERTERS[cls] = (frozenset(name for name, _, _ in fields), fields)
    return conv


def _to_wire(obj: Any) -> dict:
    return {name: to(getattr(obj, name)) for name, to, _ in _converters(type(obj))[1]}


def _from_wire(cls: type, fields: Any, where: str) -> Any:
    if type(fields) is not dict:
        raise ProtocolError(f"{where}: fields must be a map, got {type(fields).__name__}")
    names, conv = _converters(cls)
    if fields.keys() != names:
        missing = sorted(names - fields.keys())
        unknown = [k for k in fields if k not in names]
        if missing:
            raise ProtocolError(f"{where}: missing field(s) {', '.join(missing)}")
        raise ProtocolError(f"{where}: unknown field(s) {_short(unknown)}")
    return cls(**{name: frm(fields[name], where, name) for name, _, frm in conv})
