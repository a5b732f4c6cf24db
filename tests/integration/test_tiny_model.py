"""The built-in tiny model: size, HF round trip, tokenizer, cached deterministic warm start."""

import json
import subprocess
import sys
import time

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from scalerl.shared.models import tokenizer as char_tok
from scalerl.shared.models.tiny_model import (
    WarmStart,
    build_tiny_model,
    count_parameters,
    default_cache_root,
    ensure_tiny_model,
    evaluate_model_dir,
    greedy_completions,
    save_model_dir,
    tiny_model_cached,
)
from scalerl.shared.tasks.catalog import TaskConfig, get_task

HF_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json")


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_model_is_about_one_million_parameters_with_vllm_friendly_shapes():
    model = build_tiny_model()
    assert 0.9e6 < count_parameters(model) < 1.1e6
    cfg = model.config
    assert cfg.model_type == "qwen2" and cfg.vocab_size == len(char_tok.VOCAB)
    assert (cfg.hidden_size // cfg.num_attention_heads) % 8 == 0
    assert cfg.num_attention_heads % cfg.num_key_value_heads == 0
    same = build_tiny_model()
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), same.parameters()))


def test_round_trip_through_transformers_auto_classes(tmp_path):
    model = build_tiny_model(seed=3).eval()
    save_model_dir(model, tmp_path)
    assert all((tmp_path / name).is_file() for name in HF_FILES)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForCausalLM"] and config["rope_theta"] == 10000.0
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(tmp_path)
    batch = tok(["37+45=", "9+9=18;"], padding=True, return_tensors="pt")
    with torch.no_grad():
        want = model(**batch).logits
        got = loaded(**batch).logits
    assert torch.equal(want, got)
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (char_tok.PAD_ID, char_tok.BOS_ID, char_tok.EOS_ID)
    texts = greedy_completions(loaded, tok, ["1+1=", "12+34="], max_new_tokens=5)
    assert len(texts) == 2 and all(len(t) <= 5 for t in texts)


