"""Checkpoint files written over by someone else run no code, and a failed load or save loses nothing."""

import os
import pickle

import torch

from scalerl.trainer_service.checkpoint import read_metadata, resume_checkpoint, save_checkpoint, verify_checkpoint


def make():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 4)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    return model, opt


def test_a_dotted_global_in_the_index_is_refused_and_runs_nothing(tmp_path):
    """Protocol 4 resolves a dotted name attribute by attribute: an allowed module prefix reached os.system."""
    marker = tmp_path / "ran"
    d = tmp_path / "step-000001"
    d.mkdir()
    (d / "state.json").write_text('{"step": 1, "state": {}, "rng": {}}')
    cmd = f"touch {marker}".encode()
    for mod, name in ((b"torch.distributed.checkpoint.filesystem", b"os.system"), (b"posix", b"system")):
        (d / ".metadata").write_bytes(
            b"\x80\x04\x8c" + bytes([len(mod)]) + mod + b"\x8c" + bytes([len(name)]) + name + b"\x93"
            b"\x8c" + bytes([len(cmd)]) + cmd + b"\x85R."
        )
        why = verify_checkpoint(d)
        assert why is not None and str(d / ".metadata") in why and "not a DCP index" in why and "\n" not in why
        assert not marker.exists()


def test_the_index_of_a_real_checkpoint_still_reads(tmp_path):
    model, opt = make()
    p = save_checkpoint(tmp_path, 1, model, opt, {})
    assert verify_checkpoint(p) is None
    assert any(k.startswith("optim.") for k in read_metadata(p).state_dict_metadata)
    assert pickle.loads((p / ".metadata").read_bytes()).state_dict_metadata.keys() == (
        read_metadata(p).state_dict_metadata.keys()
    )
    assert os.path.exists(p / "state.json")


def without_checksums(p):
    """state.json as a checkpoint from before checksums has it (or as whoever rewrote a shard would leave it)."""
    import json

    meta = json.loads((p / "state.json").read_text())
    meta.pop("sha256", None)
    (p / "state.json").write_text(json.dumps(meta))


def plant_in_param_groups(p, marker):
    """Write a code-running pickle over the checkpoint's first bytes item (the optimizer's lr): the index and the
    sizes still verify."""
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata

    md = read_metadata(p)
    key = next(k for k, v in md.state_dict_metadata.items() if isinstance(v, BytesStorageMetadata))
    info = next(v for k, v in md.storage_data.items() if k.fqn == key)

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    payload = pickle.dumps(Evil(), protocol=2)
    assert len(payload) <= info.length
    f = p / info.relative_path
    data = bytearray(f.read_bytes())
    data[info.offset : info.offset + len(payload)] = payload
    f.write_bytes(bytes(data))
    without_checksums(p)  # the checksums would catch it first: this is the reader's own defence
    return key


def test_a_pickle_written_over_an_optimizer_setting_runs_nothing_and_is_skipped(tmp_path):
    model, opt = make()
    save_checkpoint(tmp_path, 1, model, opt, {"at": 1})
    p = save_checkpoint(tmp_path, 2, model, opt, {"at": 2})
    marker = tmp_path / "ran"
    key = plant_in_param_groups(p, marker)
    assert verify_checkpoint(p) is None  # sizes only: the full read must catch it
    fresh, fresh_opt = make()
    got = resume_checkpoint(tmp_path, fresh, fresh_opt, tidy=False)
    assert not marker.exists()
    assert got.path == tmp_path / "step-000001" and got.state == {"at": 1}
    ((skipped, why),) = got.skipped
    assert skipped == p and str(p) in why and key in why and "\n" not in why, why
    assert fresh_opt.param_groups[0]["lr"] == 1e-3 and fresh_opt.param_groups[0]["betas"] == (0.9, 0.999)


def test_a_load_that_fails_part_way_leaves_model_and_optimizer_as_they_were(tmp_path):
    """DCP writes item by item: damage the last item in the file, after the model's weights were read."""
    torch.manual_seed(1)
    saved = torch.nn.Linear(8, 8)
    saved_opt = torch.optim.AdamW(saved.parameters())
    saved(torch.randn(2, 8)).sum().backward()
    saved_opt.step()
    p = save_checkpoint(tmp_path, 7, saved, saved_opt, {})
    md = read_metadata(p)
    last = max(md.storage_data.values(), key=lambda info: info.offset)
    f = p / last.relative_path
    data = bytearray(f.read_bytes())
    data[last.offset : last.offset + 64] = b"\0" * 64
    f.write_bytes(bytes(data))
    without_checksums(p)  # the checksums would refuse it before any read: this is what a read failing part way does

    torch.manual_seed(2)
    fresh = torch.nn.Linear(8, 8)
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=5e-2)
    fresh(torch.randn(2, 8)).sum().backward()
    fresh_opt.step()
    weights = {k: v.clone() for k, v in fresh.state_dict().items()}
    moments = {k: v.clone() for k, v in fresh_opt.state[fresh.weight].items()}
    got = resume_checkpoint(tmp_path, fresh, fresh_opt, from_scratch=True, tidy=False)
    assert got.path is None and str(p) in got.skipped[0][1]
    assert all(torch.equal(v, fresh.state_dict()[k]) for k, v in weights.items())
    assert all(torch.equal(v, fresh_opt.state[fresh.weight][k]) for k, v in moments.items())
    assert fresh_opt.param_groups[0]["lr"] == 5e-2


