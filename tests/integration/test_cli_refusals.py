"""Bad input to the process-launching commands: exit 2, one stderr line naming the offender, nothing created.

Each test runs the command as a user does (a subprocess of `python -m scalerl.cli`); only the damaged-checkpoint
test trains, a 2-step run with the helper of test_faults_resume.py.
"""

from pathlib import Path

import pytest

from scalerl.shared.wiring import ADDRESS_KEYS
from tests.integration.test_faults_resume import train

REPO_CONFIG = Path(__file__).resolve().parents[2] / "scalerl.toml"


def tree(root: Path) -> dict[str, bytes]:
    """Every file under root with its bytes (directories by name), to show that a refusal changed nothing."""
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else b"<dir>" for p in sorted(root.rglob("*"))}


def one_error(r) -> str:
    lines = r.stderr.splitlines()
    assert r.returncode == 2, r.stderr[-2000:]
    assert len(lines) == 1, r.stderr
    assert r.stdout == ""
    return lines[0]


@pytest.mark.parametrize("command", ["train", "trainer"])
def test_resume_and_resume_from_scratch_together_are_refused(cli, tmp_path, command):
    run = tmp_path / "run"
    r = cli(
        command, "--resume", "--resume-from-scratch", *(["--run-dir", run] if command == "train" else []), cwd=tmp_path
    )
    line = one_error(r)
    assert line.startswith(f"scalerl {command}: error: --resume and --resume-from-scratch are alternatives"), line
    assert tree(tmp_path) == {}


def test_resume_of_a_missing_run_dir_says_so_and_creates_nothing(cli, tmp_path):
    run = tmp_path / "missing"
    r = cli("train", "--resume", "--run-dir", run, "--max-steps", 2, cwd=tmp_path)
    assert one_error(r) == f"scalerl: error: {run}: the run directory does not exist: nothing to --resume"
    assert tree(tmp_path) == {}


def test_standalone_trainer_resume_of_a_missing_run_dir_creates_nothing(cli, tmp_path):
    run = tmp_path / "missing"
    sets = [x for key in ADDRESS_KEYS for x in ("--set", f"wiring.{key}=ipc://{tmp_path}/{key}")]
    r = cli("trainer", "--resume", "--set", f"trainer.run_dir={run}", *sets, cwd=tmp_path)
    assert one_error(r) == f"scalerl: error: {run}: the run directory does not exist: nothing to --resume"
    assert tree(tmp_path) == {}


def test_resume_of_an_empty_run_dir_refuses_without_a_lock_file(cli, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    r = cli("train", "--resume", "--run-dir", run, "--max-steps", 2, cwd=tmp_path)
    line = one_error(r)
    assert line.startswith(f"scalerl: error: {run / 'checkpoints'}: no checkpoint to resume from (none was written)")
    assert tree(tmp_path) == {"run": b"<dir>"}


def test_standalone_trainer_refuses_an_empty_run_dir_or_a_file_in_one_line(cli, tmp_path):
    """As scalerl train: before the lock and the trainer's log (it printed its start-up lines first)."""
    sets = [x for key in ADDRESS_KEYS for x in ("--set", f"wiring.{key}=ipc://{tmp_path}/{key}")]
    run = tmp_path / "run"
    run.mkdir()
    r = cli("trainer", "--resume", "--set", f"trainer.run_dir={run}", *sets, cwd=tmp_path)
    assert one_error(r).startswith(f"scalerl: error: {run / 'checkpoints'}: no checkpoint to resume from")
    assert tree(tmp_path) == {"run": b"<dir>"}
    run.rmdir()
    run.write_text("mine\n")
    r = cli("trainer", "--set", f"trainer.run_dir={run}", *sets, cwd=tmp_path)
    assert one_error(r) == f"scalerl: error: {run}: not a directory (--run-dir names the run directory)"
    assert tree(tmp_path) == {"run": b"mine\n"}


def test_run_dir_that_is_a_file_is_refused(cli, tmp_path):
    path = tmp_path / "afile"
    path.write_text("mine\n")
    for resume in ([], ["--resume"]):
        r = cli("train", *resume, "--run-dir", path, "--max-steps", 2, cwd=tmp_path)
        assert one_error(r) == f"scalerl: error: {path}: not a directory (--run-dir names the run directory)"
        assert tree(tmp_path) == {"afile": b"mine\n"}


def test_resume_with_every_checkpoint_damaged_is_one_line_and_changes_nothing(tmp_path):
    run = tmp_path / "run"
    r = train(run, "--max-steps", 2, "--set", "trainer.checkpoint_every=1")
    assert r.returncode == 0, r.stderr[-2000:]
    states = sorted((run / "checkpoints").glob("step-*/state.json"))
    assert [p.parent.name for p in states] == ["step-000001", "step-000002"]
    for state in states:
        state.write_text("garbage\n")
    before = tree(run)
    r = train(run, "--resume", "--max-steps", 4)
    line = one_error(r)
    assert line.startswith(f"scalerl: error: {run / 'checkpoints'}: no checkpoint to resume from ("), line
    for state in states:
        assert f"{state}: not valid JSON" in line
    assert "--resume-from-scratch" in line
    assert tree(run) == before


def test_trainer_without_wiring_is_bad_input_like_the_generator(cli, tmp_path):
    """`scalerl trainer` by hand without a [wiring] table was `internal error: ValueError` (exit 1)."""
    want = "scalerl: error: wiring.request_addr must be set (scalerl train sets it; by hand: a [wiring] table)"
    for command in ("trainer", "generator"):
        r = cli(command, "--config", REPO_CONFIG, cwd=tmp_path)
        assert one_error(r) == want, command
    assert tree(tmp_path) == {}
