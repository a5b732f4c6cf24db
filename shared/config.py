"""Typed config sections: TOML tables <-> frozen dataclasses, strictly checked.

Every service declares its own section as a dataclass and receives only that section. Loading rejects unknown
keys (with a suggestion), wrong types and out-of-range values with a one-line ConfigError that names the key;
`--set section.key=value` overrides are parsed as TOML literals and checked the same way.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import tomllib
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable, Literal, get_args, get_origin, get_type_hints

from scalerl.shared.eval_config import MOVED_KEYS


class ConfigError(ValueError):
    """A bad config file, key or value. The message names the offending key; the CLI exits 2."""


# Every table a run's config file may hold: what `scalerl train` reads, plus the [wiring] it writes into
# RUN/config.toml. A service command reads only its own tables of such a file, but a table no command reads is a typo
# whose settings would silently do nothing, so the service commands refuse it as `scalerl train` does. cli/run_config.py
# RESOLVED holds the same names (a test keeps them equal: shared/ cannot import cli/).
RUN_TABLES = ("run", "generator", "trainer", "eval", "curvefit", "wiring")


# The longest duration a key may take, in its own unit. Finite is not enough: a timeout far beyond any run still
# fails mid-run, after every process started, as inf did. The lowest such limit is zmq's poll, whose timeout is a C
# int of milliseconds (2^31 - 1 ms, about 24.8 days): trainer.peer_timeout_s is the deadline the weight sender polls
# for its receivers with (wait_for_receivers), and heartbeat_s, below peer_timeout_s, the wait of every control
# socket; past it the poll raises OverflowError (and timedelta(seconds=1e18), the weight group's timeout, too).
# 1e6 seconds (about 11.6 days) is below it and longer than any wait a run needs; 1e6 minutes (run.max_minutes,
# only compared with a clock) is about 1.9 years.
MAX_DURATION = 1e6


def check_durations(cfg, *names: str, unit: str = "seconds", zero: str | None = None) -> None:
    """Refuse a duration field of `cfg` that is not a finite number > 0 (>= 0 when `zero` says what 0 means) and
    at most MAX_DURATION.

    TOML reads `inf` as a float, and an infinite timeout reads as "no limit" but is none the code keeps: a deadline
    of now + inf hangs on a dead peer for ever, and `timedelta(seconds=inf)` (the dist weight group's timeout, from
    trainer.peer_timeout_s) raises OverflowError mid-run, after every process started. Where a limit can be off,
    0 is the one way to say so, and the message names it. (`nan` never gets here: _coerce refuses it.)
    """
    for name in names:
        value = getattr(cfg, name)
        if not (math.isfinite(value) and (value >= 0 if zero else value > 0)):
            rule = f"(0 = {zero})" if zero else "> 0"
            raise ValueError(f"{name} must be a finite number of {unit} {rule}, not {value:g}")
        if value > MAX_DURATION:
            notes = (["about 11.6 days"] if unit == "seconds" else []) + ([f"0 = {zero}"] if zero else [])
            said = f" ({'; '.join(notes)})" if notes else ""
            raise ValueError(f"{name} must be at most {MAX_DURATION:g} {unit}{said}, not {value:g}")


# numpy's seeds (np.random.seed, default_rng in the vLLM backend) are 0 .. 2^32 - 1; the trainer seeds numpy and torch
# with trainer.seed, a generator its sampling with generator.seed + its index. Outside the range the config passed
# and the trainer died at start-up (ValueError from np.random.seed).
MAX_SEED = 2**32 - 1


def check_seed(name: str, value: int) -> None:
    if not 0 <= value <= MAX_SEED:
        raise ValueError(f"{name} must be between 0 and {MAX_SEED} (2^32 - 1, numpy's seeds), not {value}")


def check_tables(raw: dict, known, where: str = "") -> None:
    """Refuse a table of `raw` that is not in `known`, in one line that names it and the known ones."""
    for name in raw:
        if name not in known:
            raise ConfigError(f"unknown config section [{name}]{where} (known: {', '.join(known)})")
        if not isinstance(raw[name], dict):
            raise ConfigError(f"[{name}]{where} must be a table, not {raw[name]!r}")


def from_dict(cls, data: Any, where: str = ""):
    """Build dataclass `cls` from a TOML table, checking every key and type."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where.rstrip('.') or 'config'}: expected a table, got {type(data).__name__}")
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if f"{where}{key}" in MOVED_KEYS:  # a key of an older layout: say where it went, in one line
            raise ConfigError(f"'{where}{key}' moved to {MOVED_KEYS[f'{where}{key}']}")
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" (did you mean '{where}{close[0]}'?)" if close else f" (known: {', '.join(names)})"
            raise ConfigError(f"unknown config key '{where}{key}'{hint}")
    kwargs = {k: _coerce(hints[k], v, f"{where}{k}") for k, v in data.items()}
    obj = cls(**kwargs)
    check = getattr(obj, "check", None)
    if check is not None:
        try:
            check()
        except ValueError as e:
            raise ConfigError(f"{where.rstrip('.') or 'config'}: {e}") from None
    return obj


