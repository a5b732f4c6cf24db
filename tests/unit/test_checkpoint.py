"""Checkpoints restore training exactly, and a half-written one never replaces a good one."""

import logging

import pytest
import torch

from scalerl.shared.run_dir import write_error
from scalerl.trainer_service.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
    resume_checkpoint,
    save_checkpoint,
)


def make():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    return model, opt


def train(model, opt, steps):
    for _ in range(steps):
        x = torch.randn(16, 4)  # draws from the global RNG, which the checkpoint must restore
        loss = (model(x) - x.sum(1, keepdim=True)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_resume_is_bit_exact(tmp_path):
    model, opt = make()
    train(model, opt, 5)
    save_checkpoint(tmp_path, 5, model, opt, {"epoch": 1, "pass_rates": {"p1": 0.5}})
    train(model, opt, 5)
    reference = [p.detach().clone() for p in model.parameters()]

    fresh, fresh_opt = make()
    step, state = load_checkpoint(latest_checkpoint(tmp_path), fresh, fresh_opt)
    assert step == 5 and state == {"epoch": 1, "pass_rates": {"p1": 0.5}}
    train(fresh, fresh_opt, 5)
    for a, b in zip(reference, fresh.parameters()):
        assert torch.equal(a, b)


def test_keeps_last_checkpoints_and_ignores_partial_ones(tmp_path):
    model, opt = make()
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, model, opt, {}, keep=2)
    assert sorted(p.name for p in tmp_path.glob("step-*")) == ["step-000002", "step-000003"]
    (tmp_path / ".tmp-step-000004").mkdir()  # a crash mid-save leaves only a hidden temp dir
    assert latest_checkpoint(tmp_path).name == "step-000003"


def test_tied_embeddings_round_trip(tmp_path):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(
        vocab_size=32,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        tie_word_embeddings=True,
    )
    torch.manual_seed(1)
    model = Qwen2ForCausalLM(cfg)
    opt = torch.optim.AdamW(model.parameters())
    save_checkpoint(tmp_path, 1, model, opt, {})
    torch.manual_seed(2)
    other = Qwen2ForCausalLM(cfg)
    load_checkpoint(latest_checkpoint(tmp_path), other, None)
    for (k, a), (_, b) in zip(model.state_dict().items(), other.state_dict().items()):
        assert torch.equal(a, b), k


# --- resume rules (docs/run-dir.md): newest checkpoint that verifies, by step number; never silently step 0 ---


def saved(tmp_path, steps, keep=10):
    model, opt = make()
    for step in steps:
        train(model, opt, 1)
        save_checkpoint(tmp_path, step, model, opt, {"at": step}, keep=keep)
    return model, opt


def cut(path, frac=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * frac)])


def plant(d):
    """A .metadata that would run code when unpickled: verification must refuse it, never execute it."""
    import os
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(d / "pwned"),))

    (d / ".metadata").write_bytes(pickle.dumps(Evil()))


def data_files(d):
    """The checkpoint's files other than state.json, largest first (whatever the layout)."""
    files = [p for p in d.rglob("*") if p.is_file() and p.name != "state.json"]
    return sorted(files, key=lambda p: -p.stat().st_size)


def break_largest(d):
    cut(data_files(d)[0], 0.9)
    return data_files(d)[0], "truncated"


def drop_smallest(d):
    gone = data_files(d)[-1]
    gone.unlink()
    return gone, "missing"


def drop_state(d):
    (d / "state.json").unlink()
    return d / "state.json", "missing"


def cut_state(d):
    cut(d / "state.json")
    return d / "state.json", "not valid JSON"


def wrong_step(d):
    (d / "state.json").write_text((d / "state.json").read_text().replace('"step": 3', '"step": 2', 1))
    return d / "state.json", "says step 2 but the directory is step 3"


def planted_index(d):
    plant(d)
    return d / ".metadata", "not a DCP index"


BREAK = {f.__name__: f for f in (drop_state, cut_state, wrong_step, break_largest, drop_smallest, planted_index)}


