"""Run-side commands (status, config, export, sweep, eval) on damaged inputs, through the real CLI (UAT findings)."""

import json

import pytest

from tests.conftest import run_cli
from tests.unit.test_live_forecast_pure import write_run


def _append(path, data: bytes):
    with open(path, "ab") as f:
        f.write(data)


def test_status_answers_for_a_run_dir_with_damaged_files(tmp_path):
    # A torn or hand-edited line, a non-UTF-8 byte or a damaged end record must not turn `scalerl status` into an
    # internal error (exit 1): slurm scripts branch on its exit code.
    damages = {
        "state": lambda run: (run / "status.json").write_text('{"state": "weird", "reason": "x"}'),
        "state_list": lambda run: (run / "status.json").write_text('{"state": ["x"]}'),
        "number_line": lambda run: _append(run / "metrics.jsonl", b"5\n"),
        "no_step": lambda run: _append(run / "metrics.jsonl", b'{"kind": "train"}\n'),
        "eval_no_rate": lambda run: _append(run / "metrics.jsonl", b'{"kind": "eval", "step": 300}\n'),
        "bad_clock": lambda run: _append(run / "metrics.jsonl", b'{"kind": "train", "step": 9, "time_s": "a"}\n'),
        "bytes": lambda run: _append(run / "metrics.jsonl", b"\xff\xfe\n"),
        "forecast": lambda run: (run / "forecast.jsonl").write_text("[1, 2]\n"),
    }
    for name, damage in damages.items():
        run = write_run(tmp_path / name)
        damage(run)
        for args in ((), ("--json",)):
            r = run_cli("status", run, *args)
            assert (r.returncode, r.stderr) == (0, ""), (name, args, r.stderr)
        doc = json.loads(r.stdout)
        assert (doc["state"], doc["step"]) == ("finished", 290), name

    unreadable = write_run(tmp_path / "unreadable")
    (unreadable / "metrics.jsonl").unlink()
    (unreadable / "metrics.jsonl").mkdir()
    r = run_cli("status", unreadable)
    assert r.returncode == 2 and r.stdout == "" and "metrics.jsonl" in r.stderr and len(r.stderr.splitlines()) == 1

    (tmp_path / "file").write_text("")
    r = run_cli("status", tmp_path / "file")
    assert r.returncode == 2 and "not a directory" in r.stderr and "no such" not in r.stderr


def refused_by_config_show(expr: str, needle: str) -> None:
    r = run_cli("config", "show", "--set", expr)
    assert r.returncode == 2 and r.stdout == "" and needle in r.stderr, (expr, r.stderr)
    assert len(r.stderr.splitlines()) == 1 and "internal error" not in r.stderr


def test_set_refuses_nan_and_a_bare_section(tmp_path):
    # TOML reads `nan` as a float, and `x < 0` is false for it: every bound check let it through (run.budget,
    # trainer.optim.grad_clip, the timeouts, ...). `--set trainer=5` replaced the whole [trainer] table.
    for expr, needle in [
        ("run.budget=nan", "'run.budget'"),
        ("trainer.optim.grad_clip=nan", "'trainer.optim.grad_clip'"),
        ("trainer.peer_timeout_s=nan", "'trainer.peer_timeout_s'"),
        ("trainer=5", "[trainer] in --set must be a table, not 5"),
    ]:
        refused_by_config_show(expr, needle)
    r = run_cli("trainer", "--set", f"trainer.run_dir={tmp_path / 'run'}", "--set", "trainer=3")
    assert r.returncode == 2 and "[trainer] in --set must be a table" in r.stderr and not (tmp_path / "run").exists()


