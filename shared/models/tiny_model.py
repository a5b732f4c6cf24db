"""The built-in tiny model: a ~1M-parameter Qwen2 with a character tokenizer.

`ensure_tiny_model()` builds it, gives it a supervised warm start on a built-in task, and
caches the result as an ordinary Hugging Face directory (config.json, model.safetensors,
tokenizer files, generation_config.json) that transformers and vLLM load offline.

The warm start imitates the regime RL post-training lives in: a base model that can solve
the task but samples careless answers. Phase 1 trains on reference completions until greedy
decoding solves `skill_target` of a dev slice. Phase 2 fine-tunes on noisy demonstrations,
where `noise_fraction` of the answers are near misses, until the pass rate a T=1 sampler
would get falls to `sample_target`. RL then has a policy that is right sometimes, rewards
that vary within a group, and a known ceiling to climb towards. Both phases stop on measured
rates, not step counts, because the step at which this model learns to carry varies.

Imports torch: never import this module from scalerl.shared.__init__ or the CLI.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import random
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, GenerationConfig, PreTrainedModel, Qwen2Config, Qwen2ForCausalLM

from scalerl.shared.models import tokenizer as char_tok
from scalerl.shared.tasks.catalog import Task, TaskConfig, load_task
from scalerl.shared.tasks.types import TaskError, TaskItem
from scalerl.shared.wire.weights.checkpoint_names import checkpoint_tensors

log = logging.getLogger(__name__)

# hidden 128 / 4 heads keeps head_dim at 32 (vLLM wants a multiple of 8); 2 kv heads
# exercise grouped-query attention like real Qwen2 checkpoints. ~1.0M parameters.
TINY_ARCH: dict[str, Any] = dict(
    hidden_size=128,
    intermediate_size=512,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=char_tok.MODEL_MAX_LENGTH,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
)
ROPE_THETA = 10000.0
# The tasks a tiny model is warm-started on; any other task (a jsonl file) gets the addition model.
WARM_START_TASKS = ("addition", "addition_steps")
# Bump when a change here alters the weights a given recipe produces.
CACHE_VERSION = 2


@dataclasses.dataclass(frozen=True)
class WarmStart:
    """Supervised warm-start recipe; every field is part of the cache key."""

    lr: float = 1e-3
    batch_size: int = 64
    warmup_steps: int = 20
    max_steps: int = 8000
    eval_every: int = 25
    dev_items: int = 256  # taken from the training items and not trained on
    # Phase 1 (reference completions) ends when the dev greedy pass rate reaches this.
    skill_target: float = 0.9
    # Phase 2 (noisy demonstrations): this share of answers is replaced by a near miss.
    noise_fraction: float = 0.7
    noise_lr: float = 1e-4
    noise_max_steps: int = 1000
    noise_eval_every: int = 10
    # Phase 2 ends when the expected T=1 sampled pass rate on the dev slice falls to this.
    sample_target: float = 0.2
    # Share of examples cut mid-steps and answered after the task's interruption text
    # (tasks with a delimiter only), so that forced interruptions produce an answer.
    interrupted_fraction: float = 0.25
    seed: int = 0


# Near misses of phase 2: off-by-a-few and wrong-carry answers, as careless arithmetic makes.
NEAR_MISSES = tuple(d for d in range(-9, 10) if d) + (10, -10, 20, -20)


def char_model_config(config_cls: Any, **arch: Any) -> Any:
    """A transformers config of `arch` over the character tokenizer (the tiny dense model's, the tiny MoE's)."""
    return config_cls(
        vocab_size=len(char_tok.VOCAB),
        rope_parameters={"rope_type": "default", "rope_theta": ROPE_THETA},
        bos_token_id=char_tok.BOS_ID,
        eos_token_id=char_tok.EOS_ID,
        pad_token_id=char_tok.PAD_ID,
        **arch,
    )


def build_char_model(model_cls: Any, config: Any, seed: int) -> Any:
    """A freshly initialised model over the character tokenizer; the caller's RNG state is left untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(config)
    model.generation_config = GenerationConfig(
        bos_token_id=char_tok.BOS_ID, eos_token_id=char_tok.EOS_ID, pad_token_id=char_tok.PAD_ID
    )
    return model


