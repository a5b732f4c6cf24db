"""Tasks: prompts with answers, a fixed held-out split, and a verifier.

Built in: "addition" (prompt "37+45=", completion "82") and "addition_steps" (the same
sums, worked column by column before "Answer:", so a forced length interruption has
steps to cut). "jsonl" reads your own JSONL or Parquet rows (shared/tasks/datasets.py: field names, chat messages).
Every split is a pure function of the config, so each process that loads a task sees the same items.
No torch here: the CLI may import this module.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Mapping

from scalerl.shared.tasks.datasets import read_items
from scalerl.shared.tasks.types import TaskError, TaskItem, VerifyResult
from scalerl.shared.tasks.verifiers import make_verifier

__all__ = [
    "TaskError",
    "TaskItem",
    "TaskConfig",
    "TaskEntry",
    "Task",
    "TaskMix",
    "task_label",
    "check_task_entries",
    "load_task",
    "get_task",
    "TASKS",
    "addition_steps_solution",
    "STEPS_DELIMITER",
    "INTERRUPTION_PREFIX",
    "PAPER_INTERRUPTION_TEXT",
    "PAPER_THINK_END",
    "task_delimiter",
    "interruption_defaults",
    "interruption_problem",
]

STEPS_DELIMITER = "Answer:"
# What a generator appends when it cuts a completion short; the task adds its delimiter.
INTERRUPTION_PREFIX = "\nOkay, time is up. "
# ScaleRL (Khatri et al. 2025): the forced text and the end of thinking, for tasks that have no delimiter of their own.
PAPER_INTERRUPTION_TEXT = "Okay, time is up. Let me stop thinking and formulate a final answer now. </think>"
PAPER_THINK_END = "</think>"


@dataclass(frozen=True)
class TaskConfig:
    """The `task` section of a run config."""

    name: str = "addition"  # "addition", "addition_steps" or "jsonl"
    seed: int = 0  # decides which items are held out
    n_val: int | None = None  # held-out items; None: BUILTIN_N_VAL (500) for addition, ~10% (<= 256) for jsonl
    path: str | None = None  # jsonl: the data file
    val_path: str | None = None  # jsonl: a separate held-out file (then path is all training)
    verifier: str | None = None  # "exact", "numeric" or "module:function"; None: the task's own
    delimiter: str | None = None  # jsonl: verify only the text after the last delimiter
    prompt_field: str = "prompt"  # jsonl: the field with the prompt (a string or a chat messages list)
    answer_field: str = "answer"  # jsonl: the field with the answer (a string, a number or a list of test lines)
    # Render prompts with the tokenizer's chat template; None: when it has one (the built-in tokenizer has none).
    chat_template: bool | None = None
    system_prompt: str | None = None  # a system message before every prompt (chat template only)

    def check(self) -> None:
        """What is wrong without reading any data. from_dict runs it on [trainer.task] and every [[trainer.tasks]]
        entry, so `config show` and `train --dry-run` refuse what `train` would (they took n_val = 0, which the
        built-in tasks read as their default 500, and a data file on a built-in task)."""
        problem = task_problem(self)
        if problem is not None:
            raise ValueError(problem)


@dataclass(frozen=True)
class TaskEntry(TaskConfig):
    """One `[[trainer.tasks]]` table of a multi-task run: a task, its label and its sampling weight."""

    # Names the task in item ids ("label/id"), in metrics.jsonl's `task` field and in curve names ("RUN/label").
    # None: the task's name for built-ins, the data file's stem for jsonl.
    label: str | None = None
    weight: float = 1.0  # share of training prompts drawn from this task: weight / sum of weights


_LABEL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


def task_label(cfg: TaskConfig) -> str:
    """The label of a task entry: its own, else the task's name (built-ins) or the data file's stem (jsonl)."""
    label = getattr(cfg, "label", None)
    if label is None:
        label = Path(cfg.path).stem if cfg.name == "jsonl" and cfg.path else cfg.name
    return label


def check_task_entries(entries: list[TaskEntry] | tuple[TaskEntry, ...]) -> None:
    """Labels unique and usable in ids and curve names (no "/"), weights positive: a ValueError naming the entry."""
    seen: set[str] = set()
    for i, e in enumerate(entries):
        label = task_label(e)
        if not label or not set(label) <= _LABEL_CHARS:
            raise ValueError(f"tasks[{i}]: label {label!r} must be letters, digits, '_', '.' or '-'")
        if label in seen:
            raise ValueError(f"tasks[{i}]: label {label!r} used twice (set tasks[{i}].label)")
        seen.add(label)
        if not e.weight > 0:
            raise ValueError(f"tasks[{i}] ({label}): weight must be > 0, not {e.weight}")
        if e.name == "jsonl" and not e.path:
            raise ValueError(f"tasks[{i}] ({label}): name = 'jsonl' needs path")


class Task:
    """Train and held-out items plus `verify(completion, item) -> (reward, details)`."""

    def __init__(
        self,
        name: str,
        train_items: list[TaskItem],
        val_items: list[TaskItem],
        verifier: str = "exact",
        delimiter: str | None = None,
    ):
        self.name = name
        self.train_items = train_items
        self.val_items = val_items
        self.verifier = verifier
        self.delimiter = delimiter
        # Text for a forced end of thinking; None when the task has no delimiter to end on (generators then
        # fall back to the paper's text: interruption_defaults).
        self.interruption_text = interruption_defaults(delimiter)[0] if delimiter else None
        self._verify = make_verifier(verifier, delimiter)

    def verify(self, completion: str, item: TaskItem) -> VerifyResult:
        """Reward (1.0 correct, 0.0 otherwise for built-ins) and msgpack-safe details."""
        return self._verify(completion, item)

    @property
    def verifier_spec(self) -> str:
        """What a GenerationRequest carries: "spec|delimiter" makes the generator verify only the final answer."""
        return f"{self.verifier}|{self.delimiter}" if self.delimiter else self.verifier

    def spec_for(self, item_id: str) -> str:
        """The verifier spec of one training item (a TaskMix answers per task)."""
        return self.verifier_spec

    def __repr__(self) -> str:
        return (
            f"Task({self.name!r}, train={len(self.train_items)}, val={len(self.val_items)}, "
            f"verifier={self.verifier!r}, delimiter={self.delimiter!r})"
        )


class TaskMix:
    """Several labelled tasks as one pool of training prompts, for a multi-task run.

    Training item ids are "label/id", so items of different tasks never collide (and the label says which task's
    verifier scores them); each task keeps its own held-out split, evaluated apart (`parts`). The sampling weights
    are used by the prompt scheduler (trainer_service/prompt_pipeline.py MixScheduler)."""

    def __init__(self, parts: list[tuple[str, float, Task]]):
        if len(parts) < 2:
            raise ValueError("a TaskMix needs at least two tasks")
        self.parts = list(parts)
        self.by_label = {label: task for label, _, task in parts}
        self.weights = {label: weight for label, weight, _ in parts}
        self.train_items = [
            dataclasses.replace(item, id=f"{label}/{item.id}") for label, _, task in parts for item in task.train_items
        ]
        self.name = "+".join(label for label, _, _ in parts)

    def label_of(self, item_id: str) -> str:
        return item_id.partition("/")[0]

    def spec_for(self, item_id: str) -> str:
        return self.by_label[self.label_of(item_id)].verifier_spec

    def verify(self, completion: str, item: TaskItem) -> VerifyResult:
        return self.by_label[self.label_of(item.id)].verify(completion, item)

    def __repr__(self) -> str:
        return f"TaskMix({', '.join(f'{label}: {task!r} x{weight:g}' for label, weight, task in self.parts)})"


def addition_steps_solution(a: int, b: int) -> str:
    """Column-by-column working, then the answer: 37+45 -> "7+5=12;3+4+1=8;Answer: 82"."""
    steps, carry = [], 0
    for i, (da, db) in enumerate(zip(reversed(str(a)), reversed(str(b)))):
        total = int(da) + int(db) + carry
        steps.append(f"{da}+{db}={total}" if i == 0 else f"{da}+{db}+{carry}={total}")
        carry = total // 10
    return ";".join(steps) + f";{STEPS_DELIMITER} {a + b}"


def _split(items: list[TaskItem], n_val: int, seed: int, what: str) -> tuple[list, list]:
    if len(items) < 2:
        # One item cannot be both held out and trained on; the range below would read "between 1 and 0".
        raise TaskError(
            f"{what}: {len(items)} item(s); a task needs at least 2, n_val held out for evaluation and the rest to "
            "train on (or give val_path)"
        )
    if not 0 < n_val < len(items):
        raise TaskError(f"{what}: n_val={n_val} must be between 1 and {len(items) - 1}")
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    return [items[i] for i in order[n_val:]], [items[i] for i in order[:n_val]]


def _addition_items(steps: bool) -> list[TaskItem]:
    items = []
    for a in range(10, 100):
        for b in range(10, 100):
            solution = addition_steps_solution(a, b) if steps else str(a + b)
            items.append(TaskItem(f"add-{a}+{b}", f"{a}+{b}=", str(a + b), MappingProxyType({"solution": solution})))
    return items


def task_delimiter(cfg: TaskConfig) -> str | None:
    """The final-answer delimiter `cfg`'s task will have, without reading its data (config resolution uses it)."""
    return STEPS_DELIMITER if cfg.name == "addition_steps" else cfg.delimiter if cfg.name == "jsonl" else None