def test_settings_outside_their_range_are_refused(tmp_path):
    # A negative grad_clip made clip_grad_norm_ flip the gradient's sign (ascent); lr = inf, a budget of inf and
    # negative trainer timeouts were taken as given.
    for expr, needle in [
        ("trainer.optim.grad_clip=-1", "trainer.optim: grad_clip must be > 0"),
        ("trainer.optim.lr=inf", "trainer.optim: lr must be positive and finite"),
        ("trainer.peer_timeout_s=-1", "trainer: peer_timeout_s must be a finite number of seconds > 0, not -1"),
        ("trainer.startup_timeout_s=0", "trainer: startup_timeout_s must be a finite number of seconds > 0, not 0"),
        ("run.budget=inf", "run: budget must be finite and >= 0"),
        ("trainer.optim.eps=inf", "trainer.optim: eps and weight_decay must be finite and >= 0"),
        ("trainer.optim.weight_decay=inf", "trainer.optim: eps and weight_decay must be finite and >= 0"),
        (
            "trainer.debug_startup_sleep_s=-1",
            "trainer: debug_startup_sleep_s must be a finite number of seconds (0 = off)",
        ),
        (
            "generator.debug_startup_sleep_s=-1",
            "generator: debug_startup_sleep_s must be a finite number of seconds (0 = off)",
        ),
    ]:
        refused_by_config_show(expr, needle)
    r = run_cli("trainer", "--set", f"trainer.run_dir={tmp_path / 'run'}", "--set", "trainer.optim.grad_clip=-1")
    assert r.returncode == 2 and "grad_clip must be > 0" in r.stderr and len(r.stderr.splitlines()) == 1
    assert run_cli("config", "show", "--set", "trainer.optim.grad_clip=inf").returncode == 0


def test_a_section_given_a_plain_value_is_refused(tmp_path):
    (tmp_path / "bad.toml").write_text("trainer = 5\n")
    for args in (("config", "show", "--config", tmp_path / "bad.toml"), ("trainer", "--config", tmp_path / "bad.toml")):
        r = run_cli(*args)
        assert r.returncode == 2 and r.stderr == "scalerl: error: [trainer] must be a table, not 5\n", (args, r.stderr)
    for args in (("config", "show", "--set", "run=5"), ("generator", "--set", "generator=3")):
        r = run_cli(*args)
        assert r.returncode == 2 and "in --set must be a table" in r.stderr and "internal" not in r.stderr, r.stderr


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    """A real two-step `scalerl train` run dir (the built-in model, cached after its first build)."""
    run = tmp_path_factory.mktemp("short") / "run"
    r = run_cli("train", "--max-steps", "2", "--run-dir", run, "--set", "eval.every=1", timeout=900)
    assert r.returncode == 0, r.stderr
    return run