@pytest.mark.parametrize("how", list(BREAK))
def test_resume_skips_a_broken_newest_checkpoint_and_takes_the_one_before(tmp_path, how, caplog):
    saved(tmp_path, [1, 2, 3])
    broken_file, reason = BREAK[how](tmp_path / "step-000003")
    model, opt = make()
    with caplog.at_level(logging.INFO, logger="scalerl.trainer"):
        got = resume_checkpoint(tmp_path, model, opt)
    assert got.step == 2 and got.state == {"at": 2} and got.path == tmp_path / "step-000002"
    assert [p.name for p, _ in got.skipped] == ["step-000003"]
    why = got.skipped[0][1]
    assert str(broken_file) in why and reason in why, why  # the reason names the file and what is wrong
    assert f"skipping step-000003: {got.skipped[0][1]}" in caplog.text and "continuing from" in caplog.text
    # set aside for inspection, out of the way of pruning and the next resume
    assert (tmp_path / "broken-step-000003").is_dir() and not (tmp_path / "step-000003").exists()
    assert (tmp_path / "latest").read_text().strip() == "step-000002"
    assert not list(tmp_path.rglob("pwned"))


def test_latest_pointing_to_a_missing_directory_is_not_trusted(tmp_path):
    saved(tmp_path, [1, 2])
    (tmp_path / "latest").write_text("step-000009\n")
    assert latest_checkpoint(tmp_path) == tmp_path / "step-000002"


def test_resume_refuses_when_nothing_verifies_and_changes_nothing(tmp_path):
    saved(tmp_path, [1, 2])
    for d in ("step-000001", "step-000002"):
        (tmp_path / d / "state.json").unlink()
    model, opt = make()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(CheckpointError) as e:
        resume_checkpoint(tmp_path, model, opt)
    msg = str(e.value)
    assert "step-000002/state.json: missing" in msg and "step-000001/state.json: missing" in msg
    assert "--resume-from-scratch" in msg and "\n" not in msg
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step-000001", "step-000002"]
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    with pytest.raises(CheckpointError, match="none was written"):
        resume_checkpoint(tmp_path / "empty", model, opt)


def test_resume_from_scratch_starts_at_zero_with_the_model_untouched(tmp_path):
    saved(tmp_path, [1])
    (tmp_path / "step-000001" / ".metadata").write_bytes(b"garbage")
    model, opt = make()
    before = [p.detach().clone() for p in model.parameters()]
    got = resume_checkpoint(tmp_path, model, opt, from_scratch=True)
    assert (got.path, got.step, got.state) == (None, 0, {})
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert not (tmp_path / "latest").exists() and (tmp_path / "broken-step-000001").is_dir()


def test_a_checkpoint_of_another_model_fails_before_changing_anything(tmp_path):
    saved(tmp_path, [1])
    other = torch.nn.Sequential(torch.nn.Linear(4, 9), torch.nn.Tanh(), torch.nn.Linear(9, 1))
    before = [p.detach().clone() for p in other.parameters()]
    with pytest.raises(CheckpointError, match=r"step-000001: does not .*Size mismatch"):
        load_checkpoint(tmp_path / "step-000001", other, torch.optim.AdamW(other.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(before, other.parameters()))


def test_pruning_keeps_the_newest_by_step_number_and_the_one_just_written(tmp_path):
    saved(tmp_path, [50, 60], keep=2)
    saved(tmp_path, [5], keep=2)  # a run that went back (from scratch) must keep what it just wrote
    assert (tmp_path / "step-000005" / "state.json").exists()
    saved(tmp_path, [999_999, 1_000_000, 1_000_001], keep=2)  # names stop sorting like numbers past 6 digits
    assert sorted(p.name for p in tmp_path.glob("step-*")) == ["step-1000000", "step-1000001"]


@pytest.mark.parametrize(
    "error",
    [
        OSError(28, "No space left on device"),
        RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)"),
    ],
)
def test_disk_full_errors_say_so_with_the_path(tmp_path, error):
    mapped = write_error(tmp_path / "x", error)
    assert str(mapped) == f"no space left on device: {tmp_path / 'x'}"


def test_a_load_that_fails_on_verified_files_stops_the_resume_and_sets_nothing_aside(tmp_path, monkeypatch):
    # Out of memory (or a file system error) while loading a checkpoint whose files match their checksums was taken
    # for damage: the newest checkpoint was set aside, the resume fell back a checkpoint, and the trainer then cut
    # metrics.jsonl back to that step, lines that cannot be written again.
    import scalerl.trainer_service.checkpoint as checkpoint

    saved(tmp_path, [1, 2, 3])

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(checkpoint.dcp, "load", out_of_memory)
    model, opt = make()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(checkpoint.CheckpointLoadFailure, match="step-000003: does not load .* not damage"):
        resume_checkpoint(tmp_path, model, opt)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step-000001", "step-000002", "step-000003"]
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    monkeypatch.undo()  # the cause fixed, the same checkpoint resumes
    assert resume_checkpoint(tmp_path, model, opt).step == 3
