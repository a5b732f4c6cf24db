"""The [eval] section (shared/eval_config.py): held-out evaluation, read by the trainer and the evaluator process.

Its defaults are what the former [trainer] eval_* keys resolved to; the former keys are refused with one line that
names the new place; one --set reaches both processes; `scalerl config show` names the source of each value.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
import tomli_w
from click.testing import CliRunner

from scalerl.cli.defaults import section_defaults
from scalerl.cli.run_config import RunConfig, render_with_sources, resolve
from scalerl.generator_service.config import GeneratorConfig
from scalerl.shared.config import ConfigError, load_sections
from scalerl.shared.eval_config import MOVED_KEYS, EvalConfig
from scalerl.shared.tasks.catalog import PAPER_INTERRUPTION_TEXT
from scalerl.shared.wiring import RunWiring
from scalerl.trainer_service.config import TrainerConfig

EVAL_KEYS = [f.name for f in dataclasses.fields(EvalConfig)]
USER_MODEL = ["run.model='/models/m'", "trainer.max_new_tokens=64", "trainer.optim.lr=3e-7"]


def config(tmp_path, *sets: str, path=None, eval_mode: str = "process") -> tuple[dict, RunConfig]:
    return resolve(path, list(sets), run_dir=str(tmp_path / "run"), eval_mode=eval_mode)


def test_one_definition_and_no_eval_keys_left_in_trainer():
    assert not [f.name for f in dataclasses.fields(TrainerConfig) if f.name.startswith("eval")]
    assert EVAL_KEYS == [
        "every",
        "prompts",
        "k",
        "temperature",
        "thinking_budget",
        "answer_budget",
        "interruption_text",
        "think_end_text",
        "mode",
    ]
    assert RunConfig().eval == EvalConfig()


def test_defaults_are_what_the_trainer_keys_resolved_to(tmp_path):
    # The built-in model: its tuned layer (20, 200, 4); scalerl train evaluates in the evaluator process.
    resolved, cfg = config(tmp_path)
    paper_text = (PAPER_INTERRUPTION_TEXT, "</think>")
    assert cfg.eval == EvalConfig(
        every=20, prompts=200, k=4, temperature=1.0, interruption_text=paper_text[0], think_end_text=paper_text[1],
        mode="process",
    )  # fmt: skip
    assert resolved["eval"] == {
        "every": 20, "prompts": 200, "k": 4, "temperature": 1.0, "interruption_text": paper_text[0],
        "think_end_text": paper_text[1], "mode": "process",
    }  # fmt: skip
    assert "eval_every" not in resolved["trainer"]
    # srun's default is inline; a user's model gets the section's own defaults (10, 100, 4).
    assert config(tmp_path, eval_mode="inline")[1].eval.mode == "inline"
    user = config(tmp_path, *USER_MODEL)[1].eval
    assert (user.every, user.prompts, user.k, user.temperature, user.mode) == (10, 100, 4, 1.0, "process")


@pytest.mark.parametrize("text", ["[trainer]\nmax_steps = 5\n", "[trainer]\nmodel = '/models/m'\n"])
def test_a_bare_trainer_resolves_the_same_eval_defaults_as_train(tmp_path, text):
    """The model defaults of [eval] follow [trainer]'s model (the section has none of its own)."""
    path = tmp_path / "c.toml"
    path.write_text(text)
    classes = {"trainer": TrainerConfig, "eval": EvalConfig, "wiring": RunWiring}
    _, evaluation, _ = load_sections(path, classes, [], defaults=section_defaults)
    sets = ["run.model='/models/m'", "trainer.max_new_tokens=64", "trainer.optim.lr=3e-7"] if "model" in text else []
    under_train = config(tmp_path, *sets)[1].eval
    assert (evaluation.every, evaluation.prompts, evaluation.k) == (under_train.every, under_train.prompts, 4)
    # With --set trainer.model on the command line the same holds.
    if "model" not in text:
        _, evaluation, _ = load_sections(path, classes, ["trainer.model='/m'"], defaults=section_defaults)
        assert (evaluation.every, evaluation.prompts) == (10, 100)


@pytest.mark.parametrize("key", EVAL_KEYS)
def test_a_former_trainer_key_is_refused_with_its_new_place(tmp_path, key):
    line = f"'trainer.eval_{key}' moved to [eval] {key}"
    assert MOVED_KEYS[f"trainer.eval_{key}"] == f"[eval] {key}"
    value = {"mode": "'inline'", "temperature": "1.0"}.get(key, '"x"' if key.endswith("text") else "5")
    path = tmp_path / "old.toml"
    path.write_text(f"[trainer]\neval_{key} = {value}\n")
    for sets, file in (([], path), ([f"trainer.eval_{key}={value}"], None)):
        with pytest.raises(ConfigError) as e:
            config(tmp_path, *sets, path=file)
        assert str(e.value) == line
        # The single-service commands read the same file the same way.
        with pytest.raises(ConfigError) as e:
            load_sections(file, {"trainer": TrainerConfig, "eval": EvalConfig}, sets, defaults=section_defaults)
        assert str(e.value) == line