def test_export_into_the_current_directory_or_onto_a_file(short_run, tmp_path):
    # OUT_DIR "." (an empty directory, as the help allows) was an internal error: Path(".") has no name to put the
    # temp sibling beside. An OUT_DIR that is a file was an internal error too (NotADirectoryError).
    (tmp_path / "file").write_text("")
    r = run_cli("export", short_run, "file", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr == (
        "scalerl: error: file: exists and is not a directory; export writes a new directory\n"
    )
    (tmp_path / "here").mkdir()
    r = run_cli("export", short_run, ".", cwd=tmp_path / "here")
    assert r.returncode == 0 and r.stdout == "" and "wrote . from" in r.stderr, r.stderr
    assert (tmp_path / "here" / "config.json").is_file() and (tmp_path / "here" / "model.safetensors").is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_export_of_damaged_checkpoints_is_one_line_exit_2(short_run, tmp_path):
    import shutil

    run = shutil.copytree(short_run, tmp_path / "run")
    (ckpt,) = (run / "checkpoints").glob("step-*")
    config = ckpt / "hf" / "config.json"
    config.write_text('{"model_type": "qwen2", "hidden_size": "x"}')
    r = run_cli("export", ckpt, tmp_path / "out")
    assert r.returncode == 2 and f"{config}: not a model config" in r.stderr and len(r.stderr.splitlines()) == 1
    config.write_text("{}")
    r = run_cli("export", ckpt, tmp_path / "out")
    assert r.returncode == 2 and f"{config}: not a model config" in r.stderr and len(r.stderr.splitlines()) == 1
    # No checkpoint that verifies: one line naming each and why, not a "skipping" line before it as well.
    (ckpt / "state.json").write_text("{")
    r = run_cli("export", run, tmp_path / "out")
    assert r.returncode == 2 and r.stdout == "" and len(r.stderr.splitlines()) == 1, r.stderr
    assert "no checkpoint that verifies" in r.stderr and "state.json: not valid JSON" in r.stderr
    assert not (tmp_path / "out").exists()


def test_sweep_grid_values_and_refusals(tmp_path):
    # A list value was split at its commas ('[0.9' refused); a grid over run.run_dir was accepted and ignored (each
    # variant runs in SWEEP/<v>/run); --max-minutes nan was saved in the plan and refused by every variant's train.
    r = run_cli("sweep", tmp_path / "lists", "--grid", "trainer.optim.betas=[0.9,0.99],[0.8,0.9]", "--emit-sbatch")
    assert r.returncode == 0, r.stderr
    plan = json.loads((tmp_path / "lists" / "sweep.json").read_text())
    assert [v["changes"]["trainer.optim.betas"] for v in plan["variants"]] == [[0.9, 0.99], [0.8, 0.9]]
    wandb = ["--set", "run.trackers=['wandb']"]  # run.wandb_project acts only with it
    r = run_cli("sweep", tmp_path / "quoted", "--grid", "run.wandb_project='a,b',c", *wandb, "--emit-sbatch")
    plan = json.loads((tmp_path / "quoted" / "sweep.json").read_text())
    assert r.returncode == 0 and [v["changes"]["run.wandb_project"] for v in plan["variants"]] == ["a,b", "c"]
    for args, needle in [
        (("--grid", "run.run_dir=a,b"), "--grid run.run_dir: the run dir is set per variant"),
        (("--grid", "trainer.max_steps=1,2", "--grid", "trainer.max_steps=3"), "--grid trainer.max_steps: given twice"),
        (("--leave-one-out", "--max-minutes", "nan"), "'run.max_minutes' must be a number, not nan"),
    ]:
        r = run_cli("sweep", tmp_path / "refused", *args, "--emit-sbatch")
        assert r.returncode == 2 and r.stdout == "" and needle in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr
        assert not (tmp_path / "refused").exists()


def test_a_refused_sweep_plan_leaves_nothing_behind(tmp_path):
    # A variant refused after the ones before it were written left their folders in SWEEP_DIR (and SWEEP_DIR itself)
    # with no sweep.json.
    r = run_cli("sweep", tmp_path / "new", "--grid", "trainer.max_steps=1,x", "--emit-sbatch")
    assert r.returncode == 2 and "variant max_steps=x" in r.stderr and not (tmp_path / "new").exists()
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "notes.txt").write_text("mine")
    r = run_cli("sweep", tmp_path / "old", "--grid", "trainer.max_steps=1,x", "--emit-sbatch")
    assert r.returncode == 2 and sorted(p.name for p in (tmp_path / "old").iterdir()) == ["notes.txt"]


def test_sweep_resume_refuses_a_damaged_sweep_dir(tmp_path):
    # A saved plan naming '../x', or a variant whose config.toml is gone, started `scalerl train` per variant (each
    # failing with exit 2, the sweep with 1, "rerun with --resume") and wrote outside the sweep dir.
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "sweep.json").write_text('{"variants": [{"name": "../x"}]}')
    r = run_cli("sweep", sweep, "--resume")
    assert r.returncode == 2 and r.stdout == "" and "variant name '../x' is not a folder" in r.stderr, r.stderr
    assert not (tmp_path / "x").exists()
    (sweep / "sweep.json").write_text('{"variants": [{"name": "a"}]}')
    for args in (("--resume",), ("--only", "a")):
        r = run_cli("sweep", sweep, *args)
        missing = sweep / "a" / "config.toml"
        assert r.returncode == 2 and r.stdout == "" and len(r.stderr.splitlines()) == 1
        assert r.stderr.startswith(f"scalerl: error: {missing}: missing (the sweep dir is damaged")
        assert not (sweep / "a").exists()


