"""The trainer's SIGTERM grace covers the checkpoint it writes on the way out."""

from __future__ import annotations

from scalerl.cli.launcher import CHECKPOINT_WRITE_BYTES_PER_S, TRAINER_GRACE_S, trainer_grace_s


def test_grace_grows_with_the_newest_checkpoint(tmp_path):
    assert trainer_grace_s(tmp_path) == TRAINER_GRACE_S  # nothing to size it from: the fixed part
    old, new = tmp_path / "checkpoints" / "step-000010", tmp_path / "checkpoints" / "step-000020"
    for d, n in ((old, 1), (new, 3)):
        (d / "model").mkdir(parents=True)
        with open(d / "model" / "shard.bin", "wb") as f:
            f.truncate(n * 100_000_000)  # sparse: sizes without writing gigabytes
    assert trainer_grace_s(tmp_path) == TRAINER_GRACE_S + 300_000_000 / CHECKPOINT_WRITE_BYTES_PER_S


def test_before_the_first_checkpoint_grace_is_sized_from_the_models_weights(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    with open(model / "model.safetensors", "wb") as f:
        f.truncate(16_000_000_000)  # an 8B model in bf16
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.toml").write_text(f'[run]\nmodel = "{model}"\n')
    grace = trainer_grace_s(run)
    assert 400 < grace - TRAINER_GRACE_S < 600  # ~96 GB of master weights and moments at 200 MB/s


def test_a_failed_process_is_named_by_its_first_error_not_its_last_line():
    from scalerl.cli.launcher import first_error_line

    log = (
        "INFO generator up\n"
        "Traceback (most recent call last):\n"
        '  File "x.py", line 3, in update\n'
        "    raise KeyError(name)\n"
        "KeyError: 'update_weights: unknown parameter model.layers.0.mlp.experts.gate_up_proj'\n"
        "/usr/lib/python3.11/multiprocessing/resource_tracker.py:254: UserWarning: leaked semaphore\n"
        "  warnings.warn('resource_tracker: ...')\n"
    )
    assert (
        first_error_line(log) == "KeyError: 'update_weights: unknown parameter model.layers.0.mlp.experts.gate_up_proj'"
    )
    one_line = (
        "noise\n[rank0]: scalerl trainer: error: no space left on device: /r/checkpoints\n"
        "Traceback (most recent call last):\n"
    )
    assert first_error_line(one_line) == "scalerl trainer: error: no space left on device: /r/checkpoints"
    assert first_error_line("all quiet\n") is None
