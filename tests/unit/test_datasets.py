"""Task data files: JSONL and Parquet, field names, chat messages, splits, and errors that name file, row, field."""

from __future__ import annotations

import builtins
import json

import pytest

from scalerl.shared.tasks.catalog import get_task
from scalerl.shared.tasks.datasets import read_items
from scalerl.shared.tasks.types import TaskError


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _parquet(path, rows):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


GSM8K_ROWS = [
    {"question": f"Tom has {i} apples and buys 2. How many?", "answer": f"{i}+2={i + 2}\n#### {i + 2}"}
    for i in range(20)
]


def test_field_names_and_the_same_items_from_jsonl_and_parquet(tmp_path):
    a = read_items(_jsonl(tmp_path / "g.jsonl", GSM8K_ROWS), "question", "answer")
    b = read_items(_parquet(tmp_path / "g.parquet", GSM8K_ROWS), "question", "answer")
    assert [(i.prompt, i.answer) for i in a] == [(i.prompt, i.answer) for i in b]
    assert a[3].prompt == "Tom has 3 apples and buys 2. How many?" and a[3].answer.endswith("#### 5")
    pytest.importorskip("math_verify")  # GSM8K's "#### 5" answers need the math verifier
    task = get_task("jsonl", path=str(tmp_path / "g.parquet"), prompt_field="question", verifier="math", n_val=4)
    assert (len(task.train_items), len(task.val_items)) == (16, 4)
    assert (
        task.verify("so \\boxed{5}", next(i for i in task.train_items + task.val_items if i.answer.endswith(" 5")))[0]
        == 1
    )


def test_messages_prompt_kept_for_the_chat_template(tmp_path):
    rows = [
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}], "answer": 4},
        {"prompt": [{"role": "user", "content": "3+3?"}], "answer": "6", "id": "q6"},
    ]
    for path in (_jsonl(tmp_path / "m.jsonl", rows), _parquet(tmp_path / "m.parquet", rows[:1])):
        item = read_items(path)[0]
        assert [dict(m) for m in item.meta["messages"]] == rows[0]["messages"]
        assert item.prompt == "Be brief.\n\n2+2?" and item.answer == "4"  # plain text for a template-less tokenizer
    item = read_items(tmp_path / "m.jsonl")[1]
    assert item.id == "q6" and item.meta["messages"][0]["content"] == "3+3?"


def test_list_answer_is_one_test_program(tmp_path):
    rows = [{"text": "Write f.", "test_list": ["assert f(1) == 2", "assert f(2) == 3"]}]
    item = read_items(_jsonl(tmp_path / "c.jsonl", rows), "text", "test_list")[0]
    assert item.answer == "assert f(1) == 2\nassert f(2) == 3"


def test_train_and_held_out_from_one_file_by_seed_or_two_files(tmp_path):
    path = _jsonl(tmp_path / "g.jsonl", GSM8K_ROWS)
    one = get_task("jsonl", path=str(path), prompt_field="question", n_val=5, seed=1)
    again = get_task("jsonl", path=str(path), prompt_field="question", n_val=5, seed=1)
    other = get_task("jsonl", path=str(path), prompt_field="question", n_val=5, seed=2)
    assert [i.id for i in one.val_items] == [i.id for i in again.val_items] != [i.id for i in other.val_items]
    val = _parquet(tmp_path / "v.parquet", [{"question": "q", "answer": "1", "id": "v1"}])
    two = get_task("jsonl", path=str(path), val_path=str(val), prompt_field="question")
    assert len(two.train_items) == 20 and [i.id for i in two.val_items] == ["v1"]


@pytest.mark.parametrize(
    "row, where, message",
    [
        ({"prompt": "a"}, "row 2", "missing 'answer' (fields: prompt"),
        ({"prompt": "a", "answer": None}, "row 2", "field 'answer' must be a string, a number or a list of strings"),
        ({"prompt": "a", "answer": {"x": 1}}, "row 2", "must be a string, a number or a list of strings"),
        ({"prompt": [], "answer": "1"}, "row 2", "field 'prompt' is an empty messages list"),
        ({"prompt": [{"role": "user"}], "answer": "1"}, "row 2", "field 'prompt'[0] must be an object"),
        ({"prompt": [{"role": "bot", "content": "x"}], "answer": "1"}, "row 2", "role 'bot' is not one of"),
        ({"prompt": [{"role": "assistant", "content": "x"}], "answer": "1"}, "row 2", "ends with an assistant message"),
    ],
)
def test_bad_rows_name_file_row_and_field(tmp_path, row, where, message):
    rows = [{"prompt": "ok", "answer": "1"}, row]
    for path, at in ((_jsonl(tmp_path / "bad.jsonl", rows), ":2: "), (tmp_path / "bad.parquet", f":{where}: ")):
        if path.suffix == ".parquet":
            try:
                _parquet(path, rows)
            except Exception:  # pyarrow cannot store every malformed row (mixed types): JSONL covers those
                continue
            if row.get("answer", "") is None:  # a null in a column is a field the row does not have
                message = "missing 'answer'"
        with pytest.raises(TaskError) as e:
            read_items(path)
        assert str(e.value).startswith(f"{path}{at}") and message in str(e.value) and "\n" not in str(e.value)


def test_missing_pyarrow_names_the_extra(tmp_path, monkeypatch):
    path = tmp_path / "d.parquet"
    path.write_bytes(b"PAR1")
    real_import = builtins.__import__

    def no_pyarrow(name, *args, **kwargs):
        if name.startswith("pyarrow"):
            raise ImportError("No module named 'pyarrow'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pyarrow)
    with pytest.raises(TaskError, match=r"d.parquet: reading Parquet needs pyarrow: pip install 'scalerl\[parquet\]'"):
        read_items(path)


def test_corrupt_parquet_is_one_line(tmp_path):
    pytest.importorskip("pyarrow")
    path = tmp_path / "d.parquet"
    path.write_bytes(b"not parquet at all")
    with pytest.raises(TaskError, match=r"d.parquet: cannot read as Parquet"):
        read_items(path)


def test_config_types_checked(tmp_path):
    with pytest.raises(TaskError, match="chat_template must be true or false"):
        get_task("addition", chat_template="yes")
    with pytest.raises(TaskError, match="prompt_field must be a string"):
        get_task("addition", prompt_field=None)
