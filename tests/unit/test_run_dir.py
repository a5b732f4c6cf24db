import json
import os
import stat

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


def test_atomic_write_honours_the_umask(tmp_path):
    """mkstemp's 0600 left status.json and config.toml unreadable to a teammate's `scalerl status`."""
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "status.json", "{}")
        assert stat.S_IMODE((tmp_path / "status.json").stat().st_mode) == 0o644
        os.umask(0o077)  # a user who keeps files private still gets private ones
        atomic_write_text(tmp_path / "private.json", "{}")
        assert stat.S_IMODE((tmp_path / "private.json").stat().st_mode) == 0o600
    finally:
        os.umask(old)


def test_check_reports_torn_lines_gaps_and_a_backwards_clock_before_a_resume(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"kind": "eval", "step": 0, "gpu_hours": 0, "time_s": 0.0})]
    lines += [json.dumps({"kind": "train", "step": s, "gpu_hours": 0, "time_s": float(s)}) for s in range(1, 9)]
    lines[3] = lines[3][:15]  # step 3 torn inside the file
    lines[5] = lines[5].replace('"time_s": 5.0', '"time_s": 1.0')
    path.write_text("\n".join(lines[:8]) + "\n" + lines[8][:10])  # and cut mid-line at step 8
    problems = MetricsLog.check(path, 10, eval_every=5)
    assert problems == [
        f"{path}:4: torn line (inside the file), dropped",
        f"{path}:6: time_s 1 runs backwards (line 5 has 4)",
        f"{path}:9: torn line (the last line, cut short by a kill), dropped",
        f"{path}: no train line for step(s) 3, 8-10 up to the checkpoint at step 10: the curve has a gap there",
        f"{path}: no eval line for step(s) 5, 10 (eval_every = 5)",
    ]
    assert MetricsLog.check(tmp_path / "none.jsonl", 0) == []


def test_a_late_eval_line_with_its_steps_clock_is_no_backwards_clock(tmp_path):
    """eval_mode "process": the eval line of step 2 comes after step 3's train line, with step 2's time."""
    path = tmp_path / "metrics.jsonl"
    rec = [("eval", 0, 0.0), ("train", 1, 1.0), ("train", 2, 2.0), ("train", 3, 3.0), ("eval", 2, 2.0)]
    rec += [("train", 4, 4.0), ("eval", 4, 4.0), ("eval", 3, 3.5)]  # an eval line out of order is still reported
    path.write_text("".join(json.dumps({"kind": k, "step": s, "gpu_hours": 0, "time_s": t}) + "\n" for k, s, t in rec))
    assert MetricsLog.check(path, 4, eval_every=2) == [f"{path}:8: time_s 3.5 runs backwards (line 7 has 4)"]


def test_truncate_to_minus_one_empties_the_log(tmp_path):
    log = MetricsLog(tmp_path / "m.jsonl")
    log.write({"kind": "eval", "step": 0, "gpu_hours": 0.0, "time_s": 0.0})
    log.close()
    assert MetricsLog.truncate_after(tmp_path / "m.jsonl", -1) == 1
    assert (tmp_path / "m.jsonl").read_text() == ""
