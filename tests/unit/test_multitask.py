"""Multi-task runs: [[trainer.tasks]] config, the task mix, the weighted prompt scheduler, per-task curves."""

from __future__ import annotations

import json
import tomllib
from collections import Counter

import pytest

from scalerl.cli.progress import summary
from scalerl.cli.run_config import resolve
from scalerl.curvefit.readers import ReadOptions, read_run_dir, read_sources
from scalerl.shared.config import ConfigError, dump_toml, from_dict
from scalerl.shared.tasks.catalog import TaskConfig, TaskMix, get_task, task_label
from scalerl.shared.tasks.types import TaskItem
from scalerl.shared.tasks.verifiers import numeric_match
from scalerl.trainer_service.config import PromptPipelineConfig, TrainerConfig
from scalerl.trainer_service.prompt_pipeline import MixScheduler, PromptScheduler, make_scheduler


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture
def two_files(tmp_path):
    a = _jsonl(tmp_path / "sums.jsonl", [{"id": f"s{i}", "prompt": f"{i}+1=", "answer": str(i + 1)} for i in range(40)])
    b = _jsonl(tmp_path / "words.jsonl", [{"id": f"s{i}", "prompt": f"w{i}:", "answer": f"w{i}"} for i in range(20)])
    return a, b


def test_trainer_tasks_tables_parse_round_trip_and_keep_single_task(two_files):
    a, b = two_files
    raw = {"tasks": [{"name": "jsonl", "path": a, "verifier": "numeric", "weight": 3}, {"name": "jsonl", "path": b}]}
    cfg = from_dict(TrainerConfig, raw, "trainer.")
    assert cfg.multi_task and [task_label(t) for t in cfg.tasks] == ["sums", "words"]
    assert cfg.tasks[0].weight == 3.0 and cfg.warm_start_task() == TaskConfig()  # addition warm start
    again = from_dict(TrainerConfig, tomllib.loads(dump_toml(cfg)), "trainer.")  # config.toml of the run dir
    assert again == cfg
    single = from_dict(TrainerConfig, {"task": {"name": "addition_steps"}}, "trainer.")
    assert not single.multi_task and single.task_configs() == [TaskConfig(name="addition_steps")]
    lone = from_dict(TrainerConfig, {"tasks": [{"name": "addition_steps", "label": "x", "weight": 2}]}, "trainer.")
    assert not lone.multi_task and lone.warm_start_task() == TaskConfig(name="addition_steps")


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"task": {"name": "addition_steps"}, "tasks": [{"name": "addition"}]}, "not both"),
        ({"tasks": [{"name": "addition"}, {"name": "addition"}]}, "used twice"),
        ({"tasks": [{"name": "addition"}, {"name": "addition_steps", "weight": 0}]}, "weight must be > 0"),
        ({"tasks": [{"name": "addition", "label": "a/b"}, {"name": "addition_steps"}]}, "label 'a/b'"),
        ({"tasks": [{"name": "addition"}, {"name": "jsonl"}]}, "needs path"),
        ({"tasks": [{"name": "addition", "wieght": 2}]}, "did you mean 'trainer.tasks[0].weight'"),
        ({"tasks": [{"name": "addition", "weight": "2"}]}, "'trainer.tasks[0].weight' must be a number"),
    ],
)
def test_bad_trainer_tasks_name_the_entry(raw, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        from_dict(TrainerConfig, raw, "trainer.")


def test_a_multi_task_run_refuses_the_evaluator_process(two_files, tmp_path):
    a, b = two_files
    config = tmp_path / "mt.toml"
    config.write_text(
        f'[[trainer.tasks]]\nname = "jsonl"\npath = "{a}"\n[[trainer.tasks]]\nname = "jsonl"\npath = "{b}"\n'
    )
    with pytest.raises(ConfigError, match="evaluates inline"):
        resolve(config, ["eval.mode='process'"], run_dir=str(tmp_path / "run"))


def test_scalerl_train_resolves_a_multi_task_run_inline_on_the_addition_model(two_files, tmp_path):
    a, b = two_files
    config = tmp_path / "mt.toml"
    config.write_text(
        f'[[trainer.tasks]]\nname = "jsonl"\npath = "{a}"\n[[trainer.tasks]]\nname = "jsonl"\npath = "{b}"\n'
    )
    _, cfg = resolve(config, [], run_dir=str(tmp_path / "run"))
    assert cfg.eval.mode == "inline"  # the evaluator process scores one task
    assert cfg.generator.tiny_task == "addition"  # the model the trainer warm-starts on too


def test_task_mix_namespaces_ids_and_verifies_each_item_with_its_own_task(two_files):
    a, b = two_files
    sums, words = get_task("jsonl", path=a, verifier="numeric"), get_task("jsonl", path=b)
    mix = TaskMix([("sums", 1.0, sums), ("words", 1.0, words)])
    ids = [i.id for i in mix.train_items]
    assert len(ids) == len(set(ids)) == len(sums.train_items) + len(words.train_items)  # "s3" is in both files
    assert {i.partition("/")[0] for i in ids} == {"sums", "words"}
    assert mix.spec_for("sums/s1") == "numeric" and mix.spec_for("words/s1") == "exact"
    assert mix.verify(" 2.0", TaskItem("sums/s1", "1+1=", "2"))[0] == 1.0  # numeric: 2.0 == 2
    assert mix.verify(" 2.0", TaskItem("words/s1", "w:", "2"))[0] == 0.0  # exact on the other task


def test_mix_scheduler_draws_by_weight_deterministically_and_resumes_exactly():
    cfg = PromptPipelineConfig(no_positive_resampling=False)
    ids = {"a": [f"a/{i}" for i in range(50)], "b": [f"b/{i}" for i in range(7)]}
    s = MixScheduler(ids, {"a": 3.0, "b": 1.0}, cfg, seed=3)
    drawn = s.next_prompts(4000)
    share = Counter(p.partition("/")[0] for p in drawn)
    assert 0.72 < share["a"] / 4000 < 0.78  # 3:1
    assert MixScheduler(ids, {"a": 3.0, "b": 1.0}, cfg, seed=3).next_prompts(4000) == drawn  # seeded
    state = json.loads(json.dumps(s.state_dict()))  # plain JSON, as in a checkpoint's state.json
    ahead = s.next_prompts(300)
    restored = MixScheduler(ids, {"a": 3.0, "b": 1.0}, cfg, seed=3)
    restored.load_state_dict(state)
    assert restored.next_prompts(300) == ahead
    with pytest.raises(ValueError, match="tasks"):
        MixScheduler({"a": ids["a"]}, {"a": 1.0}, cfg, seed=3).load_state_dict(state)


def test_mix_scheduler_routes_npr_and_drops_to_the_prompts_task():
    cfg = PromptPipelineConfig(npr_threshold=0.9, min_live=0.0)
    s = MixScheduler({"a": ["a/1", "a/2"], "b": ["b/1", "b/2"]}, {"a": 1.0, "b": 1.0}, cfg)
    s.record("a/1", 1.0)
    s.drop("b/2")
    assert s.tasks["a"].retired == {"a/1"} and s.tasks["b"].dropped == {"b/2"} and s.n_retired == 1
    later = s.next_prompts(200)[20:]  # past the first epoch of each task
    assert "a/1" not in later and "b/2" not in later and {"a/2", "b/1"} <= set(later)


def test_make_scheduler_keeps_a_single_task_on_its_plain_scheduler():
    task = get_task("addition")
    s = make_scheduler(task, PromptPipelineConfig())
    assert type(s) is PromptScheduler and set(s.ids) == {i.id for i in task.train_items}  # ids and state unchanged


def _eval(step, gpu_hours, rate, task=None):
    line = {"kind": "eval", "step": step, "gpu_hours": gpu_hours, "time_s": step, "pass_rate": rate, "n_samples": 8}
    return {**line, "task": task} if task else line


def test_readers_give_one_curve_per_task_and_single_task_run_dirs_read_as_before(tmp_path):
    multi, single = tmp_path / "mt", tmp_path / "st"
    multi.mkdir()
    single.mkdir()
    lines = [_eval(s, s / 10, 0.2 + s / 100, "gsm8k") for s in range(0, 50, 10)]
    lines += [_eval(s, s / 10 + 0.01, 0.1 + s / 200, "code") for s in range(0, 50, 10)]
    lines.insert(3, {"kind": "train", "step": 5, "gpu_hours": 0.5, "time_s": 5, "loss": 0.1})
    (multi / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    (single / "metrics.jsonl").write_text("".join(json.dumps(_eval(s, s / 10, 0.3)) + "\n" for s in range(0, 50, 10)))
    gsm, code = read_run_dir(multi, ReadOptions())
    assert (gsm.name, code.name) == ("mt/gsm8k", "mt/code")
    assert list(gsm.y) == pytest.approx([0.2, 0.3, 0.4, 0.5, 0.6]) and list(code.y)[-1] == pytest.approx(0.3)
    (only,) = read_sources([single], ReadOptions())
    assert only.name == "st" and len(only) == 5
    assert [c.name for c in read_sources([multi, single], ReadOptions())] == ["mt/gsm8k", "mt/code", "st"]
    # The one-line live view follows the first task, not whichever task was written last.
    s = summary([json.loads(x) for x in (multi / "metrics.jsonl").read_text().splitlines()], 50, 0.0)
    assert (s["pass_rate_0"], s["pass_rate"]) == (0.2, pytest.approx(0.6))


def test_numeric_reads_a_gsm8k_gold_after_its_marks():
    gold = "37+45 = <<37+45=82>>82\n#### 82"
    assert numeric_match("82", gold)[0] == 1.0
    assert numeric_match("45", gold)[0] == 0.0  # not a number from the worked answer
