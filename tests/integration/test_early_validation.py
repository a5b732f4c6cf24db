"""`scalerl train` refuses a bad model directory, tokenizer, task file, verifier or a missing vLLM with exit 2 before
any process starts (no run dir, not even its lock), as do `scalerl trainer` and `scalerl generator` run alone; a jsonl
task without run.model gets the addition tiny model."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from scalerl.shared.models.tiny_model import ensure_tiny_model
from scalerl.shared.tasks.catalog import TaskConfig

# A user's model must set what does not transfer from the built-in one (checked first, at config resolution).
USER_MODEL = ["trainer.optim.lr=1e-6", "trainer.max_new_tokens=16"]


def train(run, *sets):
    args = [sys.executable, "-m", "scalerl.cli", "train", "--run-dir", str(run)]
    for s in sets:
        args += ["--set", s]
    return subprocess.run(args, capture_output=True, text=True, timeout=120)


def _inputs(tmp_path, setup):
    """A folder holding what the case names: a model folder without a tokenizer, or a jsonl task file."""
    d = tmp_path / "thing"
    d.mkdir()
    if setup == "no_tokenizer":
        (d / "config.json").write_text("{}")
    if setup == "data":
        (d / "t.jsonl").write_text("".join(json.dumps({"prompt": f"{i}+1=", "answer": i + 1}) + "\n" for i in range(5)))
    return d


@pytest.mark.parametrize(
    "setup, sets, message",
    [
        (None, ["run.model='/no/such/model'", *USER_MODEL], "run.model '/no/such/model': no such directory"),
        ("empty", ["run.model='{d}'", *USER_MODEL], "no config.json"),
        ("no_tokenizer", ["run.model='{d}'", *USER_MODEL], "cannot load its tokenizer"),
        (None, ["trainer.task.verifier='bogus'"], "verifier 'bogus': not one of code, exact, math, numeric"),
        (None, ["trainer.task.verifier='no_such_module:f'"], "cannot import 'no_such_module'"),
        # The addition task's answers are numbers: every sample would score 0 with a verifier error.
        (None, ["trainer.task.verifier='code'"], "verifier 'code' does not fit task 'addition': its answers are not"),
        (
            "data",
            ["trainer.task.name='jsonl'", "trainer.task.path='{d}/t.jsonl'", "trainer.task.verifier='code'"],
            "verifier 'code' does not fit task 't'",
        ),
        (
            "data",
            ["trainer.task.name='jsonl'", "trainer.task.path='{d}/t.jsonl'", "trainer.task.prompt_field='q'"],
            "t.jsonl:1: missing 'q'",
        ),
        (
            "data",
            ["trainer.task.name='jsonl'", "trainer.task.path='{d}/t.jsonl'", "trainer.task.chat_template=true"],
            "has no chat template",
        ),
        # The forced text (the paper's, 81 characters: 81 tokens of the tiny model) and the answer budget would be cut
        # at max_new_tokens: an interrupted sample ends with no answer and scores 0.
        (
            None,
            ["generator.thinking_budget=[20, 26]", "generator.answer_budget=8", "trainer.max_new_tokens=114"],
            "an interrupted completion needs 115, but trainer.max_new_tokens = 114",
        ),
        (
            None,
            ["eval.thinking_budget=26", "trainer.max_new_tokens=107"],
            "needs 108, but trainer.max_new_tokens = 107",
        ),
        pytest.param(
            None,
            ["generator.backend='vllm'"],
            "generator.backend = 'vllm' needs vLLM",
            marks=pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed"),
        ),
    ],
)
def test_bad_input_is_exit_2_before_any_process_starts(tmp_path, setup, sets, message):
    d = _inputs(tmp_path, setup)
    run = tmp_path / "run"
    r = train(run, *(s.format(d=d) for s in sets))
    assert r.returncode == 2 and message in r.stderr, r.stderr[-2000:]
    assert len(r.stderr.strip().splitlines()) == 1
    # Refused before the run dir is locked: not even its .lock (a vLLM run without vLLM wrote its config, logs and
    # metrics and started every process before the evaluator exited 2).
    assert not run.exists()


def test_jsonl_task_without_a_model_uses_the_addition_tiny_model(tmp_path):
    data = tmp_path / "t.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"{i}+1=", "answer": str(i + 1)}) + "\n" for i in range(20)))
    cfg = TaskConfig(name="jsonl", path=str(data))
    untrained = ensure_tiny_model(cache_dir=tmp_path / "cache", task=cfg, warm=False)
    assert untrained == ensure_tiny_model(cache_dir=tmp_path / "cache", task="addition", warm=False)
    assert untrained.name.startswith("tiny-addition-")


RECIPE = Path(__file__).resolve().parents[2] / "examples" / "full_recipe.toml"


def test_scalerl_train_refuses_a_mismatch_before_starting_anything(tmp_path, cli):
    bad = tmp_path / "bad.toml"
    bad.write_text(
        RECIPE.read_text().replace("[generator]\n", '[generator]\ninterruption_text = "Time is up. </think>"\n', 1)
    )
    r = cli("train", "--config", bad, "--run-dir", tmp_path / "run")
    assert r.returncode == 2, r.stderr
    assert "generator.interruption_text 'Time is up. </think>'" in r.stderr and "'Answer:'" in r.stderr
    assert not (tmp_path / "run").exists()


def test_code_answers_fit_the_code_verifier_and_a_few_broken_ones_do_not_refuse():
    from scalerl.shared.tasks.verifiers import ANSWER_SAMPLE, answers_problem

    good = "assert f(2) == 4\nassert f(0) == 0"
    assert answers_problem("code", [good] * 3) is None
    assert answers_problem("code", ["5", "not tests", good]) is None  # one item's broken tests score 0, no more
    assert "not test code (answer '5'" in answers_problem("code", ["5"] * ANSWER_SAMPLE + [good])
    assert answers_problem("exact", ["5"]) is None and answers_problem("numeric", [good]) is None


def standalone(command, tmp_path, *sets):
    """`scalerl trainer` or `scalerl generator` run alone, as a slurm script does, with its own [wiring]."""
    from scalerl.shared.wiring import ADDRESS_KEYS

    args = [sys.executable, "-m", "scalerl.cli", command]
    own = [f"trainer.run_dir='{tmp_path / 'run'}'"] if command == "trainer" else []
    for s in [*own, *(f"wiring.{key}='ipc://{tmp_path}/{key}'" for key in ADDRESS_KEYS), *sets]:
        args += ["--set", s]
    return subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=tmp_path)


@pytest.mark.parametrize(
    "command, setup, sets, message",
    [
        # It took the lock, wrote the run dir and a checkpoint, and waited for generators to train on rewards 0.
        ("trainer", None, ["trainer.task.verifier='code'"], "verifier 'code' does not fit task 'addition'"),
        (
            "trainer",
            "data",
            ["trainer.task.name='jsonl'", "trainer.task.path='{d}/t.jsonl'", "trainer.task.prompt_field='q'"],
            "t.jsonl:1: missing 'q'",
        ),
        ("trainer", None, ["trainer.model='/no/such/model'"], "trainer.model '/no/such/model': no such directory"),
        (
            "generator",
            None,
            ["generator.model='/no/such/model'"],
            "generator.model '/no/such/model': no such directory",
        ),
        ("generator", "no_tokenizer", ["generator.model='{d}'"], "generator.model '{d}': cannot load its tokenizer"),
    ],
)
def test_standalone_trainer_and_generator_check_their_inputs_first(tmp_path, command, setup, sets, message):
    d = _inputs(tmp_path, setup)
    r = standalone(command, tmp_path, *(s.format(d=d) for s in sets))
    assert r.returncode == 2 and message.format(d=d) in r.stderr, r.stderr[-2000:]
    assert r.stderr.startswith("scalerl: error: ") and len(r.stderr.strip().splitlines()) == 1, r.stderr[-2000:]
    assert r.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thing"]  # no run dir, lock or socket


def _eos_appending_model(tmp_path):
    """The untrained tiny model with a tokenizer that appends <eos> to whatever it encodes and has a chat template:
    tokenizing the template's text gives one id more than the template, the round trip check_model refuses."""
    import shutil

    from tokenizers.processors import TemplateProcessing

    from scalerl.shared.models import tokenizer as char_tok

    d = tmp_path / "eos_model"
    shutil.copytree(ensure_tiny_model(cache_dir=tmp_path / "cache", warm=False), d)
    tok = char_tok.load_tokenizer(d)
    tok.backend_tokenizer.post_processor = TemplateProcessing(
        single=f"$A {char_tok.EOS}", special_tokens=[(char_tok.EOS, char_tok.EOS_ID)]
    )
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
    tok.save_pretrained(d)
    return d


