"""`scalerl train` under srun: slurm variables -> roles (pure), and a two-task run simulated on this host."""

import json
import os
import socket
import subprocess
import sys

import pytest

from scalerl.cli import slurm
from scalerl.cli.run_config import resolve
from scalerl.shared.config import ConfigError
from tests.conftest import catches


def env(**kw):
    return {k: str(v) for k, v in kw.items()}


# ---------------------------------------------------------------- compact lists


@pytest.mark.parametrize(
    "text, hosts",
    [
        ("localhost", ["localhost"]),
        ("node[01-03],gpu7", ["node01", "node02", "node03", "gpu7"]),
        ("node[1,3-4]", ["node1", "node3", "node4"]),
        ("a[8-10]", ["a8", "a9", "a10"]),
        ("r[1-2]n[1-2]", ["r1n1", "r1n2", "r2n1", "r2n2"]),
        ("gpu-[009-011].cluster,x", ["gpu-009.cluster", "gpu-010.cluster", "gpu-011.cluster", "x"]),
    ],
)
def test_expand_nodelist(text, hosts):
    assert slurm.expand_nodelist(text) == hosts


@pytest.mark.parametrize("text", ["node[1-", "node[3-1]", "node[a-b]", "", "n]1["])
def test_bad_nodelist_names_it(text):
    with pytest.raises(ConfigError, match="node list"):
        slurm.expand_nodelist(text)


def test_expand_tasks_per_node():
    assert slurm.expand_tasks_per_node("2(x3),1") == [2, 2, 2, 1]
    assert slurm.expand_tasks_per_node("8") == [8]
    with pytest.raises(ConfigError, match="tasks per node"):
        slurm.expand_tasks_per_node("2(x)")


# ---------------------------------------------------------------- reading the environment


def test_active_only_for_multi_task_steps():
    assert not slurm.active({})
    assert not slurm.active(env(SLURM_PROCID=0, SLURM_NTASKS=1, SLURM_STEP_NUM_TASKS=1))
    assert slurm.active(env(SLURM_PROCID=0, SLURM_NTASKS=2, SLURM_STEP_NUM_TASKS=2))
    assert not slurm.active(env(SLURM_PROCID=0, SLURM_NTASKS=2, SLURM_STEP_NUM_TASKS=2, SCALERL_SLURM=0))
    # the step's task count wins over the job's (an srun of one task inside a 9-task job)
    assert not slurm.active(env(SLURM_PROCID=0, SLURM_NTASKS=9, SLURM_STEP_NUM_TASKS=1))
    # The batch script of `sbatch --ntasks-per-node=8` (SLURM_PROCID=0 and SLURM_NTASKS, no step variables) runs
    # `scalerl train` as one process for its node, as outside slurm: it was read as task 0 of an 8-task step, a
    # trainer alone waiting for 7 generator tasks nothing would start.
    assert not slurm.active(env(SLURM_PROCID=0, SLURM_NTASKS=8, SLURM_TASKS_PER_NODE=8, SLURM_JOB_NODELIST="g1"))


def test_read_task_prefers_step_variables():
    t = slurm.read_task(
        env(
            SLURM_PROCID=5,
            SLURM_NTASKS=99,
            SLURM_STEP_NUM_TASKS=8,
            SLURM_NODEID=1,
            SLURM_LOCALID=1,
            SLURM_JOB_NODELIST="n[1-4]",
            SLURM_STEP_NODELIST="n[2-3]",
            SLURM_STEP_TASKS_PER_NODE="4(x2)",
            SLURM_JOB_ID=77,
            SLURM_RESTART_COUNT=2,
        )
    )
    assert t == slurm.SlurmTask(
        procid=5, ntasks=8, nodes=("n2", "n3"), nodeid=1, localid=1, tasks_per_node=(4, 4), job_id="77", restart_count=2
    )


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(SLURM_PROCID=0, SLURM_NTASKS=2), "SLURM_JOB_NODELIST"),
        (dict(SLURM_PROCID=2, SLURM_NTASKS=2, SLURM_JOB_NODELIST="a"), "SLURM_PROCID=2"),
        (dict(SLURM_PROCID="x", SLURM_NTASKS=2, SLURM_JOB_NODELIST="a"), "SLURM_PROCID='x'"),
        (dict(SLURM_PROCID=0, SLURM_NTASKS=2, SLURM_JOB_NODELIST="a", SLURM_NODEID=1), "SLURM_NODEID=1"),
        (dict(SLURM_PROCID=0, SLURM_NTASKS=3, SLURM_JOB_NODELIST="a,b", SLURM_TASKS_PER_NODE="1"), "TASKS_PER_NODE"),
    ],
)
def test_read_task_errors_name_the_variable(bad, match):
    with pytest.raises(ConfigError, match=match):
        slurm.read_task(env(**bad))