def tiny_config() -> Qwen2Config:
    return char_model_config(Qwen2Config, **TINY_ARCH)


def build_tiny_model(seed: int = 0) -> Qwen2ForCausalLM:
    """A freshly initialised tiny model; the caller's RNG state is left untouched."""
    return build_char_model(Qwen2ForCausalLM, tiny_config(), seed)


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # tied weights are counted once


def save_model_dir(model: PreTrainedModel, directory: str | Path) -> None:
    """Weights (under checkpoint names: an MoE's fused experts one tensor per expert, as vLLM loads them), config,
    generation config and the character tokenizer, as an HF directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {name: t.detach() for name, t in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)  # loaders re-tie it from model.embed_tokens.weight
    save_file(checkpoint_tensors(state), directory / "model.safetensors", metadata={"format": "pt"})
    model.config.architectures = [type(model).__name__]
    model.config.save_pretrained(directory)
    model.generation_config.save_pretrained(directory)
    char_tok.save_char_tokenizer(directory)
    # Readers built on transformers 4.x (e.g. a vLLM install) look for these older keys.
    path = directory / "config.json"
    config = json.loads(path.read_text())
    config.setdefault("rope_theta", ROPE_THETA)
    config.setdefault("torch_dtype", "float32")
    if getattr(model.config, "num_experts", None) is not None:  # transformers 5 writes num_local_experts
        config.setdefault("num_experts", model.config.num_experts)
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def load_model_dir(directory: str | Path, attn_implementation: str | None = None) -> tuple[PreTrainedModel, Any]:
    """The model in FP32 and its tokenizer. attn_implementation None: transformers' own choice (sdpa here)."""
    kw = {} if attn_implementation is None else {"attn_implementation": attn_implementation}
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32, **kw)
    return model.eval(), char_tok.load_tokenizer(directory)