def test_generator_checks_its_model_not_the_task_prompts_it_never_renders(tmp_path, monkeypatch):
    # The generator checked the tiny task's prompts under the default chat template: a model refused so by train, whose
    # user then set task.chat_template = false as told, passed train and failed every generator with the same line.
    import scalerl.generator_service.service as service
    from scalerl.cli.main import main
    from scalerl.cli.run_setup import check_inputs
    from scalerl.cli.train_cmd import _resolve
    from scalerl.shared.tasks.types import TaskError
    from scalerl.shared.wiring import ADDRESS_KEYS

    model = _eos_appending_model(tmp_path)
    sets = [f"run.model='{model}'", *USER_MODEL]
    with pytest.raises(TaskError, match="set task.chat_template = false"):
        check_inputs(_resolve(None, sets, str(tmp_path / "run"))[1])
    check_inputs(_resolve(None, [*sets, "trainer.task.chat_template=false"], str(tmp_path / "run"))[1])  # as told
    # And a generator on that model reaches its service (not run here: no trainer to talk to).
    started = []
    monkeypatch.setattr(service, "run_generator", lambda gen_cfg, wiring: started.append(gen_cfg.model) or 0)
    monkeypatch.setattr(service, "configure_logging", lambda peer_id: None)
    args = ["generator", "--set", f"generator.model='{model}'"]
    for key in ADDRESS_KEYS:
        args += ["--set", f"wiring.{key}='ipc://{tmp_path}/{key}'"]
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 0 and started == [str(model)]