# ---------------------------------------------------------------- roles


def plan(procid, trainer_nodes=0, **kw):
    base = dict(SLURM_PROCID=procid, SLURM_NTASKS=3, SLURM_JOB_NODELIST="node[01-03]")
    return slurm.make_plan(slurm.read_task(env(**{**base, **kw})), trainer_nodes)


def test_default_task_zero_trains_and_the_rest_generate():
    assert plan(0, SLURM_NODEID=0) == slurm.SlurmPlan("trainer", "node01", n_generators=2)
    assert plan(1) == slurm.SlurmPlan("generator", "node01", n_generators=2, generator_index=0)
    assert plan(2, SLURM_NODEID=2).generator_index == 1
    with pytest.raises(ConfigError, match="not on the first node node01"):
        plan(0, SLURM_NODEID=1)


def test_trainer_nodes_take_whole_nodes():
    two_by_four = dict(SLURM_NTASKS=8, SLURM_JOB_NODELIST="tr1,gen[1]", SLURM_STEP_TASKS_PER_NODE="4(x2)")
    roles = [plan(p, 1, **two_by_four) for p in range(8)]
    assert [r.role for r in roles] == ["trainer"] + ["idle"] * 3 + ["generator"] * 4
    assert [r.generator_index for r in roles[4:]] == [0, 1, 2, 3]
    assert {r.n_generators for r in roles} == {4} and {r.trainer_host for r in roles} == {"tr1"}
    three = dict(SLURM_NTASKS=6, SLURM_JOB_NODELIST="n[1-3]", SLURM_TASKS_PER_NODE="2(x3)")
    second = plan(2, 2, SLURM_NODEID=1, **three)
    assert (second.role, second.node_rank, second.trainer_nodes, second.n_generators) == ("trainer", 1, 2, 2)
    assert plan(5, 2, **three).generator_index == 1


def test_each_job_gets_its_own_default_ports(tmp_path):
    # Two jobs whose first node is one host bound the same fixed ports; the second failed after every task started.
    assert slurm.job_base_port("123457", 29600) == 29600 + 570 and slurm.job_base_port("4242", 29600) == 30020
    assert slurm.job_base_port("", 29600) == 29600  # no job id (a dry run on a laptop): the default as it is
    assert max(slurm.job_base_port(str(j), 29600) for j in range(1000)) + 6 < 32768  # below the ephemeral ports
    step = dict(
        SLURM_PROCID="0",
        SLURM_STEP_NUM_TASKS="12",
        SLURM_JOB_NODELIST="n[1-3]",
        SLURM_TASKS_PER_NODE="4(x3)",
        SLURM_JOB_ID="123457",
        CUDA_VISIBLE_DEVICES="0,1,2,3",
    )
    base = [sys.executable, "-m", "scalerl.cli", "train", "--dry-run", "--run-dir", str(tmp_path / "run")]
    base += ["--set", "run.trainer_nodes=2", "--set", "run.trainer_procs=4", "--set", "generator.backend=vllm"]
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    for extra, port in (([], 30174), (["--set", "run.base_port=30000"], 30004)):  # a port set by hand is kept
        r = subprocess.run([*base, *extra], capture_output=True, text=True, timeout=120, env={**clean, **step})
        assert r.returncode == 0 and f"--master_port={port}" in r.stdout, r.stderr[-2000:]


def test_a_cyclic_step_is_refused_as_a_block_one_is_taken():
    # srun -m cyclic over 2 nodes x 4 tasks: task 4 runs on the first node, where block distribution would put task 1,
    # and the plan gave it task 0's GPU (the trainer's). Refused by every task that knows (SLURM_DISTRIBUTION), and by a
    # task whose own SLURM_NODEID is not its block node; trainer_nodes = 0 took it as a block step before.
    step = dict(SLURM_NTASKS=8, SLURM_JOB_NODELIST="n[1-2]", SLURM_STEP_TASKS_PER_NODE="4(x2)")
    for procid in (0, 5):
        with pytest.raises(ConfigError, match="SLURM_DISTRIBUTION=cyclic: .* use srun --distribution=block"):
            plan(procid, SLURM_DISTRIBUTION="cyclic", **step)
    with pytest.raises(ConfigError, match="task 4 runs on node index 0, block distribution would put it on 1"):
        plan(4, SLURM_NODEID=0, **step)
    assert plan(4, SLURM_NODEID=1, SLURM_DISTRIBUTION="block", **step).generator_index == 3
    # One task per node: cyclic and block place the tasks alike.
    one_each = dict(SLURM_NTASKS=2, SLURM_JOB_NODELIST="n[1-2]", SLURM_STEP_TASKS_PER_NODE="1(x2)")
    assert plan(1, SLURM_NODEID=1, SLURM_DISTRIBUTION="cyclic", **one_each).generator_index == 0


