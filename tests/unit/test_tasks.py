"""Tasks and verifiers: splits, hand-checked rewards, JSONL loading, custom verifiers."""

import json
import math
import subprocess
import sys
from fractions import Fraction

import msgpack
import numpy as np
import pytest

from scalerl.shared.tasks.catalog import TaskConfig, addition_steps_solution, get_task, load_task, read_jsonl
from scalerl.shared.tasks.types import TaskError
from scalerl.shared.tasks.verifiers import (
    after_delimiter,
    exact_match,
    last_boxed,
    last_number,
    make_verifier,
    numeric_match,
    parse_number,
)

# --- splits ---------------------------------------------------------------------------


def test_addition_split_is_deterministic_disjoint_and_complete():
    a, b = get_task("addition"), get_task("addition", seed=0)
    assert a.train_items == b.train_items and a.val_items == b.val_items
    train_ids, val_ids = {i.id for i in a.train_items}, {i.id for i in a.val_items}
    assert len(val_ids) == 500 and not train_ids & val_ids
    assert len(train_ids | val_ids) == 90 * 90  # every pair of 2-digit numbers, once
    other = get_task("addition", seed=1)
    assert {i.id for i in other.val_items} != val_ids


def test_addition_items_are_correct_sums():
    for item in get_task("addition", n_val=10).val_items + get_task("addition").train_items[:200]:
        a, b = item.prompt.rstrip("=").split("+")
        assert item.prompt == f"{a}+{b}=" and len(a) == len(b) == 2
        assert item.answer == str(int(a) + int(b)) == item.meta["solution"]


def test_steps_variant_shares_the_split_of_plain_addition():
    plain, steps = get_task("addition"), get_task("addition_steps")
    assert [i.id for i in plain.val_items] == [i.id for i in steps.val_items]


@pytest.mark.parametrize(
    "a,b,text",
    [
        (37, 45, "7+5=12;3+4+1=8;Answer: 82"),
        (99, 99, "9+9=18;9+9+1=19;Answer: 198"),
        (10, 10, "0+0=0;1+1+0=2;Answer: 20"),
        (55, 45, "5+5=10;5+4+1=10;Answer: 100"),
    ],
)
def test_addition_steps_solution(a, b, text):
    assert addition_steps_solution(a, b) == text


# --- built-in verifiers -----------------------------------------------------------------


@pytest.mark.parametrize(
    "completion,reward",
    [
        ("82", 1.0),
        (" 82\n", 1.0),
        ("82 ", 1.0),
        ("820", 0.0),
        ("8", 0.0),
        ("", 0.0),
        ("82 and more", 0.0),
        ("\x00", 0.0),
    ],
)
def test_exact_match(completion, reward):
    assert exact_match(completion, "82")[0] == reward


@pytest.mark.parametrize(
    "completion,answer,reward",
    [
        ("so the sum is 82.", "82", 1.0),
        ("3 + 4 = 7, then 7 + 75 = 82", "82", 1.0),
        ("82 was wrong, it is 83", "82", 0.0),  # the last number counts
        ("\\boxed{82} but then 5", "82", 1.0),  # a boxed answer beats later numbers
        ("\\boxed{\\frac{1}{2}}", "0.5", 1.0),
        ("0.50", "1/2", 1.0),
        ("total: 1,234", "1234", 1.0),
        ("10-4", "-4", 0.0),  # a minus after a digit is subtraction, not a sign
        ("x = -4", "-4", 1.0),
        ("\\boxed{x+1}", "x + 1", 1.0),  # non-numeric answers compare as text
        ("no digits at all", "82", 0.0),
        ("", "82", 0.0),
        ("\\boxed{82", "82", 1.0),  # unbalanced box: falls back to the last number
        ("1/0", "1", 0.0),
    ],
)
def test_numeric_match(completion, answer, reward):
    assert numeric_match(completion, answer)[0] == reward


def test_numeric_match_details():
    assert numeric_match("it is \\boxed{12}", "12")[1] == {"correct": True, "has_answer": True, "parsed": "12"}
    assert numeric_match("nothing", "12")[1] == {"correct": False, "has_answer": False, "parsed": ""}


