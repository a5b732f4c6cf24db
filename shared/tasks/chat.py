"""Prompts through the tokenizer's chat template.

A chat model (Qwen3, Llama) expects its prompts rendered by its own template; a prompt tokenised raw silently
ruins a run. `format_task` renders every item once, after the tokenizer is loaded: a plain prompt becomes one user
message, a `messages` list (shared/tasks/datasets.py) is rendered as it is, an optional system prompt goes first, and
`add_generation_prompt=True` ends the text where the assistant's answer starts. The rendered text replaces
`item.prompt`, so everything downstream (the trainer's requests, the held-out evaluator, `scalerl eval`) tokenises
the same text the same way, and the generator receives exactly those token ids.

On by default when the tokenizer has a template (`task.chat_template = None`); the built-in character tokenizer has
none, so its prompts are unchanged. No torch here.
"""

from __future__ import annotations

import copy
import dataclasses
from types import MappingProxyType
from typing import Any

from scalerl.shared.tasks.catalog import Task, TaskConfig
from scalerl.shared.tasks.datasets import MESSAGES_FIELD, plain_text
from scalerl.shared.tasks.types import TaskError, TaskItem

__all__ = ["format_task", "render_prompt", "uses_chat_template", "RENDERED"]

RENDERED = "chat_rendered"  # meta key: the prompt is chat-template output


def uses_chat_template(tokenizer: Any, cfg: TaskConfig) -> bool:
    """Whether `cfg`'s prompts go through the template; TaskError when it asks for one the tokenizer lacks."""
    has = bool(getattr(tokenizer, "chat_template", None))
    if cfg.chat_template and not has:
        raise TaskError("task.chat_template = true, but the model's tokenizer has no chat template")
    return has if cfg.chat_template is None else cfg.chat_template


def _messages(item: TaskItem, system_prompt: str | None) -> list[dict]:
    messages = [dict(m) for m in item.meta.get(MESSAGES_FIELD) or ({"role": "user", "content": item.prompt},)]
    if system_prompt and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system_prompt})
    return messages


def render_prompt(tokenizer: Any, item: TaskItem, system_prompt: str | None = None) -> str:
    """The chat-template text of `item`'s prompt, ready for the assistant's turn."""
    text = tokenizer.apply_chat_template(_messages(item, system_prompt), tokenize=False, add_generation_prompt=True)
    if not isinstance(text, str):  # some tokenizers return a list per conversation
        text = text[0]
    # A template that writes <bos> itself, for a tokenizer that also adds one (Llama): the trainer and evaluator
    # call tokenizer(prompt), which would double it. Leave that one to the tokenizer.
    bos = getattr(tokenizer, "bos_token", None)
    if bos and text.startswith(bos) and _adds_bos(tokenizer):
        text = text[len(bos) :]
    return text


def _adds_bos(tokenizer: Any) -> bool:
    bos_id = getattr(tokenizer, "bos_token_id", None)
    ids = tokenizer("x").input_ids
    return bos_id is not None and bool(ids) and ids[0] == bos_id


def format_task(task: Task, tokenizer: Any, cfg: TaskConfig) -> Task:
    """`task` with every prompt as the model will see it. Without a template, a system prompt or a messages list
    become plain text (contents a blank line apart)."""
    if uses_chat_template(tokenizer, cfg):
        first = (task.val_items or task.train_items)[0]
        _check_tokens(first, tokenizer, cfg.system_prompt)

        def render(item: TaskItem) -> TaskItem:
            meta = MappingProxyType({**item.meta, RENDERED: True})
            return dataclasses.replace(item, prompt=render_prompt(tokenizer, item, cfg.system_prompt), meta=meta)

        return _with_items(task, render)
    if not cfg.system_prompt:
        return task  # plain prompts and messages lists already hold their plain text
    prefix = cfg.system_prompt

    def plain(item: TaskItem) -> TaskItem:
        messages = item.meta.get(MESSAGES_FIELD)
        if messages and messages[0]["role"] == "system":
            return item
        return dataclasses.replace(item, prompt=plain_text(({"content": prefix}, {"content": item.prompt})))

    return _with_items(task, plain)


def _with_items(task: Task, fn: Any) -> Task:
    out = copy.copy(task)  # keeps the verifier and whatever else the task carries
    out.train_items = [fn(i) for i in task.train_items]
    out.val_items = [fn(i) for i in task.val_items]
    return out


def _check_tokens(item: TaskItem, tokenizer: Any, system_prompt: str | None) -> None:
    """tokenizer(rendered text), which the trainer and the evaluator send, must give the template's own ids: refuse
    a tokenizer where it does not rather than train on prompts the model was never meant to see."""
    want = tokenizer.apply_chat_template(_messages(item, system_prompt), tokenize=True, add_generation_prompt=True)
    if hasattr(want, "keys"):  # transformers 5 returns a BatchEncoding
        want = want["input_ids"]
    got = tokenizer(render_prompt(tokenizer, item, system_prompt)).input_ids
    if list(got) != list(want):
        raise TaskError(
            f"{item.where or item.id}: tokenizing the chat template's text gives other ids than the template "
            f"({len(got)} vs {len(want)} tokens); set task.chat_template = false and render prompts yourself"
        )