def test_a_data_file_for_a_built_in_task_is_refused(tmp_path):
    # The built-in tasks make their own items: `scalerl eval builtin --task addition --data F` scored addition items
    # (labelled "addition:F") after building a model for minutes, and train ran with trainer.task.path ignored.
    data = tmp_path / "d.jsonl"
    data.write_text("".join(f'{{"prompt": "{i}+1=", "answer": "{i + 1}"}}\n' for i in range(20)))
    r = run_cli("eval", "builtin", "--task", "addition", "--data", data)
    assert r.returncode == 2 and r.stdout == "" and len(r.stderr.splitlines()) == 1, r.stderr
    assert f"task path = '{data}' acts only with the jsonl task, not 'addition'" in r.stderr
    r = run_cli("train", "--run-dir", tmp_path / "run", "--set", f"trainer.task.path={data}", "--max-steps", "1")
    assert r.returncode == 2 and "acts only with the jsonl task" in r.stderr
    assert not (tmp_path / "run" / "config.toml").exists() and not (tmp_path / "run" / "logs").exists()
    r = run_cli("eval", "builtin", "--set", "trainer.task.name='addition_steps'", "--set", "trainer.task.delimiter=';'")
    assert r.returncode == 2 and "task delimiter = ';' acts only with the jsonl task" in r.stderr


def test_eval_output_that_is_a_directory_is_refused_before_scoring(tmp_path):
    # It was refused only after the model was scored ("cannot write DIR: Is a directory"), the result lost.
    r = run_cli("eval", "builtin", "--prompts", "2", "--k", "1", "--output", tmp_path)
    assert (
        r.returncode == 2
        and r.stdout == ""
        and r.stderr == f"scalerl: error: --output {tmp_path}: is a directory; give a file name\n"
    )


def test_eval_prompts_beyond_the_held_out_split_is_refused(tmp_path):
    # --prompts 1000 on the built-in task (500 held out) scored the 500 and exited 0.
    r = run_cli("eval", "builtin", "--prompts", "501", "--k", "1")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == "scalerl: error: --prompts 501: the task holds out 500 (trainer.task.n_val)\n"


def test_status_of_a_run_stopped_before_its_first_checkpoint(tmp_path):
    # `scalerl train --max-minutes 0.01` (or SIGTERM) before the first step ends "preempted" with no checkpoint:
    # status said 4, "continue with scalerl train --resume", which refuses there (exit 2: no checkpoint).
    run = write_run(tmp_path / "run", max_steps=1000)
    (run / "status.json").write_text(json.dumps({"state": "preempted", "exit_code": 0, "reason": "--max-minutes 0.01"}))
    r = run_cli("status", run, "--json")
    doc = json.loads(r.stdout)
    assert (r.returncode, doc["state"], doc["checkpoint"]) == (3, "failed", False)
    assert doc["reason"].startswith("--max-minutes 0.01, before any checkpoint")
    assert "--resume-from-scratch" in doc["reason"]
    (run / "checkpoints" / "step-000100").mkdir(parents=True)  # a name alone is nothing --resume would take
    r = run_cli("status", run, "--json")
    assert (r.returncode, json.loads(r.stdout)["state"]) == (3, "failed")
    from tests.unit.test_status_checkpoint import real_checkpoint

    real_checkpoint(run / "checkpoints", 90)
    r = run_cli("status", run, "--json")
    assert (r.returncode, json.loads(r.stdout)["state"]) == (4, "preempted")


def test_a_config_file_that_is_a_directory_or_not_text_is_one_line(tmp_path):
    (tmp_path / "bin.toml").write_bytes(b"\xff\n")
    cases = [(tmp_path, "cannot read the config file (Is a directory)"), (tmp_path / "bin.toml", "invalid TOML")]
    for path, needle in cases:
        for args in (("config", "show"), ("trainer",), ("eval", "builtin")):
            r = run_cli(*args, "--config", path)
            assert r.returncode == 2 and r.stdout == "" and r.stderr.startswith(f"scalerl: error: {path}: "), r.stderr
            assert needle in r.stderr and len(r.stderr.splitlines()) == 1


def test_dry_run_refuses_a_resume_the_run_would_refuse(tmp_path):
    # `train --dry-run --resume --run-dir NOPE` printed a plan and exited 0; the run itself exits 2.
    r = run_cli("train", "--dry-run", "--resume", "--run-dir", tmp_path / "nope")
    assert r.returncode == 2 and r.stdout == "" and "the run directory does not exist: nothing to --resume" in r.stderr
    (tmp_path / "empty").mkdir()
    r = run_cli("train", "--dry-run", "--json", "--resume", "--run-dir", tmp_path / "empty")
    assert r.returncode == 2 and r.stdout == "" and "no checkpoint to resume from" in r.stderr
    r = run_cli("train", "--dry-run", "--json", "--resume-from-scratch", "--run-dir", tmp_path / "nope")
    assert r.returncode == 0 and json.loads(r.stdout) and not (tmp_path / "nope").exists()


