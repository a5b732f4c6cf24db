"""Chat templates: the rendered prompt is what the trainer tokenises and what the generator receives."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("transformers")

from transformers import PreTrainedTokenizerFast  # noqa: E402

from scalerl.generator_service.config import GeneratorConfig  # noqa: E402
from scalerl.generator_service.rollout_builder import TokenSettings, engine_requests  # noqa: E402
from scalerl.shared.models import tokenizer as char_tok  # noqa: E402
from scalerl.shared.tasks.catalog import TaskConfig, get_task, load_task  # noqa: E402
from scalerl.shared.tasks.chat import format_task, render_prompt  # noqa: E402
from scalerl.shared.tasks.types import TaskError
from scalerl.shared.wire.messages import GenerationRequest, SamplingParams  # noqa: E402

# ChatML, as Qwen writes it, behind a <bos> the tokenizer also adds itself (as Llama's does): the double-<bos> trap.
TEMPLATE = (
    "<bos>{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def chat_tokenizer_dir(tmp_path_factory):
    """A local chat tokenizer built from scratch: the character tokenizer plus ChatML's two special tokens."""
    directory = tmp_path_factory.mktemp("chat_tok")
    tok = PreTrainedTokenizerFast(
        tokenizer_object=char_tok.build_char_tokenizer(),
        bos_token=char_tok.BOS,
        eos_token=char_tok.EOS,
        pad_token=char_tok.PAD,
        unk_token=char_tok.UNK,
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
        clean_up_tokenization_spaces=False,
    )
    tok.chat_template = TEMPLATE
    tok.save_pretrained(directory)
    return directory


@pytest.fixture
def data(tmp_path):
    rows = [{"question": f"{a}+{a}=?", "answer": str(2 * a)} for a in range(10)]
    rows.append(
        {"messages": [{"role": "system", "content": "Own system."}, {"role": "user", "content": "1+1?"}], "answer": "2"}
    )
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_trainer_tokens_are_the_templates_and_reach_the_generator_unchanged(chat_tokenizer_dir, data):
    tok = char_tok.load_tokenizer(chat_tokenizer_dir)
    cfg = TaskConfig(name="jsonl", path=data, prompt_field="question", n_val=3, system_prompt="Be brief.")
    task = format_task(load_task(cfg), tok, cfg)
    raw = load_task(cfg)
    for item, source in zip(task.train_items + task.val_items, raw.train_items + raw.val_items):
        messages = [dict(m) for m in source.meta.get("messages", [])] or [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": source.prompt},
        ]
        want = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)["input_ids"]
        trainer_ids = tok(item.prompt).input_ids  # what the trainer's requests and the evaluator send
        assert trainer_ids == want and trainer_ids.count(char_tok.BOS_ID) == 1
        assert item.prompt.endswith("<|im_start|>assistant\n") and item.answer == source.answer
        request = GenerationRequest(
            group_id="g0",
            prompt_ids=np.asarray(trainer_ids, dtype=np.int32),
            n_samples=2,
            sampling=SamplingParams(temperature=1.0, max_new_tokens=4),
            prompt_index=0,
            item_id=item.id,
            verifier="exact",
            answer=item.answer,
        )
        engine = engine_requests(0, request, GeneratorConfig(), TokenSettings((char_tok.EOS_ID,), (), ()))
        assert all(list(r.prompt_token_ids) == want for r in engine)  # the generator decodes from exactly these ids
        assert tok.decode(want) == "<bos>" + item.prompt  # and they spell the rendered text
    own = next(i for i in task.train_items + task.val_items if "Own system." in i.prompt)
    assert "Be brief." not in own.prompt  # a dataset's own system message wins over task.system_prompt


def test_plain_prompts_without_a_template_are_unchanged():
    tok = char_tok.load_tokenizer(_char_dir())
    cfg = TaskConfig()
    task = get_task("addition")
    assert format_task(task, tok, cfg) is task
    with pytest.raises(TaskError, match="has no chat template"):
        format_task(task, tok, TaskConfig(chat_template=True))
    prefixed = format_task(task, tok, TaskConfig(system_prompt="Add."))
    assert prefixed.train_items[0].prompt == "Add.\n\n" + task.train_items[0].prompt


def test_template_can_be_switched_off(chat_tokenizer_dir, data):
    tok = char_tok.load_tokenizer(chat_tokenizer_dir)
    cfg = TaskConfig(name="jsonl", path=data, prompt_field="question", n_val=3, chat_template=False)
    assert format_task(load_task(cfg), tok, cfg).train_items[0].prompt.endswith("=?")
    item = load_task(cfg).train_items[0]
    assert render_prompt(tok, item).startswith("<|im_start|>user\n")  # <bos> left to the tokenizer


_CHAR_DIR = None


def _char_dir():
    global _CHAR_DIR
    if _CHAR_DIR is None:
        import tempfile

        _CHAR_DIR = tempfile.mkdtemp(prefix="chartok-")
        char_tok.save_char_tokenizer(_CHAR_DIR)
    return _CHAR_DIR
