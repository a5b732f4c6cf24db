"""`scalerl config show` shows the run dir the config file or --set gave, with its source; with none, a placeholder
labelled as one (scalerl train picks the run dir: --run-dir, else runs/<date-time>)."""

from __future__ import annotations

import os
import subprocess
import sys


def show(*args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    r = subprocess.run(
        [sys.executable, "-m", "scalerl.cli", "config", "show", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    return r.stdout


def run_dir_line(text: str) -> str:
    return next(line for line in text.splitlines() if line.startswith("run_dir ="))  # [run] comes first


def test_a_run_dir_from_set_is_shown_as_given():
    out = show("--set", "run.run_dir=myrun")
    assert run_dir_line(out) == 'run_dir = "myrun"                       # --set'
    assert "<run_dir>" not in out


def test_a_run_dir_from_the_file_is_shown_as_given(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('[run]\nrun_dir = "fromfile"\n')
    assert run_dir_line(show("--config", str(config))) == 'run_dir = "fromfile"                    # config file'


def test_no_run_dir_is_a_placeholder_labelled_as_one():
    line = run_dir_line(show())
    assert line.startswith('run_dir = "<run_dir>"')
    assert line.endswith("# placeholder: scalerl train's --run-dir, else runs/<date-time>")
    assert "--run-dir" not in line.split("#")[0]


def test_unset_keys_are_shown_as_comments_and_the_output_still_parses():
    import tomllib

    out = show()
    # TOML has no null: a key whose value is "unset" was left out, so "every key" missed the thinking budgets.
    for line in ("# thinking_budget = (unset)", "# pack = (unset)", "# verifier = (unset)"):
        assert any(x.startswith(line) and x.endswith("# default") for x in out.splitlines()), line
    assert tomllib.loads(out)["generator"].get("thinking_budget") is None
    set_one = show("--set", "generator.thinking_budget=[4, 6]", "--set", "trainer.max_new_tokens=100")
    # Set, the generator's range is a value, and eval's budget takes its max: neither is unset any more.
    assert "thinking_budget = [" in set_one and "# thinking_budget = (unset)" not in set_one


def test_a_multi_task_config_shows_its_tasks_and_not_the_single_task_table():
    import tomllib
    from pathlib import Path

    out = show("--config", str(Path(__file__).resolve().parents[2] / "examples" / "multitask.toml"))
    trainer = tomllib.loads(out)["trainer"]
    assert [t["label"] for t in trainer["tasks"]] == ["gsm8k", "code"]
    # A file with both tables is refused (docs/tasks.md): the defaults of [trainer.task] are no setting of this run.
    assert "task" not in trainer and "[trainer.task]" not in out
    assert "# trainer.tasks: config file\n[[trainer.tasks]]" in out
