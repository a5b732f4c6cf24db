"""Checkpoint files written over by someone else run no code, and a failed load or save loses nothing."""

import os
import pickle

import torch

from scalerl.trainer_service.checkpoint import read_metadata, save_checkpoint, verify_checkpoint


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
