"""`scalerl train` as a user runs it: the whole pipeline in real processes, and its config handling."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import tomllib

import pytest

from scalerl.shared.eval_config import EvalConfig
from scalerl.shared.models.tiny_model import ensure_tiny_model
from tests.conftest import catches, descendants


@pytest.fixture(scope="module")
def tiny_model():
    """The cached warm model (about 6 minutes to build the first time): only tests that run the pipeline ask."""
    return ensure_tiny_model()


def scalerl(*args):
    return [sys.executable, "-m", "scalerl.cli", *map(str, args)]


def test_train_runs_end_to_end_and_reports_a_fit(tmp_path, tiny_model):
    run = tmp_path / "run"
    r = subprocess.run(
        scalerl(
            "train",
            "--run-dir",
            run,
            "--max-steps",
            12,
            "--set",
            "eval.every=2",
            "--set",
            "eval.prompts=50",
        ),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in records if x["kind"] == "train"] == list(range(1, 13))
    assert [x["step"] for x in records if x["kind"] == "eval"] == [0, 2, 4, 6, 8, 10, 12]
    assert "held-out pass rate" in r.stdout and "scalerl plot" in r.stdout
    resolved = (run / "config.toml").read_text()
    assert "max_steps = 12" in resolved and "[generator]" in resolved
    assert (run / "checkpoints" / "latest").exists() and (run / "logs" / "gen-0.log").exists()


def test_sigterm_checkpoints_and_leaves_no_orphans(tmp_path, tiny_model):
    run = tmp_path / "run"
    proc = subprocess.Popen(
        scalerl("train", "--run-dir", run, "--max-steps", 5000),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 300
    metrics = run / "metrics.jsonl"
    while time.time() < deadline and (not metrics.exists() or '"train"' not in metrics.read_text()):
        time.sleep(0.3)
    kids = descendants(proc.pid)
    assert len(kids) >= 2  # the trainer and the generator
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    time.sleep(0.5)
    alive = [k for k in kids if os.path.exists(f"/proc/{k}") and "zombie" not in open(f"/proc/{k}/status").read()]
    assert alive == []
    assert (run / "checkpoints" / "latest").exists()
    # and the run continues where it stopped
    last = max(json.loads(x)["step"] for x in metrics.read_text().splitlines())
    r = subprocess.run(
        scalerl("train", "--run-dir", run, "--resume", "--max-steps", last + 2),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    steps = [json.loads(x)["step"] for x in metrics.read_text().splitlines() if '"train"' in x]
    assert steps == list(range(1, last + 3))


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--set", "trainer.nope=1"], "unknown config key 'trainer.nope'"),
        (["--set", "trainer.optim.lr=fast"], "'trainer.optim.lr' must be a number"),
        (["--set", "bogus.x=1"], "unknown config section [bogus]"),
        (["--set", "trainer.run_dir=x"], "set by scalerl train"),
    ],
)
def test_bad_config_is_one_line_exit_2(tmp_path, args, needle):
    r = subprocess.run(scalerl("config", "show", *args), capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and needle in r.stderr and r.stdout == ""
    assert len(r.stderr.strip().splitlines()) == 1


def test_config_file_unknown_section(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[trainer]\nmax_steps = 3\n[tranier]\nx = 1\n")
    r = subprocess.run(
        scalerl("train", "--config", cfg, "--run-dir", tmp_path / "r"), capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 2 and "unknown config section [tranier]" in r.stderr


def test_repo_scalerl_toml_is_valid():
    from pathlib import Path

    repo_toml = Path(__file__).resolve().parents[2] / "scalerl.toml"
    r = subprocess.run(scalerl("config", "show", "--config", repo_toml), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    # The commented file documents the defaults: it must resolve to exactly what no file gives (the comments that
    # say what set each value differ: "config file" against "default").
    bare = subprocess.run(scalerl("config", "show"), capture_output=True, text=True, timeout=60)
    assert tomllib.loads(r.stdout) == tomllib.loads(bare.stdout)
    assert "# config file" in r.stdout and "# config file" not in bare.stdout
    # [eval] is documented there too: the file's values are what the section and the built-in model's layer give.
    assert tomllib.loads(r.stdout)["eval"] == tomllib.loads(bare.stdout)["eval"]
    eval_table = r.stdout.split("\n[eval]\n", 1)[1].split("\n\n", 1)[0]
    for key in ("every", "prompts", "k", "temperature"):
        assert any(line.startswith(f"{key} = ") and line.endswith("# config file") for line in eval_table.splitlines())
    assert tomllib.loads(repo_toml.read_text())["eval"].keys() <= {f.name for f in dataclasses.fields(EvalConfig)}


def test_config_show_names_the_source_of_each_value(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[trainer]\nmax_steps = 7\n")
    r = subprocess.run(
        scalerl("config", "show", "--config", cfg, "--set", "eval.k=3"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    source = {
        line.split(" = ")[0]: line.rsplit("# ", 1)[1]
        for line in r.stdout.splitlines()
        if " = " in line and "# " in line
    }
    assert tomllib.loads(r.stdout)["trainer"]["max_steps"] == 7  # still valid TOML
    assert source["max_steps"] == "config file" and source["k"] == "--set"
    assert source["lr"] == "default (built-in model)" and source["weight_decay"] == "default"
    assert source["request_addr"] == "set by scalerl train"


def test_a_user_model_gets_the_paper_values_and_must_set_lr_and_lengths(tmp_path):
    model = ["--set", f"run.model={tmp_path}"]
    r = subprocess.run(scalerl("config", "show", *model), capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stdout == "" and len(r.stderr.strip().splitlines()) == 1
    assert "'trainer.optim.lr' must be set for run.model" in r.stderr
    lr = [*model, "--set", "trainer.optim.lr=5e-7"]
    r = subprocess.run(scalerl("config", "show", *lr), capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "'trainer.max_new_tokens' must be set" in r.stderr
    lengths = [*lr, "--set", "trainer.max_new_tokens=4096"]
    r = subprocess.run(scalerl("config", "show", *lengths), capture_output=True, text=True, timeout=60)
    # The default slot (2048 tokens) cannot hold a 4096-token completion: the other length is the user's to set too.
    assert r.returncode == 2 and "generator.max_seq_len = 2048 leaves no room for a prompt" in r.stderr
    r = subprocess.run(
        scalerl("config", "show", *lengths, "--set", "generator.max_seq_len=8192"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    trainer = tomllib.loads(r.stdout)["trainer"]
    assert (trainer["max_off_policy"], trainer["optim"]["eps"], trainer["optim"]["lr"]) == (8, 1e-15, 5e-7)
    assert trainer["param_dtype"] == "auto"  # bf16 on GPU
    assert "max_off_policy = 8" in r.stdout and "# default (paper)" in r.stdout


def test_dead_generator_is_restarted_and_its_work_reissued(tmp_path, tiny_model):
    run = tmp_path / "run"
    proc = subprocess.Popen(
        scalerl(
            "train",
            "--run-dir",
            run,
            "--max-steps",
            25,
            "--set",
            "run.restart_generators=true",
            "--set",
            "eval.every=25",
            "--set",
            "eval.prompts=20",
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics = run / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and (not metrics.exists() or metrics.read_text().count('"train"') < 5):
        time.sleep(0.3)
    gens = [k for k in descendants(proc.pid) if "\0generator\0" in open(f"/proc/{k}/cmdline").read()]
    assert gens
    os.kill(gens[0], signal.SIGKILL)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-2000:]
    assert "restarting it" in err
    steps = [json.loads(x)["step"] for x in metrics.read_text().splitlines() if '"train"' in x]
    assert steps == list(range(1, 26))
    assert "re-issuing" in (run / "logs" / "trainer.log").read_text()


def stop_and_wait(proc, sig):
    kids = descendants(proc.pid)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    alive = [k for k in kids if os.path.exists(f"/proc/{k}") and "zombie" not in open(f"/proc/{k}/status").read()]
    return err, alive


def test_sigterm_at_once_stops_before_start_in_one_line(tmp_path):
    # SIGTERM as soon as scalerl train can catch it: before this it died without a word (exit 143, empty stderr) and
    # left a run dir with no status.json, which scalerl status called failed.
    run = tmp_path / "run"
    proc = subprocess.Popen(scalerl("train", "--run-dir", run, "--max-steps", 2), stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while proc.poll() is None and not catches(proc.pid, signal.SIGTERM) and time.time() < deadline:
        time.sleep(0.002)
    err, alive = stop_and_wait(proc, signal.SIGTERM)
    assert proc.returncode == 143, err[-2000:]
    assert len(err.strip().splitlines()) == 1 and "scalerl train: stopped by SIGTERM before the run started" in err
    assert not run.exists() and alive == []


@pytest.mark.parametrize("sig, reuse", [(signal.SIGTERM, False), (signal.SIGINT, True)])
def test_stop_after_the_run_dir_is_written_but_before_start(tmp_path, sig, reuse):
    # The start is held in the tiny model's build lock (an empty model cache), after config.toml is written: the stop
    # removes the run dir it created, or records the stop in a reused dir's status.json, as a later stop would be.
    import fcntl

    from scalerl.shared.models.tiny_model import _cache_entry
    from scalerl.shared.tasks.catalog import TaskConfig

    cache, run = tmp_path / "cache", tmp_path / "run"
    if reuse:
        run.mkdir()
    model = _cache_entry(cache, TaskConfig(), True, None)[0]
    cache.mkdir()
    with open(cache / f"{model.name}.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        proc = subprocess.Popen(
            scalerl("train", "--run-dir", run, "--max-steps", 2),
            stderr=subprocess.PIPE,
            text=True,
            env=dict(os.environ, SCALERL_CACHE=str(cache)),
        )
        deadline = time.time() + 60
        while proc.poll() is None and not (run / "config.toml").exists() and time.time() < deadline:
            time.sleep(0.01)
        time.sleep(0.3)  # into the wait on the build lock
        err, alive = stop_and_wait(proc, sig)
    assert proc.returncode == 128 + sig, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"scalerl train: stopped by {signal.Signals(sig).name} before the run started"), err
    assert "Traceback" not in err and alive == []
    if not reuse:
        assert not run.exists()
        return
    doc = json.loads((run / "status.json").read_text())
    assert doc["exit_code"] == 128 + sig and "before the run started" in doc["reason"]
    r = subprocess.run(scalerl("status", run), capture_output=True, text=True, timeout=60)
    # No checkpoint: as after a later stop before the first one, status says failed and why (README exit codes).
    assert r.returncode == 3 and "before the run started" in r.stdout, r.stdout


@pytest.mark.parametrize("args", [["--dry-run"], ["--set", "trainer.task.verifier='bogus'"]])
def test_a_start_that_starts_nothing_puts_the_signal_handlers_back(tmp_path, args):
    # --dry-run, a bad config: the handlers raising StoppedBeforeStart stayed installed, and a Ctrl-C in whatever the
    # process did next (a caller of main(), a test) raised it where no one catches it.
    from scalerl.cli.main import main

    before = [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)]
    with pytest.raises(SystemExit):
        main(["train", "--run-dir", str(tmp_path / "run"), *args])
    assert [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)] == before


def test_a_stop_that_reaches_main_is_one_line_and_128_plus_signal(monkeypatch, capsys):
    # StoppedBeforeStart is a BaseException: one that got past every BeforeStart was a traceback and exit 1.
    from scalerl.cli import main as main_module
    from scalerl.cli.launcher import StoppedBeforeStart

    def stopped(**_kw):
        raise StoppedBeforeStart(signal.SIGTERM)

    monkeypatch.setattr(main_module.cli, "main", stopped)
    with pytest.raises(SystemExit) as e:
        main_module.main(["train"])
    err = capsys.readouterr().err
    assert e.value.code == 143 and err == "scalerl: stopped by SIGTERM before the run started\n"


def _stopped_cfg(run):
    from types import SimpleNamespace

    return SimpleNamespace(run=SimpleNamespace(run_dir=str(run), transport="tcp"), trainer=SimpleNamespace(max_steps=2))


def test_a_stop_before_the_lock_leaves_another_starts_lock_alone(tmp_path, capsys):
    # Two starts on one new run dir: B, stopped before it took the lock, removed the dir A had just locked.
    from scalerl.cli.train_cmd import _stopped_before_start

    run = tmp_path / "run"
    hold = "import sys, time; from scalerl.shared.ownership import RunLock; RunLock.acquire(sys.argv[1], 'A'); "
    hold += "print('locked', flush=True); time.sleep(120)"
    a = subprocess.Popen([sys.executable, "-c", hold, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert a.stdout.readline() == "locked\n"
        with pytest.raises(SystemExit) as e:
            _stopped_before_start(_stopped_cfg(run), existed=False, lock=None, signum=signal.SIGTERM)
        assert e.value.code == 143 and (run / ".lock").is_file()
        assert f"{run} kept" in capsys.readouterr().err
    finally:
        a.kill()
        a.wait()


def test_a_stop_whose_status_cannot_be_written_still_exits_128_plus_signal(tmp_path, monkeypatch, capsys):
    # A full or read-only disk under status.json turned the stop into exit 2 (RunDirError is bad input).
    from scalerl.cli import status_cmd
    from scalerl.cli.train_cmd import _stopped_before_start
    from scalerl.shared.ownership import RunLock
    from scalerl.shared.run_dir import RunDirError

    def full(run_dir, *_args):
        raise RunDirError(f"no space left on device: {run_dir}/status.json")

    monkeypatch.setattr(status_cmd, "write_status", full)
    run = tmp_path / "run"
    lock = RunLock.acquire(run, "scalerl train")
    try:
        with pytest.raises(SystemExit) as e:
            _stopped_before_start(_stopped_cfg(run), existed=True, lock=lock, signum=signal.SIGINT)
    finally:
        lock.release()
    err = capsys.readouterr().err
    assert e.value.code == 130 and len(err.strip().splitlines()) == 1, err
    assert "stopped by SIGINT before the run started" in err and "status.json could not be written: no space" in err
