"""Task data files: JSONL or Parquet rows -> TaskItems, with configurable field names and chat `messages`.

RL datasets come as JSONL or Parquet, with the prompt under `prompt`, `question` or `problem`, or as a chat
`messages` list, and the answer under `answer` or `solution`. A row becomes a TaskItem whose `prompt` is plain
text; a `messages` prompt is also kept in `meta["messages"]`, for the chat template (shared/tasks/chat.py). Every bad
row is a one-line TaskError naming the file, the line (JSONL) or row (Parquet), and the field.
No torch here: the CLI validates data files before any process starts.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import MappingProxyType
from typing import Any, Iterator

from scalerl.shared.tasks.types import TaskError

__all__ = ["read_items", "read_records", "item_from_record", "MESSAGES_FIELD", "PARQUET_SUFFIXES"]

MESSAGES_FIELD = "messages"
PARQUET_SUFFIXES = (".parquet", ".pq")
ROLES = ("system", "user", "assistant")
NEEDS_PYARROW = "reading Parquet needs pyarrow: pip install 'scalerl[parquet]'"


def read_records(path: str | Path) -> Iterator[tuple[str, Any]]:
    """(where, record) for every row of a JSONL or Parquet file; `where` is "path:line" or "path:row N"."""
    if str(path).lower().endswith(PARQUET_SUFFIXES):
        yield from _parquet_records(path)
    else:
        yield from _jsonl_records(path)


def _jsonl_records(path: str | Path) -> Iterator[tuple[str, Any]]:
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise TaskError(f"{path}: cannot read: {exc.strerror or exc}") from None
    for lineno, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            yield where, json.loads(line.decode("utf-8"))
        except UnicodeDecodeError:
            raise TaskError(f"{where}: not UTF-8") from None
        except json.JSONDecodeError as exc:
            raise TaskError(f"{where}: not valid JSON ({exc.msg})") from None


def _parquet_records(path: str | Path) -> Iterator[tuple[str, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise TaskError(f"{path}: {NEEDS_PYARROW}") from None
    try:
        table = pq.read_table(path)
    except (OSError, ValueError) as exc:  # ArrowInvalid is a ValueError: one line either way
        raise TaskError(f"{path}: cannot read as Parquet: {exc}") from None
    for i, row in enumerate(table.to_pylist(), start=1):
        # A column holds every field for every row: a null there is a field this row does not have.
        yield f"{path}:row {i}", {k: v for k, v in row.items() if v is not None}


def read_items(path: str | Path, prompt_field: str = "prompt", answer_field: str = "answer") -> list:
    """TaskItems of a data file; blank JSONL lines skipped; ids unique; any bad row is a one-line TaskError."""
    items, seen = [], set()
    for where, record in read_records(path):
        item = item_from_record(record, where, prompt_field, answer_field)
        if item.id in seen:
            raise TaskError(f"{where}: duplicate id {item.id!r}")
        seen.add(item.id)
        items.append(item)
    if not items:
        raise TaskError(f"{path}: no items")
    return items


def item_from_record(record: Any, where: str, prompt_field: str = "prompt", answer_field: str = "answer"):
    """One row as a TaskItem: the prompt from `prompt_field` (a string or a messages list) or, when the row has
    no such field, from `messages`; the answer from `answer_field`; `id` optional; the rest goes to meta."""
    from scalerl.shared.tasks.types import TaskItem

    if not isinstance(record, dict):
        raise TaskError(f"{where}: expected a JSON object, got {type(record).__name__}")
    obj = dict(record)
    if prompt_field not in obj and MESSAGES_FIELD in obj:
        prompt_field = MESSAGES_FIELD
    for key in (prompt_field, answer_field):
        if key not in obj:
            raise TaskError(f"{where}: missing {key!r}{_fields_hint(obj)}")
    raw_prompt, answer = obj.pop(prompt_field), obj.pop(answer_field)
    meta: dict[str, Any] = {}
    if isinstance(raw_prompt, (list, tuple)):
        messages = _messages(raw_prompt, where, prompt_field)
        meta[MESSAGES_FIELD] = messages
        prompt = plain_text(messages)
    elif isinstance(raw_prompt, str) and raw_prompt:
        prompt = raw_prompt
    else:
        raise TaskError(f"{where}: field {prompt_field!r} must be a non-empty string or a messages list")
    item_id = obj.pop("id", where)
    if isinstance(item_id, bool) or not isinstance(item_id, (str, int)):
        raise TaskError(f"{where}: field 'id' must be a string or an integer")
    meta.update(obj)
    return TaskItem(str(item_id), prompt, _answer_text(answer, where, answer_field), MappingProxyType(meta), where)


def _answer_text(answer: Any, where: str, field: str) -> str:
    # A number keeps its JSON spelling; bools are numbers to Python but not here. A list of strings (a code
    # dataset's test cases) is one test program, a line each.
    if isinstance(answer, str):
        return answer
    if isinstance(answer, (int, float)) and not isinstance(answer, bool):
        return json.dumps(answer)
    if isinstance(answer, (list, tuple)) and answer and all(isinstance(a, str) for a in answer):
        return "\n".join(answer)
    raise TaskError(f"{where}: field {field!r} must be a string, a number or a list of strings")


def _messages(raw: list | tuple, where: str, field: str) -> tuple:
    if not raw:
        raise TaskError(f"{where}: field {field!r} is an empty messages list")
    out = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise TaskError(f"{where}: field {field!r}[{i}] must be an object with string 'role' and 'content'")
        if m["role"] not in ROLES:
            raise TaskError(f"{where}: field {field!r}[{i}]: role {m['role']!r} is not one of {', '.join(ROLES)}")
        out.append(MappingProxyType({"role": m["role"], "content": m["content"]}))
    if out[-1]["role"] == "assistant":
        raise TaskError(f"{where}: field {field!r} ends with an assistant message; a prompt ends with the user's turn")
    return tuple(out)


def plain_text(messages: tuple) -> str:
    """A messages list as one prompt for a tokenizer without a chat template: the contents, a blank line apart."""
    return "\n\n".join(m["content"] for m in messages)


def _fields_hint(obj: dict) -> str:
    keys = [k for k in obj if isinstance(k, str)][:8]
    return f" (fields: {', '.join(keys)}; set task.prompt_field / task.answer_field)" if keys else ""