@torch.no_grad()  # not inference_mode: the same model goes on training afterwards
def greedy_completions(
    model: PreTrainedModel, tokenizer: Any, prompts: Sequence[str], max_new_tokens: int, batch_size: int = 256
) -> list[str]:
    """Greedy completion text of each prompt, special tokens dropped."""
    was_training = model.training
    model.eval()
    out: list[str] = []
    for start in range(0, len(prompts), batch_size):
        batch = tokenizer(
            list(prompts[start : start + batch_size]), padding=True, padding_side="left", return_tensors="pt"
        )
        # Causal-LM classes mix in GenerationMixin; PreTrainedModel, the type they share, does not declare generate.
        ids = model.generate(  # type: ignore[operator]
            **batch,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        new = ids[:, batch["input_ids"].shape[1] :]
        out += tokenizer.batch_decode(new, skip_special_tokens=True)
    model.train(was_training)
    return out


def greedy_pass_rate(
    model: PreTrainedModel,
    tokenizer: Any,
    task: Task,
    items: Sequence[TaskItem] | None = None,
    max_new_tokens: int | None = None,
) -> float:
    """Share of `items` (default: the held-out split) whose greedy completion earns reward 1."""
    items = task.val_items if items is None else items
    if max_new_tokens is None:
        longest = max(len(tokenizer(_reference(it), add_special_tokens=False)["input_ids"]) for it in items)
        max_new_tokens = longest + 8
    texts = greedy_completions(model, tokenizer, [it.prompt for it in items], max_new_tokens)
    return sum(task.verify(t, it)[0] >= 1.0 for t, it in zip(texts, items)) / len(items)


def evaluate_model_dir(model_dir: str | Path, task: str | TaskConfig | Task = "addition", split: str = "val") -> float:
    """Greedy pass rate of an HF model directory on a task's "val" (or "train") items."""
    task = task if isinstance(task, Task) else _load(task)
    model, tokenizer = load_model_dir(model_dir)
    items = {"val": task.val_items, "train": task.train_items}[split]
    return greedy_pass_rate(model, tokenizer, task, items)


def _reference(item: TaskItem) -> str:
    return item.meta.get("solution", item.answer)


def _load(task: str | TaskConfig) -> Task:
    return load_task(TaskConfig(name=task) if isinstance(task, str) else task)


def _training_completion(
    item: TaskItem, task: Task, rng: random.Random | None, recipe: WarmStart, noise: float = 0.0
) -> str:
    """The reference completion; with rng, sometimes a near miss and sometimes cut short by the
    interruption text."""
    solution = _reference(item)
    if rng is not None and noise and rng.random() < noise:
        solution = _near_miss(solution, item, rng)
    if rng is not None and task.interruption_text and task.delimiter and rng.random() < recipe.interrupted_fraction:
        steps, _, after = solution.rpartition(task.delimiter)
        cut = rng.randrange(len(steps) + 1)
        return steps[:cut] + task.interruption_text + after
    return solution


def _near_miss(solution: str, item: TaskItem, rng: random.Random) -> str:
    """The completion with its final answer changed by a near miss; non-integer answers stay right."""
    try:
        value = int(item.answer)
    except ValueError:
        return solution
    if not solution.endswith(item.answer):
        return solution
    return solution[: len(solution) - len(item.answer)] + str(max(0, value + rng.choice(NEAR_MISSES)))


class _Stream:
    """Endless shuffled passes over the training items, in batches."""

    def __init__(self, items: Sequence[TaskItem], rng: random.Random, batch_size: int):
        self.items, self.rng, self.batch_size = list(items), rng, batch_size
        self.order: list[TaskItem] = []

    def next(self) -> list[TaskItem]:
        if len(self.order) < self.batch_size:
            fresh = list(self.items)
            self.rng.shuffle(fresh)
            self.order += fresh
        batch, self.order = self.order[: self.batch_size], self.order[self.batch_size :]
        return batch


# progress(phase, step, max_steps, measured rate): called at every measurement of the warm start, so that a
# caller can show the ~6-minute first build (a rich bar on a terminal, log lines otherwise).
Progress = Callable[[str, int, int, float], None]


def _train_until(
    model, next_batch, lr: float, warmup: int, max_steps: int, every: int, measure, done, progress=None, phase=""
) -> tuple[int, float]:
    """Supervised steps until `done(measure())` (checked every `every` steps) or max_steps.
    Returns (steps taken, last measurement)."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.0)
    model.train()
    step, value = 0, measure()
    while not done(value) and step < max_steps:
        step += 1
        input_ids, labels = next_batch()
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, step / warmup) if warmup else lr
        # Right padding only trails each sequence, so causal attention never sees it: no mask needed.
        loss = model(input_ids=input_ids, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % every == 0:
            value = measure()
            if progress is not None:
                progress(phase, step, max_steps, value)
    return step, value


def warm_start(
    model: PreTrainedModel, task: Task, recipe: WarmStart, progress: Progress | None = None
) -> dict[str, Any]:
    """Phase 1 on reference completions, phase 2 on noisy demonstrations (see the module docstring).

    Loss is on completion tokens and <eos> only. Returns what happened, for the record.
    """
    rng = random.Random(recipe.seed)
    dev, train = task.train_items[: recipe.dev_items], task.train_items[recipe.dev_items :]
    dev_ids, dev_labels = _batch(dev, task, None, recipe)
    stream = _Stream(train, rng, recipe.batch_size)
    start = time.perf_counter()
    steps, greedy = _train_until(
        model,
        lambda: _batch(stream.next(), task, rng, recipe),
        recipe.lr,
        recipe.warmup_steps,
        recipe.max_steps,
        recipe.eval_every,
        lambda: teacher_forced_pass_rate(model, dev_ids, dev_labels),
        lambda rate: rate >= recipe.skill_target,
        progress,
        f"skill (greedy pass rate -> {recipe.skill_target:g})",
    )
    noise_steps, sampled = _train_until(
        model,
        lambda: _batch(stream.next(), task, rng, recipe, recipe.noise_fraction),
        recipe.noise_lr,
        0,
        recipe.noise_max_steps,
        recipe.noise_eval_every,
        lambda: expected_sample_pass_rate(model, dev_ids, dev_labels),
        lambda rate: rate <= recipe.sample_target,
        progress,
        f"noisy demonstrations (sampled pass rate -> {recipe.sample_target:g})",
    )
    return {
        "steps": steps,
        "dev_pass_rate": greedy,
        "noise_steps": noise_steps,
        "dev_sample_pass_rate": round(sampled, 4),
        "dev_greedy_after_noise": teacher_forced_pass_rate(model, dev_ids, dev_labels),
        "train_seconds": round(time.perf_counter() - start, 2),
    }


@torch.no_grad()
def teacher_forced_pass_rate(model: PreTrainedModel, input_ids: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of rows whose every labelled token is the model's argmax given the reference prefix.

    Greedy decoding reproduces a reference exactly when this holds, so for an exact-match
    verifier it equals the greedy pass rate, at the cost of one forward pass instead of a
    decode loop: cheap enough to check every few steps.
    """
    was_training = model.training
    model.eval()
    predicted = model(input_ids=input_ids).logits[:, :-1].argmax(-1)
    model.train(was_training)
    target = labels[:, 1:]
    ok = (predicted == target) | (target == -100)
    return ok.all(dim=1).float().mean().item()


@torch.no_grad()
def expected_sample_pass_rate(model: PreTrainedModel, input_ids: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean probability of sampling each row's reference completion at temperature 1.

    For an exact-match verifier that is the expected pass rate of a T=1 sampler (other spellings of
    the right answer could only add to it), again from one forward pass.
    """
    was_training = model.training
    model.eval()
    logprobs = torch.log_softmax(model(input_ids=input_ids).logits[:, :-1].float(), dim=-1)
    model.train(was_training)
    target = labels[:, 1:]
    mask = target != -100
    picked = logprobs.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (picked * mask).sum(dim=1).exp().mean().item()


def _batch(items: Sequence[TaskItem], task: Task, rng: random.Random | None, recipe: WarmStart, noise: float = 0.0):
    rows = []
    for item in items:
        prompt = [char_tok.BOS_ID] + char_tok.encode(item.prompt)
        completion = char_tok.encode(_training_completion(item, task, rng, recipe, noise)) + [char_tok.EOS_ID]
        rows.append((prompt + completion, [-100] * len(prompt) + completion))
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.tensor([ids + [char_tok.PAD_ID] * (width - len(ids)) for ids, _ in rows])
    labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in rows])
    return input_ids, labels


@contextlib.contextmanager
def _deterministic(seed: int):
    """One thread, deterministic kernels and a seeded RNG; the caller's settings come back after."""
    threads, strict = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(strict)


def default_cache_root() -> Path:
    if os.environ.get("SCALERL_CACHE"):
        return Path(os.environ["SCALERL_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "scalerl"


def cache_key(task_cfg: TaskConfig, recipe: WarmStart | None) -> str:
    """Hash of everything that decides the weights: architecture, vocabulary, task, recipe."""
    spec = {
        "version": CACHE_VERSION,
        "arch": TINY_ARCH,
        "rope_theta": ROPE_THETA,
        "vocab": list(char_tok.VOCAB),
        "task": _task_key(task_cfg),
        "recipe": dataclasses.asdict(recipe) if recipe else None,
        "data": [_file_digest(p) for p in (task_cfg.path, task_cfg.val_path) if p],
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


# TaskConfig fields added after models were cached: in the key only when set, so adding one does not rebuild
# (five minutes each) every model cached before it.
_LATER_TASK_FIELDS = ("prompt_field", "answer_field", "chat_template", "system_prompt")


def _task_key(task_cfg: TaskConfig) -> dict:
    defaults = TaskConfig()
    return {
        k: v
        for k, v in dataclasses.asdict(task_cfg).items()
        if k not in _LATER_TASK_FIELDS or v != getattr(defaults, k)
    }


def _file_digest(path: str) -> str:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError as exc:
        raise TaskError(f"{path}: cannot read: {exc.strerror or exc}") from None


def _cache_entry(cache_dir, task, warm: bool, recipe: WarmStart | None) -> tuple[Path, TaskConfig, WarmStart | None]:
    task_cfg = TaskConfig(name=task) if isinstance(task, str) else task
    if task_cfg.name not in WARM_START_TASKS:
        # A data file has no reference completions to learn a skill from (and a file of under dev_items + one batch
        # rows left nothing to train on): its runs use the addition model, as the generators always did.
        task_cfg = TaskConfig()
    else:
        # The verifier only scores completions (warm_start trains on reference text and measures token matches) and
        # the built-in tasks take no delimiter: neither decides the weights, so `scalerl eval --verifier numeric`
        # shares the model instead of building another for five minutes.
        task_cfg = dataclasses.replace(task_cfg, verifier=None, delimiter=None)
    recipe = (recipe or WarmStart()) if warm else None
    root = Path(cache_dir) if cache_dir is not None else default_cache_root()
    return root / f"tiny-{task_cfg.name}-{cache_key(task_cfg, recipe)}{'' if warm else '-init'}", task_cfg, recipe


def tiny_model_cached(
    cache_dir: str | Path | None = None, task: str | TaskConfig = "addition", warm: bool = True
) -> bool:
    """Whether ensure_tiny_model would return at once (its cache entry exists) rather than build for minutes."""
    return _cache_entry(cache_dir, task, warm, None)[0].is_dir()


def ensure_tiny_model(
    cache_dir: str | Path | None = None,
    task: str | TaskConfig = "addition",
    warm: bool = True,
    recipe: WarmStart | None = None,
    progress: Progress | None = None,
) -> Path:
    """Path of the cached tiny model for `task`, building and warm-starting it if missing.

    cache_dir defaults to $SCALERL_CACHE, else ~/.cache/scalerl. `warm=False` gives the
    untrained model. Concurrent callers wait on a lock file and share one build; the
    directory appears whole (built under a temporary name, then renamed).
    """
    final, task_cfg, recipe = _cache_entry(cache_dir, task, warm, recipe)
    root = final.parent
    if final.is_dir():
        return final
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{final.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if final.is_dir():  # another process built it while we waited
            return final
        tmp = root / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
        log.info("building %s%s", final, " (one-off warm start: about 5 minutes on one CPU thread)" if warm else "")
        try:
            _build(tmp, task_cfg, recipe, progress)
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    record = json.loads((final / "scalerl_tiny.json").read_text())
    log.info(
        "tiny model ready at %s: held-out pass rate greedy %s, sampled %s",
        final,
        record.get("val_pass_rate"),
        record.get("val_sample_pass_rate"),
    )
    return final


def _build(directory: Path, task_cfg: TaskConfig, recipe: WarmStart | None, progress: Progress | None = None) -> None:
    seed = recipe.seed if recipe else 0
    with _deterministic(seed):
        model = build_tiny_model(seed)
        record: dict[str, Any] = {"task": dataclasses.asdict(task_cfg), "params": count_parameters(model)}
        if recipe is not None:
            task = load_task(task_cfg)
            char_tok.save_char_tokenizer(directory)
            tokenizer = char_tok.load_tokenizer(directory)
            record["recipe"] = dataclasses.asdict(recipe)
            record.update(warm_start(model, task, recipe, progress))
            record["val_pass_rate"] = greedy_pass_rate(model, tokenizer, task)
            record["val_sample_pass_rate"] = round(
                expected_sample_pass_rate(model, *_batch(task.val_items, task, None, recipe)), 4
            )
        save_model_dir(model, directory)
    (directory / "scalerl_tiny.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
