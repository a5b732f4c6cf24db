"""Timeouts and other durations are refused unless finite: TOML reads `inf` as a float, and an infinite timeout is no
"no limit" the services keep (a dead peer waited on for ever; the weight group's timedelta overflows mid-run). Nor
may they pass MAX_DURATION: a finite 1e18 fails mid-run the same way, and so does anything past zmq's poll timeout
(an int of milliseconds). Where 0 means off, the one-line message says so."""

import math
import subprocess
import sys

import pytest

from scalerl.cli.run_config import resolve
from scalerl.generator_service.config import GeneratorConfig
from scalerl.shared.config import MAX_DURATION, ConfigError, load_section
from scalerl.trainer_service.config import TrainerConfig

POSITIVE = [
    "generator.heartbeat_s",
    "generator.peer_timeout_s",
    "generator.startup_timeout_s",
    "trainer.peer_timeout_s",
    "trainer.startup_timeout_s",
]
ZERO_MEANS = {
    "generator.debug_startup_sleep_s": "off",
    "trainer.group_timeout_s": "derived from the lengths",
    "trainer.debug_step_sleep_s": "off",
    "trainer.debug_startup_sleep_s": "off",
    "run.max_minutes": "no limit",
}


def config(tmp_path, *sets: str):
    return resolve(None, list(sets), run_dir=str(tmp_path / "run"))[1]


@pytest.mark.parametrize("key", POSITIVE + list(ZERO_MEANS))
@pytest.mark.parametrize("value", ["inf", "-inf", "-1"])
def test_an_infinite_or_negative_duration_is_refused_naming_the_key(tmp_path, key, value):
    section, name = key.split(".")
    unit = "minutes" if name == "max_minutes" else "seconds"
    rule = f"(0 = {ZERO_MEANS[key]})" if key in ZERO_MEANS else "> 0"
    shown = "-1" if value == "-1" else value
    with pytest.raises(ConfigError) as e:
        config(tmp_path, f"{key}={value}")
    assert str(e.value) == f"{section}: {name} must be a finite number of {unit} {rule}, not {shown}"


@pytest.mark.parametrize("key", POSITIVE)
def test_a_zero_timeout_is_refused_where_zero_means_nothing(tmp_path, key):
    with pytest.raises(ConfigError, match=f"{key.split('.')[1]} must be a finite number of seconds > 0, not 0"):
        config(tmp_path, f"{key}=0")


def test_zero_and_finite_values_resolve(tmp_path):
    cfg = config(tmp_path, *(f"{k}=0" for k in ZERO_MEANS), "generator.peer_timeout_s=1e6")
    assert cfg.run.max_minutes == 0 and cfg.trainer.group_timeout_s == 0 and cfg.generator.peer_timeout_s == 1e6


@pytest.mark.parametrize("name, cls", [("generator", GeneratorConfig), ("trainer", TrainerConfig)])
def test_a_service_run_alone_refuses_an_infinite_timeout(name, cls):
    with pytest.raises(ConfigError, match=f"^{name}: peer_timeout_s must be a finite number of seconds > 0, not inf$"):
        load_section(None, name, cls, [f"{name}.peer_timeout_s=inf"])


@pytest.mark.parametrize("key", POSITIVE + list(ZERO_MEANS))
@pytest.mark.parametrize("value", ["1e18", "1000001"])
def test_a_duration_past_the_longest_is_refused_naming_the_key(tmp_path, key, value):
    section, name = key.split(".")
    unit = "minutes" if name == "max_minutes" else "seconds"
    notes = ["about 11.6 days"] if unit == "seconds" else []
    notes += [f"0 = {ZERO_MEANS[key]}"] if key in ZERO_MEANS else []
    said = f" ({'; '.join(notes)})" if notes else ""
    with pytest.raises(ConfigError) as e:
        config(tmp_path, f"{key}={value}")
    assert str(e.value) == f"{section}: {name} must be at most 1e+06 {unit}{said}, not {float(value):g}"


@pytest.mark.parametrize("key", POSITIVE + list(ZERO_MEANS))
def test_the_longest_duration_resolves(tmp_path, key):
    value = MAX_DURATION - 1 if key == "generator.heartbeat_s" else MAX_DURATION  # heartbeat_s < peer_timeout_s
    peer = [] if key == "generator.peer_timeout_s" else [f"generator.peer_timeout_s={MAX_DURATION}"]
    cfg = config(tmp_path, f"{key}={value}", *peer)
    section, name = key.split(".")
    assert getattr(getattr(cfg, section), name) == value


def test_the_longest_duration_is_one_zmq_can_poll_for():
    # trainer.peer_timeout_s is the weight sender's poll deadline (wait_for_receivers): in milliseconds, a C int.
    import zmq

    ctx = zmq.Context()
    a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    try:
        a.bind("inproc://durations")
        b.connect("inproc://durations")
        a.send(b"x")  # ready at once: the poll returns without waiting
        assert b.poll(math.ceil(MAX_DURATION * 1e3), zmq.POLLIN)
        with pytest.raises(OverflowError):
            b.poll(math.ceil(1e7 * 1e3), zmq.POLLIN)  # what a bound of 1e7 s or more would let through
    finally:
        a.close(linger=0)
        b.close(linger=0)
        ctx.term()


@pytest.mark.parametrize("flag", [["--set", "trainer.startup_timeout_s=inf"], ["--max-minutes", "inf"]])
def test_scalerl_train_refuses_an_infinite_duration_in_one_line_with_exit_2(tmp_path, flag):
    run = tmp_path / "run"
    r = subprocess.run(
        [sys.executable, "-m", "scalerl.cli", "train", "--max-steps", "1", "--run-dir", str(run), *flag],
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr[-2000:]
    assert "must be a finite number of" in lines[0] and "not inf" in lines[0], lines[0]
    assert not run.exists()  # refused before the run dir (and any process) exists


def test_scalerl_train_refuses_a_duration_past_the_longest_in_one_line_with_exit_2(tmp_path):
    run = tmp_path / "run"
    r = subprocess.run(
        [sys.executable, "-m", "scalerl.cli", "train", "--run-dir", str(run), "--set", "trainer.peer_timeout_s=1e18"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and lines == [
        "scalerl: error: trainer: peer_timeout_s must be at most 1e+06 seconds (about 11.6 days), not 1e+18"
    ], r.stderr[-2000:]
    assert not run.exists()
