"""Forced interruption's one source: the task's text unless the config overrides it, checked before anything starts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scalerl.cli.run_config import resolve
from scalerl.shared.config import ConfigError
from scalerl.shared.tasks.catalog import (
    PAPER_INTERRUPTION_TEXT,
    TaskConfig,
    get_task,
    interruption_defaults,
    interruption_problem,
    task_delimiter,
)

RECIPE = Path(__file__).resolve().parents[2] / "examples" / "full_recipe.toml"
STEPS = ["--set", "trainer.task.name=addition_steps"]


def config(tmp_path, *sets: str):
    return resolve(None, [s for s in sets if s != "--set"], run_dir=str(tmp_path / "run"))


def test_the_task_defines_text_and_end_of_thinking():
    steps = get_task("addition_steps")
    assert interruption_defaults(steps.delimiter) == ("\nOkay, time is up. Answer:", "Answer:")
    assert steps.interruption_text == "\nOkay, time is up. Answer:"
    assert interruption_defaults(None) == (PAPER_INTERRUPTION_TEXT, "</think>")
    assert interruption_defaults("####")[0].endswith("####")
    # Known without reading the data: config resolution must not open a JSONL file.
    assert task_delimiter(TaskConfig(name="jsonl", path="/nonexistent", delimiter="####")) == "####"
    assert task_delimiter(TaskConfig(name="addition")) is None
    assert task_delimiter(TaskConfig(name="addition_steps")) == steps.delimiter


@pytest.mark.parametrize(
    "text, ok",
    [
        ("\nTime's up. Answer:", True),
        ("Answer: ", True),  # trailing space: the verifier strips it
        ("Answer:\n", True),
        ("Answer: so", False),  # "so" would be read as the answer
        ("Answer: </think>", False),
        ("Okay, time is up. Let me stop thinking and formulate a final answer now. </think>", False),
        ("", False),
    ],
)
def test_a_text_must_end_with_the_delimiter(text, ok):
    assert (interruption_problem(text, "Answer:") is None) == ok
    assert interruption_problem(text, None) is None  # no delimiter: the verifier reads everything anyway


def test_unset_means_the_tasks_text_for_generators_and_evaluation(tmp_path):
    resolved, cfg = config(
        tmp_path, *STEPS, "--set", "generator.thinking_budget=[22, 26]", "--set", "trainer.max_new_tokens=64"
    )
    text = get_task("addition_steps").interruption_text
    assert (cfg.generator.interruption_text, cfg.generator.think_end_text) == (text, "Answer:")
    e = cfg.eval
    assert (e.thinking_budget, e.interruption_text, e.think_end_text) == (26, text, "Answer:")
    assert resolved["generator"]["interruption_text"] == text  # the resolved config shows what runs
    assert resolved["eval"]["thinking_budget"] == 26


def test_a_task_without_delimiter_keeps_the_papers_text_and_any_override(tmp_path):
    _, cfg = config(tmp_path)
    assert cfg.generator.interruption_text == PAPER_INTERRUPTION_TEXT and cfg.generator.think_end_text == "</think>"
    assert cfg.eval.thinking_budget is None  # interruption off: evaluation is not cut either
    _, cfg = config(
        tmp_path, "--set", 'generator.interruption_text="Stop. </think>"', "--set", "eval.thinking_budget=5"
    )
    assert cfg.eval.interruption_text == "Stop. </think>"


def test_an_override_that_ends_with_the_delimiter_is_used_everywhere(tmp_path):
    text = ["--set", 'generator.interruption_text="\\nStop now. Answer:"']
    _, cfg = config(tmp_path, *STEPS, *text, "--set", "generator.thinking_budget=[5, 6]")
    assert cfg.generator.interruption_text == "\nStop now. Answer:" == cfg.eval.interruption_text


def test_a_mismatched_override_is_an_error_naming_both(tmp_path):
    with pytest.raises(ConfigError) as e:
        config(tmp_path, *STEPS, "--set", f"generator.interruption_text={json.dumps(PAPER_INTERRUPTION_TEXT)}")
    msg = str(e.value)
    assert "generator.interruption_text" in msg and PAPER_INTERRUPTION_TEXT in msg
    assert "'Answer:'" in msg and "addition_steps" in msg
    with pytest.raises(ConfigError, match=r"delimiter '####'.*trainer.task.name = 'jsonl'"):
        config(
            tmp_path,
            "--set",
            "trainer.task.name=jsonl",
            "--set",
            "trainer.task.path=/nonexistent.jsonl",
            "--set",
            'trainer.task.delimiter="####"',
            "--set",
            'generator.interruption_text="Answer:"',
        )


def test_evaluation_keys(tmp_path):
    budget = ["--set", "generator.thinking_budget=[22, 26]", "--set", "generator.answer_budget=8"]
    budget += ["--set", "trainer.max_new_tokens=64"]  # a budget of 22 or more is never reached at the default 16
    _, cfg = config(tmp_path, *STEPS, *budget, "--set", "eval.thinking_budget=40")
    assert cfg.eval.thinking_budget == 40 and cfg.eval.answer_budget == 8
    _, cfg = config(tmp_path, *STEPS, *budget, "--set", "eval.answer_budget=3")
    assert cfg.eval.answer_budget == 3
    with pytest.raises(ConfigError, match="'eval.interruption_text' is set by scalerl train"):
        config(tmp_path, *STEPS, "--set", 'eval.interruption_text="x Answer:"')
    with pytest.raises(ConfigError, match="eval: thinking_budget must be >= 0"):
        config(tmp_path, "--set", "eval.thinking_budget=-1")


def test_the_full_recipe_cuts_with_the_tasks_text(tmp_path):
    _, cfg = resolve(RECIPE, [], run_dir=str(tmp_path / "run"))
    assert cfg.trainer.task.name == "addition_steps"
    assert cfg.generator.thinking_budget == (22, 26) and cfg.generator.interruption_text.endswith("Answer:")
    # Thinking, the forced text and the answer all fit: an interrupted sample is never also truncated.
    longest = cfg.generator.thinking_budget[1] + len(cfg.generator.interruption_text) + cfg.generator.answer_budget
    assert longest <= cfg.trainer.max_new_tokens


def test_split_pass_rates_and_sampled_length():
    import numpy as np

    from scalerl.generator_service.heldout import split_pass_rates
    from scalerl.shared.wire.messages import Rollout
    from scalerl.trainer_service.batch import batch_stats

    got = split_pass_rates([1.0, 0.0, 1.0, 1.0], [True, True, False, False])
    assert got == {"pass_rate_interrupted": 0.5, "pass_rate_uninterrupted": 1.0, "interrupted_frac": 0.5}
    none_cut = split_pass_rates([0.0, 1.0], [False, False])
    assert none_cut["pass_rate_interrupted"] is None and none_cut["interrupted_frac"] == 0.0

    def rollout(n: int, forced: int, reason: str) -> Rollout:
        return Rollout(
            group_id="g",
            sample_index=0,
            prompt_index=0,
            item_id="i",
            prompt_ids=np.ones(3, np.int32),
            completion_ids=np.ones(n, np.int32),
            logprobs=np.zeros(n, np.float32),
            versions=np.zeros(n, np.int32),
            forced=np.array([0] * (n - forced) + [1] * forced, np.uint8),
            finish_reason=reason,
            reward=0.0,
            verifier_info={},
            t_queued=0.0,
            t_started=0.0,
            t_finished=0.0,
        )

    stats = batch_stats([[rollout(10, 4, "interrupted"), rollout(8, 0, "stop")]], 0)
    assert stats["completion_len_mean"] == 9.0 and stats["sampled_len_mean"] == 7.0
    assert stats["interruption_rate"] == 0.5 and stats["truncation_rate"] == 0.0


@pytest.mark.parametrize(
    "sets, offender",
    [
        (["generator.answer_budget=4"], "generator.answer_budget = 4"),
        (['generator.interruption_text="Stop. </think>"'], "generator.interruption_text = 'Stop. </think>'"),
        (['generator.think_end_text="</end>"'], "generator.think_end_text = '</end>'"),
        (["eval.answer_budget=4"], "eval.answer_budget = 4"),
    ],
)
def test_what_acts_only_after_an_interruption_is_refused_without_one(tmp_path, sets, offender):
    with pytest.raises(ConfigError, match="is set but") as e:
        config(tmp_path, *sets)
    assert str(e.value).startswith(offender)
    # With a budget for the samples it acts on, each is taken.
    budget = "generator.thinking_budget=[5, 6]" if sets[0].startswith("generator") else "eval.thinking_budget=5"
    config(tmp_path, *sets, budget)
    if sets[0].startswith("generator"):  # the generators' answer budget and texts reach evaluation too
        config(tmp_path, *sets, "eval.thinking_budget=5")
