"""`scalerl status` through the real command, on run dirs written here (no training)."""

import json
import time

import pytest

from scalerl.cli.live_forecast import append_line, refit
from scalerl.shared.ownership import RunLock
from tests.conftest import run_cli
from tests.unit.test_live_forecast_pure import CURVEFIT, write_run
from tests.unit.test_status_checkpoint import real_checkpoint


def status(run):
    r = run_cli("status", run, "--json")
    return r.returncode, (json.loads(r.stdout) if r.stdout else None), r


def test_status_of_finished_failed_preempted_and_running_runs(tmp_path):
    finished = write_run(tmp_path / "finished")
    code, doc, _ = status(finished)
    assert (code, doc["state"], doc["step"], doc["max_steps"]) == (0, "finished", 290, 290)
    assert doc["pass_rate"] == pytest.approx(
        json.loads((finished / "metrics.jsonl").read_text().splitlines()[-1])["pass_rate"]
    )
    assert doc["gpu_hours"] == pytest.approx(0.29) and doc["steps_per_s"] == pytest.approx(0.5)
    assert doc["eta_s"] is None and doc["forecast"] is None

    failed = write_run(tmp_path / "failed", max_steps=1000)
    (failed / "status.json").write_text(json.dumps({"state": "failed", "exit_code": 1, "reason": "gen-0 exited"}))
    code, doc, _ = status(failed)
    assert (code, doc["state"], doc["exit_code"], doc["reason"]) == (3, "failed", 1, "gen-0 exited")

    preempted = write_run(tmp_path / "preempted", max_steps=1000)
    (preempted / "status.json").write_text(json.dumps({"state": "preempted", "exit_code": 143, "reason": "SIGTERM"}))
    real_checkpoint(preempted / "checkpoints", 290)  # a preemption leaves one to resume from (one that verifies)
    assert status(preempted)[:2][0] == 4

    # Killed without a word (status.json still says running, nobody holds the lock): resumable if checkpointed.
    killed = write_run(tmp_path / "killed", max_steps=1000)
    (killed / "status.json").write_text(json.dumps({"state": "running"}))
    assert status(killed)[1]["state"] == "failed"
    real_checkpoint(killed / "checkpoints", 100)
    code, doc, _ = status(killed)
    assert (code, doc["state"]) == (4, "preempted") and "resume" in doc["reason"]

    running = write_run(tmp_path / "running", max_steps=1000)
    append_line(running / "forecast.jsonl", refit(running, 290, {}, CURVEFIT))
    lock = RunLock.acquire(running, "scalerl train")
    try:
        code, doc, _ = status(running)
        r = run_cli("status", running)
    finally:
        lock.release()
    assert (code, doc["state"], doc["owner"]["role"]) == (5, "running", "scalerl train")
    assert doc["eta_s"] == pytest.approx((1000 - 290) / 0.5) and doc["forecast"]["step"] == 290
    assert r.returncode == 5 and "running" in r.stdout and "forecast: A" in r.stdout


def test_status_of_a_missing_dir_is_bad_input(tmp_path):
    r = run_cli("status", tmp_path / "nope")
    assert r.returncode == 2 and "no such run directory" in r.stderr and r.stdout == ""
    (tmp_path / "empty").mkdir()
    assert run_cli("status", tmp_path / "empty").returncode == 2


def test_write_status_maps_exit_codes_to_states(tmp_path):
    from scalerl.cli.status_cmd import end_state, write_status

    assert end_state(0, 100, 100) == "finished" and end_state(0, 50, 100) == "preempted"
    assert end_state(3, 50, 100) == "stopped" and end_state(143, 50, 100) == "preempted"
    assert end_state(130, 50, 100) == "preempted" and end_state(1, 50, 100) == end_state(2, 0, 100) == "failed"
    run = write_run(tmp_path / "run", max_steps=1000)
    write_status(run, None)
    started = json.loads((run / "status.json").read_text())
    assert started["state"] == "running" and started["started"] <= time.time()
    write_status(run, 3, "stop rule", 1000)
    doc = json.loads((run / "status.json").read_text())
    assert (doc["state"], doc["exit_code"], doc["step"], doc["started"]) == ("stopped", 3, 290, started["started"])
    assert status(run)[0] == 0
