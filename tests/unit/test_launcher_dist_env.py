"""The processes `scalerl train` starts do not inherit a torch.distributed rendezvous from its caller's shell: its
one trainer would join a process group that never forms and wait up to 30 minutes without a word."""

from scalerl.cli.launcher import child_env, without_dist_env

CALLER = {
    "PATH": "/usr/bin",
    "SLURM_JOB_ID": "7",
    "SLURM_PROCID": "0",
    "NCCL_DEBUG": "INFO",
    "RANK": "0",
    "WORLD_SIZE": "2",
    "LOCAL_RANK": "0",
    "LOCAL_WORLD_SIZE": "2",
    "GROUP_RANK": "0",
    "ROLE_RANK": "0",
    "MASTER_ADDR": "127.0.0.1",
    "MASTER_PORT": "29991",
    "TORCHELASTIC_RUN_ID": "x",
    "TORCHELASTIC_RESTART_COUNT": "0",
}


def test_a_child_gets_no_rendezvous_from_the_caller():
    env = child_env(CALLER, {"CUDA_VISIBLE_DEVICES": "1"}, {"SCALERL_LOCK_FD": "5"})
    assert env == {
        "PATH": "/usr/bin",
        "SLURM_JOB_ID": "7",
        "SLURM_PROCID": "0",
        "NCCL_DEBUG": "INFO",
        "CUDA_VISIBLE_DEVICES": "1",
        "SCALERL_LOCK_FD": "5",
    }


def test_the_plan_and_the_lock_win_over_the_caller():
    env = child_env({"CUDA_VISIBLE_DEVICES": "0,1", "A": "1"}, {"CUDA_VISIBLE_DEVICES": "1"}, {"A": "2"})
    assert env == {"CUDA_VISIBLE_DEVICES": "1", "A": "2"}


def test_without_dist_env_keeps_slurm_and_nccl():
    assert set(without_dist_env(CALLER)) == {"PATH", "SLURM_JOB_ID", "SLURM_PROCID", "NCCL_DEBUG"}


def test_the_supervisor_starts_its_children_without_the_callers_rendezvous(tmp_path, monkeypatch):
    import json
    import sys
    import time

    from scalerl.cli.device_plan import Placement
    from scalerl.cli.launcher import Supervisor
    from scalerl.shared.ownership import RunLock

    for k, v in CALLER.items():
        if k != "PATH":
            monkeypatch.setenv(k, v)
    seen = tmp_path / "env.json"
    code = f"import json, os; open({str(seen)!r}, 'w').write(json.dumps(dict(os.environ)))"
    cmd = Placement("trainer", "trainer", 0, "local", (), gpu=False, argv=(sys.executable, "-c", code))
    lock = RunLock.acquire(tmp_path / "run", "test")
    try:
        sup = Supervisor(tmp_path / "run", [cmd], lock)
        sup.start()
        deadline = time.monotonic() + 30
        while sup.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sup.poll() == ("trainer", 0)
    finally:
        lock.release()
    env = json.loads(seen.read_text())
    assert env["SLURM_JOB_ID"] == "7" and env["NCCL_DEBUG"] == "INFO"
    assert not {"RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID"} & set(env)


def test_the_srun_trainer_task_execs_without_the_callers_rendezvous(monkeypatch):
    import os
    from types import SimpleNamespace

    import pytest

    from scalerl.cli import slurm_task

    for k, v in CALLER.items():
        monkeypatch.setenv(k, v)
    seen = {}

    def execve(path, argv, env):
        seen.update(env)
        raise SystemExit(0)

    monkeypatch.setattr(os, "execve", execve)
    monkeypatch.setattr(os, "execv", lambda path, argv: execve(path, argv, dict(os.environ)))  # never exec pytest away
    cfg = SimpleNamespace(wiring=SimpleNamespace(request_addr="tcp://127.0.0.1:29600"))
    with pytest.raises(SystemExit):
        slurm_task._exec_trainer("task 0/2", cfg, SimpleNamespace(n_generators=1), None, ["python", "-c", "pass"])
    assert seen["SLURM_PROCID"] == "0" and seen["SLURM_JOB_ID"] == "7"
    assert not {"RANK", "WORLD_SIZE", "MASTER_ADDR", "TORCHELASTIC_RUN_ID"} & set(seen)