def _coerce(tp, value, key):
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, f"{key}.")
    if origin in (typing.Union, types.UnionType):
        arms = [a for a in get_args(tp) if a is not type(None)]
        errors = []
        for arm in arms:
            try:
                return _coerce(arm, value, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"'{key}': {value!r} matches none of {_type_name(tp)}")
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(f"'{key}' must be one of {', '.join(map(repr, get_args(tp)))}, not {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise ConfigError(f"'{key}' must be a list, not {value!r}")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"'{key}' must have {len(args)} items, not {len(value)}")
            return tuple(_coerce(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        item = args[0] if args else Any
        out = [_coerce(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"'{key}' must be true or false, not {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"'{key}' must be an integer, not {value!r}")
        return value
    if tp is float:
        # TOML reads `nan` as a float; no setting means it, and it slips past every `x < 0` bound check.
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            raise ConfigError(f"'{key}' must be a number, not {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"'{key}' must be a string, not {value!r}")
        return value
    raise ConfigError(f"'{key}': unsupported config type {_type_name(tp)}")


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def load_toml(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: invalid TOML ({e})") from None
    except OSError as e:  # a directory, no permission
        raise ConfigError(f"{path}: cannot read the config file ({e.strerror or e})") from None


def parse_set(expr: str) -> tuple[list[str], Any]:
    """`section.key=value` -> (["section", "key"], value). The value is read as a TOML literal
    (3, 1e-5, true, "x", [1, 2]); a bare word that is not one is taken as a string."""
    if "=" not in expr:
        raise ConfigError(f"--set {expr!r}: expected section.key=value")
    key, raw = expr.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"--set {expr!r}: empty key part")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return parts, value


def apply_sets(raw: dict, sets: list[str]) -> dict:
    """Overlay --set overrides on a raw TOML dict (types are checked afterwards by from_dict). A table value merges
    into a table already there, key by key; any other value replaces."""
    out = _deepcopy(raw)
    for expr in sets:
        parts, value = parse_set(expr)
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {expr!r}: '{p}' is not a section")
        # A table merges key by key into the table already there, as the same table in a config file merges into
        # the defaults: `--set 'trainer.optim={weight_decay=0.0}'` keeps the other optim keys.
        old = node.get(parts[-1])
        node[parts[-1]] = merge_tables(old, value) if isinstance(old, dict) and isinstance(value, dict) else value
    return out


def _deepcopy(d):
    return {k: _deepcopy(v) if isinstance(v, dict) else v for k, v in d.items()}


def to_dict(obj) -> dict:
    """A dataclass as a TOML-ready dict: None values (unset options) are left out, tuples become lists."""

    def clean(v):
        if dataclasses.is_dataclass(v):
            return {f.name: clean(getattr(v, f.name)) for f in dataclasses.fields(v) if getattr(v, f.name) is not None}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    return clean(obj)


def dump_toml(obj) -> str:
    import tomli_w

    return tomli_w.dumps(to_dict(obj))


def load_section(path: Path | None, name: str, cls, sets: Sequence[str] = (), defaults: Callable | None = None):
    """The `[name]` table of a config file (or defaults without a file) as `cls`, with `--set name.key=v`.

    A service's own CLI uses this: the service receives only its section. `defaults(name, table, tables)` gives the
    layer under the file's values that `scalerl train` applies too (the model defaults, cli/defaults.py); `tables`
    is the whole file with the --set values applied, for a section whose defaults depend on another's.
    """
    raw = load_toml(path) if path is not None else {}
    check_tables(raw, RUN_TABLES)
    return _load_section(raw, name, cls, sets, defaults)


def _load_section(raw: dict, name: str, cls, sets: Sequence[str], defaults: Callable | None, tables=None):
    section = raw.get(name, {})
    for expr in sets:
        parts, _ = parse_set(expr)
        if parts[0] != name:
            raise ConfigError(f"--set {expr!r}: this command only reads the [{name}] section")
    overlaid = apply_sets({name: section}, list(sets))[name]
    if defaults is not None:
        tables = apply_sets(raw, list(sets)) if tables is None else tables
        overlaid = merge_tables(defaults(name, overlaid, tables), overlaid)
    return from_dict(cls, overlaid, f"{name}.")


def load_sections(
    path: Path | None, classes: dict[str, Any], sets: Sequence[str] = (), defaults: Callable | None = None
):
    """Several tables of one file, each as its class (a service's section, the run's [eval] and [wiring]); every
    `--set` names one of them."""
    by_name: dict[str, list[str]] = {name: [] for name in classes}
    for expr in sets:
        parts, _ = parse_set(expr)
        if parts[0] not in by_name:
            known = ", ".join(f"[{n}]" for n in classes)
            raise ConfigError(f"--set {expr!r}: this command only reads {known}")
        by_name[parts[0]].append(expr)
    raw = load_toml(path) if path is not None else {}
    check_tables(raw, RUN_TABLES)
    tables = apply_sets(raw, list(sets))
    check_tables(tables, RUN_TABLES, " in --set")
    return [_load_section(raw, name, cls, by_name[name], defaults, tables) for name, cls in classes.items()]


def merge_tables(base: dict, over: dict) -> dict:
    """`over` on top of `base`, table by table (a nested table merges, any other value replaces)."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge_tables(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
