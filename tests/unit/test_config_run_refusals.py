"""[run] settings the run could not use, refused before any process starts in one line that names the key (exit 2):
run.budget and run.target without the live forecast, run.trainer_nodes outside srun, an IPv6 host, run.allow_remote on
an ipc run outside srun."""

import pytest

from scalerl.cli.run_config import resolve
from scalerl.shared.config import ConfigError


def config(tmp_path, *sets: str, path=None):
    return resolve(path, list(sets), run_dir=str(tmp_path / "run"))[1]


def refused(tmp_path, *sets: str) -> str:
    with pytest.raises(ConfigError) as e:
        config(tmp_path, *sets)
    assert "\n" not in str(e.value), str(e.value)
    return str(e.value)


@pytest.fixture(autouse=True)
def outside_srun(monkeypatch):
    for var in ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_STEP_NUM_TASKS", "SCALERL_SLURM"):
        monkeypatch.delenv(var, raising=False)


def srun(monkeypatch):
    monkeypatch.setenv("SLURM_PROCID", "0")
    monkeypatch.setenv("SLURM_NTASKS", "2")
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "2")  # srun sets it


# ---------------------------------------------------------------- [run]: forecast, trainer_nodes, host, allow_remote


@pytest.mark.parametrize("key, value", [("budget", "5"), ("target", "0.5")])
def test_budget_and_target_without_the_live_forecast_are_refused(tmp_path, key, value):
    msg = refused(tmp_path, f"run.{key}={value}", "run.live_forecast=false")
    assert msg == f"run: {key} = {value} needs run.live_forecast = true: only the live forecast reads it", msg
    config(tmp_path, f"run.{key}={value}")
    config(tmp_path, f"run.{key}=0", "run.live_forecast=false")


def test_trainer_nodes_outside_srun_is_refused_before_it_counts_ranks(tmp_path):
    msg = refused(tmp_path, "run.trainer_nodes=2")
    assert msg.startswith(
        "run.trainer_nodes = 2 is set but this is no multi-task srun step: outside srun the trainer runs "
        "run.trainer_procs = 1 ranks on this host"
    ), msg
    # The launcher would start one rank here: grad_reduce_dtype is refused by the key that cannot act, not accepted.
    msg = refused(tmp_path, "trainer.grad_reduce_dtype=bfloat16", "run.trainer_nodes=2")
    assert msg.startswith("run.trainer_nodes = 2 is set but"), msg
    config(tmp_path, "run.trainer_nodes=0")


def test_trainer_nodes_under_srun_counts_its_ranks(tmp_path, monkeypatch):
    srun(monkeypatch)
    cfg = config(tmp_path, "trainer.grad_reduce_dtype=bfloat16", "run.trainer_nodes=2")
    assert cfg.run.trainer_nodes == 2


@pytest.mark.parametrize("host", ["::1", "[::1]", "fe80::1"])
def test_an_ipv6_host_is_refused(tmp_path, host):
    msg = refused(tmp_path, "run.transport=tcp", f"run.host='{host}'", "run.allow_remote=true")
    assert msg.startswith(
        f"run: host '{host}' is an IPv6 address, which the run's zmq sockets cannot bind (they are IPv4 only)"
    ), msg


def test_allow_remote_on_an_ipc_run_outside_srun_is_refused(tmp_path, monkeypatch):
    msg = refused(tmp_path, "run.allow_remote=true")
    assert msg.startswith("run.allow_remote = true is set but run.transport = 'ipc': ipc sockets stay on this host"), (
        msg
    )
    config(tmp_path, "run.allow_remote=true", "run.transport=tcp")
    config(tmp_path, "run.allow_remote=false")
    srun(monkeypatch)
    config(tmp_path, "run.allow_remote=true")  # under srun the transport is tcp
