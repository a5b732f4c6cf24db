"""Strict typed config sections."""

from dataclasses import dataclass, field
from typing import Literal

import pytest

from scalerl.shared.config import ConfigError, apply_sets, dump_toml, from_dict, load_toml, parse_set


@dataclass(frozen=True)
class Inner:
    lr: float = 1e-5
    mode: Literal["pipeline", "ppo_off_policy"] = "pipeline"

    def check(self):
        if self.lr <= 0:
            raise ValueError("lr must be positive")


@dataclass(frozen=True)
class Outer:
    name: str = "x"
    steps: int = 10
    budget: tuple[int, int] = (10, 12)
    path: str | None = None
    fast: bool = True
    inner: Inner = field(default_factory=Inner)


def test_defaults_and_round_trip(tmp_path):
    cfg = from_dict(Outer, {"steps": 5, "inner": {"lr": 3}})
    assert cfg.steps == 5 and cfg.inner.lr == 3.0 and isinstance(cfg.inner.lr, float)
    text = dump_toml(cfg)
    assert "path" not in text  # unset optionals are left out: TOML has no null
    p = tmp_path / "c.toml"
    p.write_text(text)
    assert from_dict(Outer, load_toml(p)) == cfg


@pytest.mark.parametrize(
    "data, message",
    [
        ({"stpes": 1}, "unknown config key 'stpes' (did you mean 'steps'?)"),
        ({"inner": {"lr": "fast"}}, "'inner.lr' must be a number"),
        ({"steps": 1.5}, "'steps' must be an integer"),
        ({"steps": True}, "'steps' must be an integer"),
        ({"fast": 1}, "'fast' must be true or false"),
        ({"inner": {"mode": "sync"}}, "'inner.mode' must be one of"),
        ({"budget": [1]}, "'budget' must have 2 items"),
        ({"inner": {"lr": -1.0}}, "inner: lr must be positive"),
        ({"inner": 3}, "inner: expected a table"),
    ],
)
def test_bad_values_name_the_key(data, message):
    with pytest.raises(ConfigError) as e:
        from_dict(Outer, data)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_set_overrides_are_typed():
    assert parse_set("inner.lr=3e-4") == (["inner", "lr"], 3e-4)
    assert parse_set("name=hello") == (["name"], "hello")
    raw = apply_sets({"inner": {"lr": 1.0}}, ["inner.mode=ppo_off_policy", "steps=7", "budget=[1, 2]"])
    cfg = from_dict(Outer, raw)
    assert cfg.inner.mode == "ppo_off_policy" and cfg.steps == 7 and cfg.budget == (1, 2) and cfg.inner.lr == 1.0
    with pytest.raises(ConfigError, match="'steps' must be an integer"):
        from_dict(Outer, apply_sets({}, ["steps=many"]))
    with pytest.raises(ConfigError, match="expected section.key=value"):
        parse_set("steps")


def test_bad_toml_file(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text("[run\nx = 1\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_toml(p)
    with pytest.raises(ConfigError, match="no such config file"):
        load_toml(tmp_path / "missing.toml")