def test_a_failed_load_into_a_fresh_optimizer_leaves_it_without_state(tmp_path):
    model, opt = make()
    p = save_checkpoint(tmp_path, 1, model, opt, {})
    (p / "state.json").write_text((p / "state.json").read_text())  # intact; the shard is what breaks
    shard = next(p.glob("*.distcp"))
    shard.write_bytes(b"\0" * shard.stat().st_size)
    without_checksums(p)
    fresh = torch.nn.Linear(4, 4)
    fresh_opt = torch.optim.AdamW(fresh.parameters())
    before = [t.clone() for t in fresh.parameters()]
    got = resume_checkpoint(tmp_path, fresh, fresh_opt, from_scratch=True, tidy=False)
    assert got.path is None and not fresh_opt.state
    assert all(torch.equal(a, b) for a, b in zip(before, fresh.parameters()))


def test_a_disk_full_while_finishing_leaves_no_temp_dir(tmp_path, monkeypatch):
    import errno

    import pytest

    import scalerl.trainer_service.checkpoint as ck
    from scalerl.shared.run_dir import RunDirError

    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    root = tmp_path / "ckpts"
    model, opt = make()
    save_checkpoint(root, 1, model, opt, {}, model_dir=model_dir)

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ck, "copy_hf_files", full)
    with pytest.raises(RunDirError, match="no space left on device"):
        save_checkpoint(root, 2, model, opt, {}, model_dir=model_dir)
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-000001"]


def test_a_kill_while_saving_the_same_step_again_loses_nothing(tmp_path, monkeypatch):
    """The re-save's new copy is renamed into place only after the old one is set aside, and a kill between the
    two leaves the old one to take back (rmtree then rename lost the step)."""
    from pathlib import Path

    from scalerl.trainer_service.checkpoint import find_resumable

    model, opt = make()
    save_checkpoint(tmp_path, 10, model, opt, {"at": "first"}, keep=1)
    real = Path.rename

    def killed(self, target):
        if Path(target).name == "step-000010":
            raise KeyboardInterrupt  # stands for the kill: nothing after this line runs
        return real(self, target)

    monkeypatch.setattr(Path, "rename", killed)
    try:
        save_checkpoint(tmp_path, 10, model, opt, {"at": "second"}, keep=1)
    except KeyboardInterrupt:
        pass
    monkeypatch.setattr(Path, "rename", real)
    chosen, skipped = find_resumable(tmp_path)  # read-only (status, the CLI's pre-check) sees it
    assert chosen is not None and chosen.name.endswith("step-000010") and not skipped
    fresh, fresh_opt = make()
    got = resume_checkpoint(tmp_path, fresh, fresh_opt)
    assert got.path == tmp_path / "step-000010" and got.state == {"at": "first"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step-000010"]


def test_saving_the_same_step_again_replaces_it_and_leaves_no_side_copy(tmp_path):
    model, opt = make()
    save_checkpoint(tmp_path, 10, model, opt, {"at": "first"}, keep=1)
    save_checkpoint(tmp_path, 10, model, opt, {"at": "second"}, keep=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step-000010"]
    got = resume_checkpoint(tmp_path, *make())
    assert got.state == {"at": "second"}


def test_a_checkpoint_is_on_disk_before_it_is_renamed_in_and_before_older_ones_are_pruned(tmp_path, monkeypatch):
    import shutil

    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    root = tmp_path / "ckpts"
    model, opt = make()
    save_checkpoint(root, 1, model, opt, {}, model_dir=model_dir, keep=1)
    events = []
    real_fsync, real_rmtree = os.fsync, shutil.rmtree

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def rmtree(path, *a, **k):
        events.append(("rmtree", str(path)))
        return real_rmtree(path, *a, **k)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(shutil, "rmtree", rmtree)
    save_checkpoint(root, 2, model, opt, {}, model_dir=model_dir, keep=1)
    synced = [p for kind, p in events if kind == "fsync"]
    tmp = str(root / ".tmp-step-000002")
    for must in (f"{tmp}/state.json", f"{tmp}/hf/config.json", f"{tmp}/hf", tmp, f"{tmp}/.metadata"):
        assert must in synced, must
    pruned = events.index(("rmtree", str(root / "step-000001")))
    assert ("fsync", str(root)) in events[:pruned]  # the rename is durable before the older one goes


def test_a_flipped_byte_inside_a_tensor_is_damage_named_on_load(tmp_path):
    import json

    import pytest

    from scalerl.trainer_service.checkpoint import CheckpointError, load_model_weights

    model, opt = make()
    save_checkpoint(tmp_path, 1, model, opt, {"at": 1})
    p = save_checkpoint(tmp_path, 2, model, opt, {"at": 2})
    info = next(v for k, v in read_metadata(p).storage_data.items() if k.fqn == "model.weight")
    f = p / info.relative_path
    data = bytearray(f.read_bytes())
    data[info.offset + info.length // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    assert verify_checkpoint(p) is None  # sizes only
    with pytest.raises(CheckpointError, match=f"{f}: content differs .*sha256"):
        load_model_weights(p, torch.nn.Linear(4, 4))  # what `scalerl export` reads
    got = resume_checkpoint(tmp_path, *make(), tidy=False)
    assert got.path == tmp_path / "step-000001" and str(f) in got.skipped[0][1]

    # A checkpoint written before checksums: none to check, it loads.
    old = tmp_path / "step-000001" / "state.json"
    meta = json.loads(old.read_text())
    del meta["sha256"]
    old.write_text(json.dumps(meta))
    fresh = torch.nn.Linear(4, 4)
    load_model_weights(tmp_path / "step-000001", fresh)
    assert torch.equal(fresh.weight, model.weight)