def test_tokenizer_is_exact_on_every_task_text(tmp_path):
    char_tok.save_char_tokenizer(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    steps = get_task("addition_steps")
    texts = [i.prompt + i.meta["solution"] for i in steps.train_items[:300] + steps.val_items]
    texts += [steps.interruption_text, "\\boxed{-3/4}, x_1 = (a*b) % 7!\n", "  two  spaces "]
    for text in texts:
        ids = tok(text)["input_ids"]
        assert ids[0] == char_tok.BOS_ID and len(ids) == len(text) + 1  # one token per character
        assert char_tok.UNK_ID not in ids
        assert tok.decode(ids, skip_special_tokens=True) == text
        assert ids[1:] == char_tok.encode(text) and char_tok.decode(ids) == text
    assert tok("é")["input_ids"] == [char_tok.BOS_ID, char_tok.UNK_ID]


def test_untrained_model_is_cached(tmp_path):
    path = ensure_tiny_model(tmp_path, warm=False)
    assert all((path / name).is_file() for name in HF_FILES)
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert ensure_tiny_model(tmp_path, warm=False) == path
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_a_run_scored_by_another_verifier_shares_the_cached_model(tmp_path):
    """The verifier only scores; a key that held it made `scalerl eval --verifier numeric` build for five minutes."""
    path = ensure_tiny_model(tmp_path, warm=False)
    numeric = TaskConfig(verifier="numeric")
    assert tiny_model_cached(tmp_path, numeric, warm=False)
    assert ensure_tiny_model(tmp_path, numeric, warm=False) == path
    # The seed decides which items are held out, so which ones a warm start may train on: a model of its own.
    assert not tiny_model_cached(tmp_path, TaskConfig(seed=1), warm=False)


def test_concurrent_callers_share_one_build(tmp_path):
    code = (
        "import logging, sys; logging.basicConfig(level=logging.INFO);"
        "from scalerl.shared.models.tiny_model import ensure_tiny_model;"
        "print(ensure_tiny_model(sys.argv[1], warm=False))"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert outs[0][0] == outs[1][0] and outs[0][0].strip().endswith("-init")
    assert sum(err.count("INFO:scalerl.shared.models.tiny_model:building") for _, err in outs) == 1
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == [
        outs[0][0].strip().rsplit("/", 1)[1]
    ]


def test_warm_start_is_deterministic(tmp_path):
    # Targets it cannot reach make both runs take exactly max_steps + noise_max_steps steps.
    recipe = WarmStart(max_steps=30, eval_every=15, skill_target=2.0, noise_max_steps=10, sample_target=-1.0)
    a = ensure_tiny_model(tmp_path / "a", recipe=recipe)
    b = ensure_tiny_model(tmp_path / "b", recipe=recipe)
    assert a.name == b.name
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    record = json.loads((a / "scalerl_tiny.json").read_text())
    assert (record["steps"], record["noise_steps"]) == (30, 10)
    untrained = ensure_tiny_model(tmp_path / "a", warm=False)
    assert (untrained / "model.safetensors").read_bytes() != (a / "model.safetensors").read_bytes()


@pytest.fixture(scope="session")
def warm_addition():
    # The shared cache: by the slow suite the fast tests have built this model (a fresh build is 4 minutes on a slow
    # 2-core machine, and test_warm_start_is_deterministic builds small ones from scratch).
    root = default_cache_root()
    start = time.perf_counter()
    path = ensure_tiny_model(root, task="addition")
    return root, path, time.perf_counter() - start


@pytest.mark.slow
def test_warm_start_lands_in_the_band_and_second_call_is_instant(warm_addition):
    root, path, seconds = warm_addition
    record = json.loads((path / "scalerl_tiny.json").read_text())
    rate = evaluate_model_dir(path, "addition")
    assert rate == record["val_pass_rate"]
    # It learned to add (phase 1) and then to sample careless answers (phase 2): RL's starting point.
    assert record["dev_pass_rate"] >= 0.9, record
    assert 0.1 <= record["val_sample_pass_rate"] <= 0.3, record
    start = time.perf_counter()
    assert ensure_tiny_model(root, task="addition") == path
    assert time.perf_counter() - start < 0.5
    print(
        f"warm start: {record['steps']} + {record['noise_steps']} steps, {seconds:.1f} s, held-out greedy "
        f"{rate:.3f}, sampled {record['val_sample_pass_rate']:.3f}"
    )


@pytest.mark.slow
def test_steps_variant_warm_start_answers_after_interruption(tmp_path):
    path = ensure_tiny_model(task="addition_steps")  # the shared cache, as test_full_recipe's
    rate = evaluate_model_dir(path, "addition_steps")
    assert rate >= 0.5  # measured 0.67: it can work the steps (greedy), and samples careless answers
    record = json.loads((path / "scalerl_tiny.json").read_text())
    assert record["dev_sample_pass_rate"] <= 0.2  # where the noise phase stops
    # Held out, the sampled pass rate lands near it, and depends on the CPU's kernels (0.094 on one CI machine, above
    # 0.1 on another): still right sometimes, so groups of 8 mostly carry a reward to learn from.
    assert 0.05 <= record["val_sample_pass_rate"] <= 0.3, record
    task = get_task("addition_steps")
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    items = task.val_items[:100]
    # Force the interruption right after the prompt: the model must still write an answer.
    texts = greedy_completions(model, tok, [i.prompt + task.interruption_text for i in items], 8)
    answered = [task.verify(task.interruption_text + t, i)[1]["has_answer"] for t, i in zip(texts, items)]
    assert sum(answered) >= 90


def test_near_misses_change_only_the_final_answer():
    import random

    from scalerl.shared.models.tiny_model import NEAR_MISSES, _near_miss
    from scalerl.shared.tasks.types import TaskItem

    rng = random.Random(0)
    item = get_task("addition_steps").train_items[0]
    head = item.meta["solution"][: -len(item.answer)]
    for _ in range(50):
        wrong = _near_miss(item.meta["solution"], item, rng)
        assert wrong.startswith(head) and int(wrong[len(head) :]) - int(item.answer) in NEAR_MISSES
    text = TaskItem("t", "capital of France?", "Paris")
    assert _near_miss("Paris", text, rng) == "Paris"


def test_expected_sample_pass_rate_is_the_reference_probability():
    from types import SimpleNamespace

    from scalerl.shared.models.tiny_model import expected_sample_pass_rate

    class Uniform(torch.nn.Module):  # every token equally likely: a 2-token reference has p = 1/100**2
        def forward(self, input_ids):
            return SimpleNamespace(logits=torch.zeros(*input_ids.shape, 100))

    ids = torch.tensor([[1, 5, 6, 7, 0], [1, 5, 6, 7, 8]])
    labels = torch.tensor([[-100, -100, 6, 7, -100], [-100, -100, -100, -100, 8]])
    assert expected_sample_pass_rate(Uniform(), ids, labels) == pytest.approx((1e-4 + 1e-2) / 2)


def test_the_warm_start_reports_progress(tmp_path):
    """The first `scalerl train` builds for minutes: every measurement reaches the caller's progress display."""
    seen = []
    recipe = WarmStart(max_steps=20, eval_every=10, noise_max_steps=10, noise_eval_every=5)
    ensure_tiny_model(tmp_path, recipe=recipe, progress=lambda *a: seen.append(a))
    skill = [s for s in seen if s[0].startswith("skill")]
    assert [s[1] for s in skill] == [10, 20] and all(s[2] == 20 and 0 <= s[3] <= 1 for s in skill)
