"""A trainer step longer than peer_timeout_s is not a dead peer (trainer_service/components/pulse.py).

Each step sleeps 4 s (trainer.debug_step_sleep_s) while generators and trainer give up on a peer silent for 2 s:
the trainer's heartbeat thread keeps both sides satisfied, and the run finishes."""

import json
import subprocess
import sys

from scalerl.shared.models.tiny_model import ensure_tiny_model

STEPS = 3


def test_a_step_longer_than_the_peer_timeout_ends_nothing(tmp_path):
    ensure_tiny_model()
    run = tmp_path / "run"
    sets = {
        "trainer.debug_step_sleep_s": 4.0,
        "trainer.peer_timeout_s": 2.0,  # the trainer's view of the generators
        "generator.peer_timeout_s": 2.0,  # the generators' view of the trainer
        "generator.heartbeat_s": 0.5,
        "run.n_generators": 2,  # several peers' heartbeats queue up during a step: all must count
        "trainer.prompts_per_step": 4,
        "eval.prompts": 10,
        "eval.every": STEPS,
        "trainer.checkpoint_every": 1,
    }
    args = [x for k, v in sets.items() for x in ("--set", f"{k}={v}")]
    r = subprocess.run(
        [sys.executable, "-m", "scalerl.cli", "train", "--run-dir", str(run), "--max-steps", str(STEPS), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [x for x in records if x["kind"] == "train"]
    assert [x["step"] for x in train] == list(range(1, STEPS + 1))
    assert train[-1]["time_s"] - train[0]["time_s"] >= 4.0 * (STEPS - 1)  # the steps really outlasted the timeout
    logs = "".join(p.read_text() for p in (run / "logs").glob("*.log"))
    assert "stopped answering" not in logs and "trainer silent" not in logs


def test_slow_starts_on_both_sides_outlast_the_peer_timeout(tmp_path):
    """A trainer that loads for 5 s keeps its generators, and generators whose engines come up 5 s late still
    join: start-up waits on startup_timeout_s, not on the 2 s steady-state peer_timeout_s."""
    ensure_tiny_model()
    run = tmp_path / "run"
    sets = {
        "trainer.debug_startup_sleep_s": 5.0,
        "generator.debug_startup_sleep_s": 5.0,
        "trainer.peer_timeout_s": 2.0,
        "generator.peer_timeout_s": 2.0,
        "generator.heartbeat_s": 0.5,
        "trainer.startup_timeout_s": 120.0,
        "generator.startup_timeout_s": 120.0,
        "trainer.prompts_per_step": 4,
        "eval.prompts": 10,
        "eval.every": 2,
    }
    args = [x for k, v in sets.items() for x in ("--set", f"{k}={v}")]
    r = subprocess.run(
        [sys.executable, "-m", "scalerl.cli", "train", "--run-dir", str(run), "--max-steps", "2", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    train = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"train"' in x]
    assert [x["step"] for x in train] == [1, 2]
    logs = "".join(p.read_text() for p in (run / "logs").glob("*.log"))
    assert "trainer silent" not in logs and "no word from the trainer" not in logs