def test_the_refusal_is_one_line_and_exit_2():
    r = subprocess.run(
        [sys.executable, "-m", "scalerl.cli", "config", "show", "--set", "trainer.eval_every=5"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2
    assert r.stderr.strip() == "scalerl: error: 'trainer.eval_every' moved to [eval] every"


def test_eval_values_are_checked_under_their_new_names(tmp_path):
    with pytest.raises(ConfigError, match="eval: k must be >= 1"):
        config(tmp_path, "eval.k=0")
    with pytest.raises(ConfigError, match="did you mean 'eval.every'"):
        config(tmp_path, "eval.evry=3")
    with pytest.raises(ConfigError, match="'eval.mode' must be one of"):
        config(tmp_path, "eval.mode='elsewhere'")


def _run_config_toml(tmp_path, *sets: str):
    """RUN/config.toml as `scalerl train` writes it: the resolved tables, [eval] and [wiring] included."""
    resolved, cfg = config(tmp_path, *sets)
    path = tmp_path / "config.toml"
    path.write_text(tomli_w.dumps(resolved))
    return path, cfg


def test_set_eval_k_reaches_the_trainers_inline_evaluation(tmp_path, monkeypatch):
    path, cfg = _run_config_toml(tmp_path, "eval.k=8", "eval.mode='inline'")
    assert cfg.eval.k == 8
    import scalerl.trainer_service.service as service
    from scalerl.cli.trainer_cmd import trainer

    got = {}

    def fake_run_trainer(trainer_cfg, wiring, evaluation, **kw):
        got.update(trainer=trainer_cfg, evaluation=evaluation)
        return 0

    monkeypatch.setattr(service, "run_trainer", fake_run_trainer)
    r = CliRunner().invoke(trainer, ["--config", str(path)])
    assert r.exit_code == 0, r.output
    assert got["evaluation"] == cfg.eval and got["evaluation"].k == 8 and got["evaluation"].mode == "inline"
    # ... and the inline evaluation the trainer builds from it scores k = 8 samples per prompt.
    import scalerl.generator_service.heldout as heldout
    from scalerl.trainer_service.evaluation import InlineEvaluation

    built = {}

    def fake_init(self, model_dir, tokenizer, task, n_prompts, k, temperature, max_new_tokens, fp32_lm_head, **kw):
        built.update(n_prompts=n_prompts, k=k, temperature=temperature, max_new_tokens=max_new_tokens)

    monkeypatch.setattr(heldout.InlineScorer, "__init__", fake_init)
    InlineEvaluation(got["evaluation"], got["trainer"], "model", None, object())
    assert built == {"n_prompts": 200, "k": 8, "temperature": 1.0, "max_new_tokens": cfg.trainer.max_new_tokens}


def test_set_eval_k_reaches_the_evaluator_process(tmp_path, monkeypatch):
    path, cfg = _run_config_toml(tmp_path, "eval.k=8")
    import scalerl.generator_service.evaluator_service as evaluator_service
    from scalerl.cli.evaluator_cmd import evaluator

    got = {}

    def fake_run_evaluator(gen, wiring, trainer_cfg, evaluation):
        got.update(gen=gen, trainer=trainer_cfg, evaluation=evaluation)
        return 0

    monkeypatch.setattr(evaluator_service, "run_evaluator", fake_run_evaluator)
    r = CliRunner().invoke(evaluator, ["--config", str(path)])
    assert r.exit_code == 0, r.output
    assert got["evaluation"] == cfg.eval and got["evaluation"].k == 8 and got["evaluation"].mode == "process"
    assert isinstance(got["gen"], GeneratorConfig) and got["trainer"].task == cfg.trainer.task
    # --set on the evaluator's own command line names [eval] too.
    r = CliRunner().invoke(evaluator, ["--config", str(path), "--set", "eval.k=3"])
    assert r.exit_code == 0, r.output
    assert got["evaluation"].k == 3


def test_config_show_lists_eval_with_sources(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[eval]\nprompts = 50\n")
    resolved, cfg = config(tmp_path, "eval.k=8", path=path)
    text = render_with_sources(resolved, cfg.sources)
    table = text.split("[eval]\n", 1)[1].split("\n\n", 1)[0]
    source = {line.split(" = ")[0]: line.rsplit("# ", 1)[1] for line in table.splitlines()}
    assert source == {
        "every": "default (built-in model)",
        "prompts": "config file",
        "k": "--set",
        "temperature": "default",
        "interruption_text": "set by scalerl train",
        "think_end_text": "set by scalerl train",
        "mode": "set by scalerl train",
    }
