"""`scalerl status` counts a checkpoint only when `scalerl train --resume` would take it."""

import json

import torch

from scalerl.cli.status_cmd import run_status
from scalerl.trainer_service.checkpoint import save_checkpoint
from tests.unit.test_live_forecast_pure import write_run


def real_checkpoint(root, step):
    model = torch.nn.Linear(2, 2)
    save_checkpoint(root, step, model, torch.optim.SGD(model.parameters(), lr=0.1), {})


def test_a_step_dir_that_does_not_verify_is_no_checkpoint_to_resume(tmp_path):
    preempted = write_run(tmp_path / "preempted", max_steps=1000)
    (preempted / "status.json").write_text(json.dumps({"state": "preempted", "exit_code": 143, "reason": "SIGTERM"}))
    (preempted / "checkpoints" / "step-000290").mkdir(parents=True)  # a name alone: nothing --resume would take
    doc = run_status(preempted)
    assert (doc["state"], doc["checkpoint"]) == ("failed", False) and "nothing to --resume" in doc["reason"]
    real_checkpoint(preempted / "checkpoints", 100)
    doc = run_status(preempted)
    assert (doc["state"], doc["checkpoint"]) == ("preempted", True)

    killed = write_run(tmp_path / "killed", max_steps=1000)
    (killed / "status.json").write_text(json.dumps({"state": "running"}))
    real_checkpoint(killed / "checkpoints", 100)
    (killed / "checkpoints" / "step-000100" / "state.json").unlink()
    assert run_status(killed)["state"] == "failed"
    real_checkpoint(killed / "checkpoints", 50)
    assert run_status(killed)["state"] == "preempted"