def test_config_show_of_multi_task_runs_reads_back_as_trainer_tasks():
    # The [[trainer.tasks]] tables were printed as [[tasks]] (a top-level table) inside [trainer]'s keys.
    import tomllib

    for tasks in ('[{name="addition"},{name="addition_steps"}]', '[{name="addition"}]'):
        r = run_cli("config", "show", "--set", f"trainer.tasks={tasks}")
        assert r.returncode == 0, r.stderr
        doc = tomllib.loads(r.stdout)
        assert sorted(doc) == ["curvefit", "eval", "generator", "run", "trainer", "wiring"]
        assert [t["name"] for t in doc["trainer"]["tasks"]] == ["addition", "addition_steps"][: tasks.count("name")]
        # A multi-task run reads [[trainer.tasks]] only (a file with both tables is refused): no [trainer.task].
        assert doc["trainer"]["max_steps"] == 1000 and "task" not in doc["trainer"]


def test_sweep_sbatch_options_are_checked(tmp_path):
    # An empty one was an internal error after sweep.json was written; one with a line break ended the #SBATCH
    # block (sbatch reads no directive after a command line, so the later options were dropped); without
    # --emit-sbatch they were ignored and the sweep ran locally.
    grid = ("--grid", "trainer.optim.lr=1e-5,2e-5")
    for opt in ("", "--time=1\necho hi", "time=1"):
        r = run_cli("sweep", tmp_path / "s", *grid, "--emit-sbatch", "--sbatch-option", opt)
        assert r.returncode == 2 and r.stdout == "" and "expected one sbatch option" in r.stderr, r.stderr
        assert len(r.stderr.splitlines()) == 1 and not (tmp_path / "s").exists()
    r = run_cli("sweep", tmp_path / "s", *grid, "--sbatch-option", "--time=1")
    assert r.returncode == 2 and "--sbatch-option needs --emit-sbatch" in r.stderr and not (tmp_path / "s").exists()


def test_sweep_continues_a_variant_whose_metrics_hold_a_damaged_line(tmp_path):
    # With --max-minutes the sweep reads a variant's clock from its metrics.jsonl; a line that is not an object (or a
    # clock that is a string) was an internal error. Here the variant's minutes are spent, so nothing trains.
    sweep = tmp_path / "s"
    r = run_cli("sweep", sweep, "--grid", "trainer.optim.lr=1e-5,2e-5", "--max-minutes", "1", "--emit-sbatch")
    assert r.returncode == 0, r.stderr
    run = sweep / "lr=1e-05" / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(
        '5\n{"kind": "train", "step": 1, "time_s": "x"}\n{"kind": "train", "step": 2, "time_s": 600}\n'
    )
    r = run_cli("sweep", sweep, "--only", "lr=1e-05")
    assert r.returncode == 0 and "internal error" not in r.stderr, r.stderr
    assert json.loads((sweep / "lr=1e-05" / "done.json").read_text())


def test_eval_of_a_multi_task_config(tmp_path):
    # It scored [trainer.task] (the default addition) and ignored [[trainer.tasks]]; a lone entry was ignored too.
    two = 'trainer.tasks=[{name="addition"},{name="addition_steps"}]'
    r = run_cli("eval", "builtin", "--prompts", "2", "--k", "1", "--set", two)
    assert r.returncode == 2 and r.stdout == "" and len(r.stderr.splitlines()) == 1
    assert "scalerl eval scores one task, and the config has 2 [[trainer.tasks]] (addition, addition_steps)" in r.stderr
    # A lone entry is scored. A jsonl task, because it runs on the addition model the suite has cached: a lone
    # addition_steps entry built its own warm model (minutes) on a fresh machine.
    data = tmp_path / "sums.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"{i}+1=", "answer": i + 1}) + "\n" for i in range(40)))
    lone = f'trainer.tasks=[{{name="jsonl", path="{data}"}}]'
    r = run_cli("eval", "builtin", "--prompts", "2", "--k", "1", "--json", "--set", lone)
    assert r.returncode == 0 and json.loads(r.stdout)["task"] == f"jsonl:{data}", r.stderr
