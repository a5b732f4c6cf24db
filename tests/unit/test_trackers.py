"""Trackers: the values logged to TensorBoard and W&B (offline) are read back from their own files."""

import glob
import struct
import time

import pytest

from scalerl.cli.trackers import Trackers, scalars

METRICS = [
    {"kind": "eval", "step": 0, "gpu_hours": 0.0, "time_s": 0.0, "pass_rate": 0.2, "n_samples": 80, "device": "cpu"},
    {"kind": "train", "step": 1, "gpu_hours": 0.001, "time_s": 2.0, "loss": 0.5, "reward_mean": 0.25},
    {"kind": "train", "step": 2, "gpu_hours": 0.002, "time_s": 4.0, "loss": 0.25, "reward_mean": 0.3},
    {"kind": "eval", "step": 2, "gpu_hours": 0.002, "time_s": 4.0, "pass_rate": 0.3, "n_samples": 80},
]
FORECAST = [{"step": 2, "identified": True, "A": 0.8, "A_ci": [0.7, 0.9], "basis": "sigmoid", "warnings": ["w"]}]


def test_scalars_flatten_lines_under_their_metrics_names():
    assert scalars(METRICS[0]) == {"gpu_hours": 0.0, "time_s": 0.0, "pass_rate": 0.2, "n_samples": 80.0}
    assert scalars(FORECAST[0], "forecast/") == {
        "forecast/identified": 1.0,
        "forecast/A": 0.8,
        "forecast/A_ci_lo": 0.7,
        "forecast/A_ci_hi": 0.9,
    }


def test_tensorboard_event_files_hold_the_logged_values(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    t = Trackers(tmp_path, ["tensorboard"], {})
    t.log_metrics(METRICS)
    t.log_forecast(FORECAST)
    t.close()
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert {"pass_rate", "loss", "reward_mean", "gpu_hours", "forecast/A", "forecast/A_ci_hi"} <= set(tags)
    assert [(e.step, pytest.approx(e.value)) for e in acc.Scalars("pass_rate")] == [(0, 0.2), (2, 0.3)]
    assert [(e.step, pytest.approx(e.value)) for e in acc.Scalars("loss")] == [(1, 0.5), (2, 0.25)]
    assert [(e.step, pytest.approx(e.value)) for e in acc.Scalars("forecast/A_ci_lo")] == [(2, 0.7)]


def _wandb_records(path):
    """The records of a .wandb file: a LevelDB-style log of protobuf records after a 7-byte header."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = open(path, "rb").read()
    block, pos, buf, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, n, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pos += 7
        if kind == 0 and n == 0:
            pos += left - 7
            continue
        buf += data[pos : pos + n]
        pos += n
        if kind in (1, 4):  # a full record, or the last piece of one
            rec = pb.Record()
            rec.ParseFromString(buf)
            buf = b""
            records.append(rec)
    return records


def _wandb_history(run_dir):
    """History rows of an offline W&B run, once its exit record is written (wandb-core flushes the file a moment
    after finish() returns)."""
    (path,) = glob.glob(str(run_dir / "wandb" / "offline-run-*" / "run-*.wandb"))
    deadline = time.time() + 20
    records = _wandb_records(path)
    while time.time() < deadline and not any(r.WhichOneof("record_type") == "exit" for r in records):
        time.sleep(0.1)
        records = _wandb_records(path)
    rows = []
    for rec in records:
        if rec.WhichOneof("record_type") == "history":
            rows.append({i.key or "/".join(i.nested_key): float(i.value_json) for i in rec.history.item})
    return rows


def test_wandb_offline_run_holds_the_logged_values(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    t = Trackers(tmp_path, ["wandb"], {"run": {"wandb_project": "scalerl-test"}})
    assert [x.name for x in t.active] == ["wandb"]
    t.log_metrics(METRICS)
    t.log_forecast(FORECAST)
    t.close()
    rows = _wandb_history(tmp_path)
    evals = [(r["step"], r["pass_rate"]) for r in rows if "pass_rate" in r]
    assert evals == [(0, pytest.approx(0.2)), (2, pytest.approx(0.3))]
    assert [(r["step"], r["loss"]) for r in rows if "loss" in r] == [(1, 0.5), (2, 0.25)]
    assert [(r["step"], r["forecast/A"]) for r in rows if "forecast/A" in r] == [(2, 0.8)]


def test_a_failing_tracker_is_reported_once_and_switched_off(tmp_path):
    warnings = []
    t = Trackers(tmp_path, [], {}, warn=warnings.append)

    class Broken:
        name = "broken"
        closed = False

        def log(self, *a):
            raise OSError("disk full")

        def close(self):
            Broken.closed = True

    t.active.append(Broken())
    t.log_metrics(METRICS)  # four lines, one warning, no exception
    t.log_forecast(FORECAST)
    assert len(warnings) == 1 and "broken failed" in warnings[0] and "disk full" in warnings[0]
    assert t.active == [] and Broken.closed


def test_a_tracker_that_cannot_start_leaves_the_others(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    import scalerl.cli.trackers as trackers

    class NoLogin:
        def __init__(self, *a):
            raise RuntimeError("api_key not configured")

    monkeypatch.setitem(trackers.KINDS, "wandb", NoLogin)
    warnings = []
    t = Trackers(tmp_path, ["wandb", "tensorboard"], {}, warn=warnings.append)
    assert [x.name for x in t.active] == ["tensorboard"] and "tracker wandb is off" in warnings[0]
    t.close()