@pytest.mark.parametrize(
    "trainer_nodes, kw, match",
    [
        (3, dict(SLURM_TASKS_PER_NODE="1(x3)"), "leaves no generator node"),
        (1, {}, "SLURM_STEP_TASKS_PER_NODE"),
        (1, dict(SLURM_TASKS_PER_NODE="1(x3)", SLURM_NODEID=2), "block"),
    ],
)
def test_trainer_nodes_errors(trainer_nodes, kw, match):
    with pytest.raises(ConfigError, match=match):
        plan(1, trainer_nodes, **kw)


def test_trainer_argv():
    one = slurm.SlurmPlan("trainer", "n1", 2)
    assert slurm.trainer_argv("py", "c.toml", False, one, 1, 29604) == [
        "py",
        "-m",
        "scalerl.cli",
        "trainer",
        "--config",
        "c.toml",
    ]
    assert slurm.trainer_argv("py", "c.toml", True, one, 4, 29604) == [
        "py",
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=4",
        "-m",
        "scalerl.cli",
        "trainer",
        "--config",
        "c.toml",
        "--resume",
    ]
    multi = slurm.SlurmPlan("trainer", "n1", 2, trainer_nodes=2, node_rank=1)
    assert slurm.trainer_argv("py", "c.toml", False, multi, 8, 29604)[3:8] == [
        "--nnodes=2",
        "--node_rank=1",
        "--master_addr=n1",
        "--master_port=29604",
        "--nproc_per_node=8",
    ]


def test_each_task_takes_its_block_of_the_node():
    """No per-task binding: every task sees the node's GPUs and keeps its block of the node's plan."""
    task = slurm.read_task(env(SLURM_PROCID=2, SLURM_NTASKS=4, SLURM_JOB_NODELIST="g1", SLURM_TASKS_PER_NODE=4))
    visible = [str(i) for i in range(8)]
    placements = slurm.step_placements(task, 0, False, visible, 2, 2, 2)
    assert [slurm.own_devices({}, placements, p) for p in range(4)] == ["0,1", "2,3", "4,5", "6,7"]
    # vLLM with TP 2 on a generator node: blocks of two GPUs per generator task.
    two = slurm.read_task(env(SLURM_PROCID=0, SLURM_NTASKS=5, SLURM_JOB_NODELIST="t,g", SLURM_TASKS_PER_NODE="1,4"))
    placements = slurm.step_placements(two, 1, False, ["4", "5", "6", "7", "0", "1", "2", "3"], 8, 2, 2)
    assert [slurm.own_devices({}, placements, p) for p in range(5)] == ["4,5,6,7,0,1,2,3", "4,5", "6,7", "0,1", "2,3"]
    # nothing to change: no GPUs, srun's own per-task binding, or a layout the task cannot know
    cpu = slurm.step_placements(task, 0, False, None, 2, 1, 1)
    assert slurm.own_devices({}, cpu, 1) is None
    assert slurm.own_devices({"SLURM_GPUS_PER_TASK": "2", "CUDA_VISIBLE_DEVICES": "4,5"}, placements, 1) is None
    many = slurm.read_task(env(SLURM_PROCID=1, SLURM_NTASKS=3, SLURM_JOB_NODELIST="a,b"))
    assert slurm.step_placements(many, 0, False, visible, 1, 1, 1) is None


def test_evaluator_task_is_the_last_one():
    task = slurm.SlurmTask(procid=3, ntasks=4, nodes=("localhost",))
    assert slurm.make_plan(task, 0, evaluator=True) == slurm.SlurmPlan("evaluator", "localhost", 2)
    gen = slurm.make_plan(slurm.SlurmTask(procid=2, ntasks=4, nodes=("localhost",)), 0, evaluator=True)
    assert gen.role == "generator" and gen.generator_index == 1 and gen.n_generators == 2
    with pytest.raises(ConfigError, match="leave no generator task"):
        slurm.make_plan(slurm.SlurmTask(procid=0, ntasks=2, nodes=("localhost",)), 0, evaluator=True)