def test_parsing_helpers():
    assert parse_number("1,234.5") == Fraction(24690, 20)
    assert parse_number("$-3/4") == Fraction(-3, 4)
    assert parse_number("\\dfrac{3}{4}") == Fraction(3, 4)
    assert parse_number("3 apples") is None and parse_number("") is None and parse_number("1/0") is None
    assert last_number("a 1 b 22 c") == "22" and last_number("none") is None
    assert last_boxed("\\boxed{1} \\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"
    assert last_boxed("\\boxed{{}") is None and last_boxed("plain") is None
    assert after_delimiter("a#b#c", "#") == "c" and after_delimiter("abc", "#") is None


def test_steps_task_reads_only_after_the_last_delimiter():
    task = get_task("addition_steps")
    item = task.val_items[0]
    good = item.meta["solution"]
    assert task.verify(good, item) == (
        1.0,
        {"correct": True, "has_answer": True, "parsed": item.answer, "has_delimiter": True},
    )
    interrupted = good[:5] + task.interruption_text + " " + item.answer
    assert task.verify(interrupted, item)[0] == 1.0
    assert task.verify("Answer: 1;Answer: " + item.answer, item)[0] == 1.0
    assert task.verify("Answer: " + item.answer + ";Answer: 1", item)[0] == 0.0
    assert task.verify(good.replace("Answer:", "Answr:"), item) == (
        0.0,
        {"correct": False, "has_answer": False, "parsed": "", "has_delimiter": False},
    )
    assert task.verify("Answer:", item)[0] == 0.0
    assert task.interruption_text.endswith("Answer:")


def test_details_pack_with_msgpack():
    task = get_task("addition_steps")
    for completion in ["", "Answer: 5", task.val_items[0].meta["solution"], "Answer: \x00\u00e9"]:
        reward, details = task.verify(completion, task.val_items[0])
        assert isinstance(reward, float)
        msgpack.packb(details)


# --- JSONL --------------------------------------------------------------------------------


def _write(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_jsonl_loads_items_ids_and_meta(tmp_path):
    path = _write(
        tmp_path / "d.jsonl",
        [json.dumps({"prompt": f"q{i}", "answer": i, "id": f"x{i}", "level": i % 3}) for i in range(40)] + ["", "   "],
    )
    task = get_task("jsonl", path=str(path), seed=3)
    assert len(task.val_items) == 4 and len(task.train_items) == 36
    item = next(i for i in task.train_items + task.val_items if i.id == "x7")
    assert (item.prompt, item.answer, dict(item.meta)) == ("q7", "7", {"level": 1})
    again = get_task("jsonl", path=str(path), seed=3)
    assert [i.id for i in again.val_items] == [i.id for i in task.val_items]
    assert task.verify(" 7 ", item)[0] == 1.0


def test_jsonl_ids_default_to_file_and_line(tmp_path):
    path = _write(tmp_path / "d.jsonl", ['{"prompt": "a", "answer": "1"}', "", '{"prompt": "b", "answer": 2.5}'])
    items = read_jsonl(path)
    assert [i.id for i in items] == [f"{path}:1", f"{path}:3"]
    assert items[1].answer == "2.5"


@pytest.mark.parametrize(
    "bad_line,message",
    [
        ('{"prompt": "a", "answer": "1"', "not valid JSON"),
        ('["prompt", "answer"]', "expected a JSON object, got list"),
        ('{"prompt": "a"}', "missing 'answer'"),
        ('{"answer": "a"}', "missing 'prompt'"),
        ('{"prompt": 5, "answer": "1"}', "'prompt' must be a non-empty string"),
        ('{"prompt": "", "answer": "1"}', "'prompt' must be a non-empty string"),
        ('{"prompt": "a", "answer": null}', "'answer' must be a string, a number or a list of strings"),
        ('{"prompt": "a", "answer": true}', "'answer' must be a string, a number or a list of strings"),
        ('{"prompt": "a", "answer": "1", "id": [1]}', "'id' must be a string or an integer"),
        ('{"prompt": "a", "answer": "1", "id": "ok"}', "duplicate id 'ok'"),
    ],
)
def test_jsonl_bad_line_names_file_and_line(tmp_path, bad_line, message):
    path = _write(tmp_path / "bad.jsonl", ['{"prompt": "a", "answer": "1", "id": "ok"}', "", bad_line])
    with pytest.raises(TaskError) as err:
        read_jsonl(path)
    assert str(err.value).startswith(f"{path}:3: ") and message in str(err.value)
    assert "\n" not in str(err.value)


def test_jsonl_file_errors(tmp_path):
    (tmp_path / "latin1.jsonl").write_bytes(b'{"prompt": "caf\xe9", "answer": "1"}\n')
    with pytest.raises(TaskError, match=r"latin1.jsonl:1: not UTF-8$"):
        read_jsonl(tmp_path / "latin1.jsonl")
    with pytest.raises(TaskError, match=r"missing.jsonl: cannot read"):
        read_jsonl(tmp_path / "missing.jsonl")
    _write(tmp_path / "empty.jsonl", ["", ""])
    with pytest.raises(TaskError, match=r"empty.jsonl: no items$"):
        read_jsonl(tmp_path / "empty.jsonl")
    with pytest.raises(TaskError, match="needs a path"):
        get_task("jsonl")


def test_jsonl_separate_validation_file(tmp_path):
    train = _write(tmp_path / "t.jsonl", [json.dumps({"prompt": f"q{i}", "answer": "1", "id": i}) for i in range(5)])
    val = _write(tmp_path / "v.jsonl", [json.dumps({"prompt": "v", "answer": "1", "id": "v0"})])
    task = get_task("jsonl", path=str(train), val_path=str(val))
    assert [i.id for i in task.train_items] == ["0", "1", "2", "3", "4"] and [i.id for i in task.val_items] == ["v0"]
    clash = _write(tmp_path / "c.jsonl", [json.dumps({"prompt": "v", "answer": "1", "id": 3})])
    with pytest.raises(TaskError, match="ids also in"):
        get_task("jsonl", path=str(train), val_path=str(clash))


def test_config_errors():
    with pytest.raises(TaskError, match="unknown task 'nope'"):
        get_task("nope")
    with pytest.raises(TaskError, match="unknown option 'colour'"):
        get_task("addition", colour="red")
    with pytest.raises(TaskError, match="n_val=8100"):
        get_task("addition", n_val=8100)
    with pytest.raises(TaskError, match="n_val must be an int, not '5'"):
        get_task("addition", n_val="5")
    with pytest.raises(TaskError, match="path must be a string"):
        load_task({"name": "jsonl", "path": 3})
    assert load_task(None).name == "addition"
    assert load_task(TaskConfig(name="addition_steps", n_val=7)).val_items.__len__() == 7
    with pytest.raises(ValueError):  # TaskError is a ValueError for callers that catch those
        get_task("addition", verifier="nonsense")


# --- module:function verifiers ------------------------------------------------------------

CUSTOM = """
import numpy as np

def by_length(completion, item):
    return len(completion) == int(item.answer), {"length": np.int64(len(completion)), "level": item.meta["level"]}

def boolean(completion, item):
    return completion == item.prompt

def crash(completion, item):
    raise RuntimeError("boom " + completion)

def bad_reward(completion, item):
    return "yes"

def nan_reward(completion, item):
    return float("nan")

def bad_detail(completion, item):
    return 1.0, {"obj": object()}

NOT_CALLABLE = 3
"""


@pytest.fixture
def custom_task(tmp_path, monkeypatch):
    (tmp_path / "my_checks.py").write_text(CUSTOM)
    monkeypatch.syspath_prepend(str(tmp_path))
    data = _write(
        tmp_path / "d.jsonl",
        [json.dumps({"prompt": "abc", "answer": "3", "level": 2})]
        + [json.dumps({"prompt": f"p{i}", "answer": "2", "level": 0}) for i in range(9)],
    )
    return lambda fn, **kw: get_task("jsonl", path=str(data), n_val=1, verifier=f"my_checks:{fn}", **kw)


def test_module_function_verifier(custom_task):
    task = custom_task("by_length")
    item = next(i for i in task.train_items + task.val_items if i.prompt == "abc")
    reward, details = task.verify("xyz", item)
    assert reward == 1.0 and details == {"length": 3, "level": 2} and type(details["length"]) is int
    assert task.verify("xy", item)[0] == 0.0
    assert custom_task("boolean").verify("abc", item) == (1.0, {})
    with_delim = custom_task("by_length", delimiter="=>")
    assert with_delim.verify("ignored=>xyz", item)[0] == 1.0
    assert with_delim.verify("no delimiter", item)[1]["has_delimiter"] is False


@pytest.mark.parametrize(
    "fn,error",
    [
        ("crash", "RuntimeError: boom"),
        ("bad_reward", "TypeError: reward must be a number, got str"),
        ("nan_reward", "ValueError: reward must be finite"),
        ("bad_detail", "TypeError: detail 'obj'"),
    ],
)
def test_failing_verifier_costs_the_reward_not_the_caller(custom_task, fn, error):
    task = custom_task(fn)
    reward, details = task.verify("anything", task.val_items[0])
    assert reward == 0.0 and details["verifier_error"].startswith(error)


@pytest.mark.parametrize(
    "spec,message",
    [
        ("no_such_module_xyz:f", "cannot import 'no_such_module_xyz'"),
        ("my_checks:missing", "has no callable 'missing'"),
        ("my_checks:NOT_CALLABLE", "has no callable 'NOT_CALLABLE'"),
        ("exactly", "not one of code, exact, math, numeric"),
        (":f", "not one of"),
    ],
)
def test_bad_verifier_spec(custom_task, spec, message):
    with pytest.raises(TaskError, match=message):
        make_verifier(spec)


def test_numpy_details_are_plain_python():
    verify = make_verifier("exact")
    assert verify("1", type("I", (), {"answer": "1"})())[0] == 1.0
    from scalerl.shared.tasks.verifiers import normalize_result

    reward, details = normalize_result((np.float32(0.5), {"a": np.bool_(True), "b": np.float64(math.pi)}))
    assert reward == 0.5 and type(details["a"]) is bool and type(details["b"]) is float


def test_tasks_module_does_not_import_torch():
    code = "import sys, scalerl.shared.tasks.catalog; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