def interruption_defaults(delimiter: str | None) -> tuple[str, str]:
    """(interruption text, think-end text) for a task with this delimiter.

    With a delimiter, thinking ends where the verifier starts reading: the forced text ends with the delimiter (so
    the model only has to write the answer) and a model that writes the delimiter itself has stopped thinking.
    Without one, the paper's text and `</think>`."""
    if delimiter:
        return INTERRUPTION_PREFIX + delimiter, delimiter
    return PAPER_INTERRUPTION_TEXT, PAPER_THINK_END


def interruption_problem(text: str, delimiter: str | None) -> str | None:
    """Why `text` cannot be forced into completions of a task with this delimiter, or None when it can.

    The verifier reads only what follows the last delimiter: a text that does not end with it leaves the answer
    written after the interruption unread (or reads the text's own tail as the answer)."""
    if not delimiter:
        return None
    head, sep, tail = text.rpartition(delimiter)
    if sep and not tail.strip():
        return None
    return f"does not end with the task's delimiter {delimiter!r}"


BUILTIN_N_VAL = 500  # held-out items of the built-in tasks when n_val is unset


def _builtin_n_val(cfg: TaskConfig) -> int:
    return BUILTIN_N_VAL if cfg.n_val is None else cfg.n_val


def _addition(cfg: TaskConfig) -> Task:
    train, val = _split(_addition_items(steps=False), _builtin_n_val(cfg), cfg.seed, cfg.name)
    return Task(cfg.name, train, val, cfg.verifier or "exact")