def test_resolve_with_slurm_overrides_forces_tcp_on_the_first_node(tmp_path):
    _, cfg = resolve(
        None,
        ["run.base_port=31000"],
        run_dir=str(tmp_path),
        run_overrides={"transport": "tcp", "host": "127.0.0.1", "n_generators": 3},
    )
    assert cfg.wiring.request_addr == "tcp://127.0.0.1:31000" and cfg.wiring.weights_addr.endswith(":31003")
    assert cfg.wiring.control_addr == "tcp://127.0.0.1:31002" and cfg.wiring.n_generators == 3
    assert not cfg.run.allow_remote
    _, single = resolve(None, [], run_dir=str(tmp_path))  # the single-host path is unchanged
    assert single.wiring.request_addr.startswith("ipc://") and single.run.trainer_nodes == 0


# ---------------------------------------------------------------- real processes


def scalerl(*args):
    return [sys.executable, "-m", "scalerl.cli", *map(str, args)]


def free_base_port(n=5):
    """A port p with p..p+n-1 free on loopback (the four sockets and the rendezvous port)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + n > 65535:
            continue
        try:
            held = []
            for p in range(base, base + n):
                held.append(socket.socket())
                held[-1].bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
        finally:
            for s in held:
                s.close()
    raise RuntimeError("no free port range")


def slurm_env(procid, ntasks=2):
    return dict(
        os.environ,
        PYTHONUNBUFFERED="1",
        SLURM_PROCID=str(procid),
        SLURM_NTASKS=str(ntasks),
        SLURM_STEP_NUM_TASKS=str(ntasks),  # srun sets it; a batch script has SLURM_NTASKS only
        SLURM_NODEID="0",
        SLURM_LOCALID=str(procid),
        SLURM_JOB_NODELIST="localhost",
        SLURM_JOB_ID="4242",
    )


def test_bad_slurm_environment_is_one_line_exit_2(tmp_path):
    r = subprocess.run(
        scalerl("train", "--run-dir", tmp_path / "run"),
        capture_output=True,
        text=True,
        env={**slurm_env(0), "SLURM_JOB_NODELIST": "node[1-"},
        timeout=60,
    )
    assert r.returncode == 2 and "node list 'node[1-'" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def run_step(tasks, timeout=480):
    """One srun step: every task, an (argv, env) pair, started at once; each must exit 0. Returns their (stdout,
    stderr)."""
    procs = [
        subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for argv, env in tasks
    ]
    try:
        outs = [p.communicate(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    return outs


def run_tasks(tmp_path, ntasks, *extra):
    from scalerl.shared.models.tiny_model import ensure_tiny_model

    ensure_tiny_model()
    run = tmp_path / "run"
    args = scalerl(
        "train",
        "--run-dir",
        run,
        "--max-steps",
        4,
        "--set",
        "eval.every=2",
        "--set",
        "eval.prompts=20",
        "--set",
        f"run.base_port={free_base_port(6)}",
        *extra,
    )
    outs = run_step([(args, slurm_env(i, ntasks)) for i in range(ntasks)])
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in records if x["kind"] == "train"] == [1, 2, 3, 4]
    assert [x["step"] for x in records if x["kind"] == "eval"] == [0, 2, 4]
    return run, outs, records


def test_two_tasks_on_one_host_train_over_tcp(tmp_path):
    run, outs, _ = run_tasks(tmp_path, 2)
    assert "trainer on tcp://localhost:" in outs[0][1]
    assert "generator gen-0 -> tcp://localhost:" in outs[1][1]
    resolved = (run / "config.toml").read_text()
    assert 'transport = "tcp"' in resolved and 'host = "localhost"' in resolved


def test_evaluator_runs_as_its_own_task(tmp_path):
    """eval.mode = "process": task 2 of 3 scores the held-out set, not the trainer inline."""
    run, outs, records = run_tasks(tmp_path, 3, "--set", "eval.mode='process'")
    assert "evaluator -> tcp://localhost:" in outs[2][1]
    assert "held-out pass rate" in (outs[0][1]) and "on the evaluator" in outs[0][1]
    assert {x["devices"] for x in records} == {3}  # the trainer, one generator, the evaluator


def test_a_resumed_slurm_step_keeps_the_runs_settings(tmp_path):
    """Under srun, `--resume --max-steps 6` alone continues the same run: eval.every=2 and the port come from
    RUN/settings.toml in every task (before, each task went back to the defaults: no evaluation at step 6, and the
    port of another run). A key the checkpoint restores is refused by every task, before anything starts."""
    run, _, _ = run_tasks(tmp_path, 2)
    run_dir = ["--run-dir", run, "--resume"]
    refused = [
        subprocess.run(
            scalerl("train", *run_dir, "--set", "trainer.optim.lr=0.5"),
            env=slurm_env(i),
            capture_output=True,
            text=True,
            timeout=120,
        )
        for i in range(2)
    ]
    for r in refused:
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert "trainer.optim.lr = 0.5 differs from the run's" in r.stderr
    outs = run_step([(scalerl("train", *run_dir, "--max-steps", 6), slurm_env(i)) for i in range(2)])
    assert "slurm task 0/2: resume changes trainer.max_steps 4 -> 6" in outs[0][1]
    assert "resume changes" not in outs[1][1]  # said once for the step
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in records if x["kind"] == "train"] == [1, 2, 3, 4, 5, 6]
    assert [x["step"] for x in records if x["kind"] == "eval"] == [0, 2, 4, 6]
    settings = (run / "settings.toml").read_text()
    assert "max_steps = 6" in settings and "every = 2" in settings


# ---------------------------------------------------------------- a stop before the task's role starts


def test_sigterm_at_once_ends_a_slurm_task_in_one_line(tmp_path):
    # scancel or a preemption in the task's first moments: it died without a word (exit 143, empty stderr).
    import signal
    import time

    run = tmp_path / "run"
    proc = subprocess.Popen(scalerl("train", "--run-dir", run), env=slurm_env(1), stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while proc.poll() is None and not catches(proc.pid, signal.SIGTERM) and time.time() < deadline:
        time.sleep(0.002)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err[-2000:]
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("scalerl train: slurm task") and "stopped by SIGTERM before the run started" in err, err


@pytest.mark.parametrize("procid, sig", [(0, "SIGTERM"), (1, "SIGINT")])
def test_stop_while_a_slurm_task_prepares_is_one_line(tmp_path, procid, sig):
    # The trainer task (0) after writing the run dir, or a generator task (1), held in the tiny model's build lock (an
    # empty model cache): a stop there was a silent exit 143 (the build's SystemExit) or a KeyboardInterrupt traceback.
    import fcntl
    import signal
    import time

    from scalerl.shared.models.tiny_model import _cache_entry
    from scalerl.shared.tasks.catalog import TaskConfig

    signum = signal.Signals[sig]
    cache, run = tmp_path / "cache", tmp_path / "run"
    model = _cache_entry(cache, TaskConfig(), True, None)[0]
    cache.mkdir()
    with open(cache / f"{model.name}.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        proc = subprocess.Popen(
            scalerl("train", "--run-dir", run, "--set", f"run.base_port={free_base_port(6)}"),
            env={**slurm_env(procid), "SCALERL_CACHE": str(cache)},
            stderr=subprocess.PIPE,
            text=True,
        )
        # Both roles say so before they wait on the build lock (the trainer's after writing the run dir).
        said = [proc.stderr.readline()]
        while said[-1] and "preparing the built-in tiny model" not in said[-1]:
            said.append(proc.stderr.readline())
        time.sleep(0.5)  # into the wait on the build lock
        proc.send_signal(signum)
        _, rest = proc.communicate(timeout=60)
    err = "".join(said) + rest
    assert proc.returncode == 128 + signum, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert (
        last == f"scalerl train: slurm task {procid}/2: stopped by {sig} before the run started: no process was started"
    ), err
    assert "Traceback" not in err, err
    assert (run / "config.toml").exists() == (procid == 0)  # the step's run dir is kept for the other tasks


def test_a_slurm_task_puts_back_the_handlers_it_found(tmp_path, capsys):
    # SIGINT went back to SIG_DFL, not Python's default_int_handler: a Ctrl-C before the role took it over killed the
    # task without a word instead of "scalerl: interrupted".
    import signal

    from scalerl.cli.slurm_task import run_task

    before = [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)]
    assert run_task(None, (), str(tmp_path / "run"), False, None, None, env=slurm_env(0), dry_run=True) == 0
    assert [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)] == before
    assert "srun step: 2 task(s)" in capsys.readouterr().out
