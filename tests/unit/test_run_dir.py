import json

import pytest

from scalerl.curvefit.readers import ReadOptions, read_sources
from scalerl.shared.run_dir import MetricsLog, atomic_write_text


def test_metrics_log_is_readable_by_fit_and_truncates_for_resume(tmp_path):
    run = tmp_path / "run"
    log = MetricsLog(run / "metrics.jsonl")
    for step in range(6):
        log.write({"kind": "train", "step": step, "gpu_hours": step / 10, "time_s": step * 36.0})
        if step % 2 == 0:
            log.write(
                {
                    "kind": "eval",
                    "step": step,
                    "gpu_hours": step / 10,
                    "time_s": step * 36.0,
                    "pass_rate": 0.1 * step,
                    "n_samples": 64,
                }
            )
    log.close()
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"kind": "train", "st')  # killed mid-write
    (c,) = read_sources([run], ReadOptions())
    assert c.y.tolist() == pytest.approx([0.0, 0.2, 0.4])
    dropped = MetricsLog.truncate_after(run / "metrics.jsonl", 3)
    assert dropped == 4  # steps 4, 5 (train), 4 (eval) and the partial line
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 0, 1, 2, 2, 3]


def test_metrics_record_needs_schema_keys(tmp_path):
    log = MetricsLog(tmp_path / "m.jsonl")
    with pytest.raises(ValueError, match="gpu_hours"):
        log.write({"kind": "train", "step": 1, "time_s": 0.0})


def test_atomic_write_leaves_no_temp_files(tmp_path):
    atomic_write_text(tmp_path / "a" / "x.txt", "one")
    atomic_write_text(tmp_path / "a" / "x.txt", "two")
    assert (tmp_path / "a" / "x.txt").read_text() == "two"
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["x.txt"]