def _addition_steps(cfg: TaskConfig) -> Task:
    train, val = _split(_addition_items(steps=True), _builtin_n_val(cfg), cfg.seed, cfg.name)
    return Task(cfg.name, train, val, cfg.verifier or "exact", task_delimiter(cfg))


def read_jsonl(path: str | Path, prompt_field: str = "prompt", answer_field: str = "answer") -> list[TaskItem]:
    """Items of a JSONL (or, by its extension, Parquet) file; any bad line is a one-line TaskError naming it."""
    return read_items(path, prompt_field, answer_field)


def _jsonl(cfg: TaskConfig) -> Task:
    if not cfg.path:
        raise TaskError("task 'jsonl' needs a path")
    items = read_jsonl(cfg.path, cfg.prompt_field, cfg.answer_field)
    if cfg.val_path:
        train, val = items, read_jsonl(cfg.val_path, cfg.prompt_field, cfg.answer_field)
        clash = {i.id for i in train} & {i.id for i in val}
        if clash:
            raise TaskError(f"{cfg.val_path}: ids also in {cfg.path}, e.g. {sorted(clash)[0]!r}")
    else:
        n_val = max(1, min(256, len(items) // 10)) if cfg.n_val is None else cfg.n_val
        train, val = _split(items, n_val, cfg.seed, cfg.path)
    return Task(cfg.name, train, val, cfg.verifier or "exact", cfg.delimiter)


TASKS: dict[str, Callable[[TaskConfig], Task]] = {
    "addition": _addition,
    "addition_steps": _addition_steps,
    "jsonl": _jsonl,
}


def load_task(cfg: TaskConfig | Mapping[str, Any] | None = None) -> Task:
    """The task a config describes (a TaskConfig, a plain mapping, or None for defaults)."""
    if cfg is None:
        cfg = TaskConfig()
    elif not isinstance(cfg, TaskConfig):
        known = {f.name for f in dataclasses.fields(TaskConfig)}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise TaskError(f"task config: unknown option {unknown[0]!r} (known: {', '.join(sorted(known))})")
        cfg = TaskConfig(**cfg)
    _check_types(cfg)
    problem = task_problem(cfg)
    if problem is not None:
        raise TaskError(problem)
    return TASKS[cfg.name](cfg)


def task_problem(cfg: TaskConfig) -> str | None:
    """One line naming what is wrong with a task config of the right types, short of its data; None if nothing."""
    if cfg.name not in TASKS:
        return f"unknown task {cfg.name!r} (known: {', '.join(TASKS)})"
    if cfg.name != "jsonl":  # the built-in tasks make their own items: a data file or its fields would be ignored
        for key in ("path", "val_path", "delimiter", "prompt_field", "answer_field"):
            if getattr(cfg, key) != getattr(TaskConfig, key):
                return f"task {key} = {getattr(cfg, key)!r} acts only with the jsonl task, not {cfg.name!r}"
    if cfg.n_val is not None and cfg.n_val < 1:
        return f"n_val must be >= 1 (the items held out for evaluation; unset for the task's default), not {cfg.n_val}"
    return None


def _check_types(cfg: TaskConfig) -> None:
    for f in dataclasses.fields(TaskConfig):
        value = getattr(cfg, f.name)
        want = int if f.name in ("seed", "n_val") else bool if f.name == "chat_template" else str
        optional = f.name not in ("name", "seed", "prompt_field", "answer_field")
        if value is None and optional:
            continue
        if isinstance(value, want) and (want is bool or not isinstance(value, bool)):
            continue
        kind = {int: "an int", bool: "true or false", str: "a string"}[want]
        raise TaskError(f"task config: {f.name} must be {kind}, not {value!r}")


def get_task(name: str = "addition", **opts: Any) -> Task:
    """Shorthand: get_task("jsonl", path="data.jsonl", verifier="numeric")."""
    return load_task({"name": name, **opts})
