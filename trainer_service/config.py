"""The [trainer] config section. Torch-free, so `scalerl config show` and the CLI stay fast."""

from __future__ import annotations

import dataclasses
import importlib.util
import math
from dataclasses import dataclass, field
from typing import Literal

from scalerl.shared.config import check_durations, check_seed
from scalerl.shared.eval_config import EvalConfig
from scalerl.shared.tasks.catalog import TaskConfig, TaskEntry, check_task_entries
from scalerl.shared.wire.values import sampling_problem
from scalerl.shared.wiring import RunWiring

LossKind = Literal["cispo", "dapo", "grpo", "gspo"]
Aggregation = Literal["prompt", "sample", "token"]
ISCorrection = Literal["none", "tis", "mis"]


@dataclass(frozen=True)
class LossConfig:
    """[trainer.loss]: the one loss config; trainer_service/loss.py's pure functions take it as it is."""

    kind: LossKind = "cispo"
    aggregation: Aggregation = "prompt"
    adv_norm: Literal["batch", "prompt", "none"] = "batch"
    # CISPO truncates the importance weight at eps_max (the paper found 4, 5 and 8 equivalent).
    cispo_eps_max: float = 4.0
    # Clipped surrogates: DAPO's asymmetric (0.2, 0.28), GRPO's symmetric 0.2, GSPO's sequence-level (3e-4, 4e-4).
    dapo_eps: tuple[float, float] = (0.2, 0.28)
    grpo_eps: tuple[float, float] = (0.2, 0.2)
    gspo_eps: tuple[float, float] = (3e-4, 4e-4)
    # Drop groups whose samples all got the same reward: they carry no gradient, only dilute the batch.
    zero_variance_filter: bool = True
    # Run the LM head in FP32 (the paper: A rose from 0.52 to 0.61). Set the generator's switch to match.
    fp32_lm_head: bool = True
    # Train/inference mismatch correction (docs/trainer.md, "Train/inference mismatch"); off in the paper's recipe.
    # tis: cap every token's importance weight against the generator at tis_cap. mis: drop the sequences whose
    # geometric-mean ratio lies outside [1/mis_threshold, mis_threshold].
    is_correction: ISCorrection = "none"
    tis_cap: float = 2.0
    mis_threshold: float = 2.0
    # Mixture-of-experts models: coefficient of the auxiliary load-balancing loss (Switch/Qwen style, loss.py
    # load_balance_loss). 0 = off, as in RL post-training practice: the pretrained router is already balanced, and
    # the term pulls the router away from the experts the generator routed to. docs/trainer.md, "Mixture-of-experts".
    load_balance_coef: float = 0.0

    def check(self):
        if not self.cispo_eps_max > 0:
            raise ValueError(f"cispo_eps_max must be > 0 (the cap on the importance weight), not {self.cispo_eps_max}")
        for name in ("dapo_eps", "grpo_eps", "gspo_eps"):
            low, high = getattr(self, name)
            # The ratio is clipped to [1 - low, 1 + high]: a negative width inverts the band, and low >= 1 leaves no
            # lower clip at all (a ratio is never negative).
            if not (0 <= low < 1 and high >= 0):
                raise ValueError(f"{name} must be [low, high] with 0 <= low < 1 and high >= 0, not [{low}, {high}]")
        if self.is_correction not in ("none", "tis", "mis"):
            raise ValueError(f"is_correction must be 'none', 'tis' or 'mis', not {self.is_correction!r}")
        if not self.tis_cap > 0:
            raise ValueError(f"tis_cap must be > 0, not {self.tis_cap}")
        if not self.mis_threshold > 1:
            raise ValueError(f"mis_threshold must be > 1 (the kept band is [1/t, t]), not {self.mis_threshold}")
        if not self.load_balance_coef >= 0:
            raise ValueError(f"load_balance_coef must be >= 0 (0 = off), not {self.load_balance_coef}")


@dataclass(frozen=True)
class PromptPipelineConfig:
    """[trainer.prompts]: which prompts each epoch serves (trainer_service/prompt_pipeline.py takes it as it is)."""

    # No-Positive-Resampling (ScaleRL): a prompt whose group pass rate reached npr_threshold leaves later epochs.
    no_positive_resampling: bool = True
    npr_threshold: float = 0.9
    # Below this share of live prompts an epoch uses every prompt again (small datasets); 0 = retire until none left.
    min_live: float = 0.1

    def check(self):
        if not 0 <= self.min_live <= 1:
            raise ValueError(f"min_live must be in [0, 1], not {self.min_live}")
        if not 0 < self.npr_threshold <= 1:
            raise ValueError(f"npr_threshold must be in (0, 1], not {self.npr_threshold}")


@dataclass(frozen=True)
class StepConfig:
    """[trainer.step]: how one optimizer step is computed (trainer_service/step.py takes it as it is, with the
    loss's FP32-head switch, the optimizer's clip and router_replay from their own sections)."""

    # Gradient accumulation: each rank's share of a step is split into micro-batches of at most this many tokens
    # (a longer sequence gets one of its own). 0 = one micro-batch.
    max_tokens_per_microbatch: int = 0
    # Tokens per chunk of the LM head's log-softmax: full FP32 logits are never materialised.
    logprob_chunk_tokens: int = 1024
    # Unset: pack micro-batches when the model's attention is varlen (microbatch.should_pack), else sort and pad.
    pack: bool | None = None

    def check(self):
        if self.max_tokens_per_microbatch < 0:
            raise ValueError(f"max_tokens_per_microbatch must be >= 0, not {self.max_tokens_per_microbatch}")
        if self.logprob_chunk_tokens < 1:
            raise ValueError(f"logprob_chunk_tokens must be >= 1, not {self.logprob_chunk_tokens}")


@dataclass(frozen=True)
class OptimSection:
    # The paper uses lr 5e-7 for an 8B model. `scalerl train` on the tiny model uses 2e-5 (cli/run_config.py).
    lr: float = 5e-5
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-15
    weight_decay: float = 0.01
    warmup_steps: int = 10
    grad_clip: float = 1.0

    def check(self):
        if not 0 < self.lr < math.inf:
            raise ValueError(f"lr must be positive and finite, not {self.lr}")
        # clip_grad_norm_ scales the gradient by grad_clip / norm: a negative one turns descent into ascent.
        if not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be > 0 (inf: no clipping), not {self.grad_clip}")
        if self.warmup_steps < 0:
            raise ValueError("warmup_steps must be >= 0")
        # AdamW's own bounds, checked here so that a bad value is refused before any process starts, not by torch
        # when the optimizer is built.
        if not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must each be in [0, 1), not {list(self.betas)}")
        if not (0 <= self.eps < math.inf and 0 <= self.weight_decay < math.inf):
            raise ValueError(f"eps and weight_decay must be finite and >= 0, not {self.eps} and {self.weight_decay}")


TASK_TABLES_CLASH = "set [trainer.task] or [[trainer.tasks]], not both"


@dataclass(frozen=True)
class TrainerConfig:
    # Model: "" = the built-in tiny model (built and cached on first use), else a local HF directory.
    model: str = ""
    run_dir: str = "runs/default"
    seed: int = 0
    threads: int = 1
    max_steps: int = 200
    # Batch: prompts per optimizer step x samples per prompt (the paper: 48 x 16 = 768).
    prompts_per_step: int = 32
    samples_per_prompt: int = 8
    temperature: float = 1.0
    max_new_tokens: int = 16
    # Off-policy mode: "pipeline" (PipelineRL-k: never train on a token more than k versions old) or
    # "ppo_off_policy" (generate k batches with one policy, then take k steps).
    mode: Literal["pipeline", "ppo_off_policy"] = "pipeline"
    max_off_policy: int = 8
    # Held-out evaluation is the [eval] section (shared/eval_config.py), which the trainer receives beside this one.
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    peer_timeout_s: float = 120.0
    # How long to wait for every generator (and the evaluator) to say Ready at the start: each loads its model and
    # engine first (an 8B vLLM engine with compilation and CUDA graphs takes minutes). Apart from peer_timeout_s,
    # which is the steady-state silence a live peer never reaches.
    startup_timeout_s: float = 1800.0
    # Tests only: sleep this long before binding the sockets, as a large model's load or resume would.
    debug_startup_sleep_s: float = 0.0
    # A group not back after this long is issued again once, then dropped (both counted and logged).
    # 0 = derived from the lengths: 120 s + 0.05 s per new token (docs/trainer.md).
    group_timeout_s: float = 0.0
    # Tests only: sleep this long in every training step (a step as slow as a large model's), to check that a step
    # longer than the generators' peer_timeout_s does not look like a dead trainer. 0 = off.
    debug_step_sleep_s: float = 0.0
    # Parallelism and memory (docs/trainer.md, "Parallelism"). auto = cuda when one is visible.
    device: Literal["auto", "cuda", "cpu"] = "auto"
    # Compute dtype of the sharded model; master weights, gradients and optimizer state stay FP32.
    # auto = bfloat16 on CUDA, float32 on CPU.
    param_dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    # Recompute each decoder layer in the backward pass instead of keeping its activations.
    activation_checkpointing: bool = False
    # The attention kernel the model loads with. flash_attention_2 and flex_attention are varlen: micro-batches are
    # then packed (microbatch.should_pack). flash_attention_2 needs CUDA and the flash_attn package.
    attn_implementation: Literal["sdpa", "flash_attention_2", "flex_attention", "eager"] = "sdpa"
    # dtype of FSDP2's gradient reduce-scatter. bfloat16 halves its bytes, for slow inter-node links, at the price
    # of bf16 rounding of the summed gradients; it needs more than one rank (one rank reduces nothing).
    grad_reduce_dtype: Literal["float32", "bfloat16"] = "float32"
    # Mixture-of-experts models: route each token through the experts the generator routed it to (trainer_service/
    # moe.py), so that trainer and generator score a token with the same experts. Needs an MoE model and a generator
    # that reports its routing (vLLM); scalerl train forwards it to [generator]. docs/trainer.md.
    router_replay: bool = False
    # The task ([trainer.task]): built-in "addition" / "addition_steps", or "jsonl" with path and verifier.
    task: TaskConfig = field(default_factory=TaskConfig)
    # A multi-task run ([[trainer.tasks]] tables, instead of [trainer.task]): each its own data, verifier, label and
    # sampling weight, and its own held-out evaluation (one eval line per task, with a `task` field). docs/tasks.md.
    tasks: list[TaskEntry] = field(default_factory=list)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimSection = field(default_factory=OptimSection)
    prompts: PromptPipelineConfig = field(default_factory=PromptPipelineConfig)
    step: StepConfig = field(default_factory=StepConfig)

    def check(self):
        for name in (
            "max_steps",
            "prompts_per_step",
            "checkpoint_every",
            "keep_checkpoints",  # pruning keeps at least the checkpoint just written: 0 would read as "none"
            "threads",
            "max_new_tokens",
            "max_off_policy",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        check_seed("seed", self.seed)
        if self.attn_implementation == "flash_attention_2":
            if self.device == "cpu":
                raise ValueError("attn_implementation 'flash_attention_2' needs CUDA, and device is 'cpu'")
            if importlib.util.find_spec("flash_attn") is None:
                raise ValueError("attn_implementation 'flash_attention_2' needs the flash_attn package, not installed")
        problem = sampling_problem(temperature=self.temperature)
        if problem is not None:
            raise ValueError(problem)
        check_durations(self, "peer_timeout_s", "startup_timeout_s")
        check_durations(self, "group_timeout_s", zero="derived from the lengths")
        check_durations(self, "debug_step_sleep_s", "debug_startup_sleep_s", zero="off")
        if self.samples_per_prompt < 2:
            raise ValueError("samples_per_prompt must be >= 2 (advantages compare samples of one prompt)")
        if self.task.name == "jsonl" and not self.task.path:
            raise ValueError("task.name = 'jsonl' needs task.path")
        if self.tasks:
            if self.task != TaskConfig():
                raise ValueError(TASK_TABLES_CLASH)
            check_task_entries(self.tasks)

    @property
    def multi_task(self) -> bool:
        """Two or more [[trainer.tasks]]; a single entry is run as a plain one-task run."""
        return len(self.tasks) > 1

    def warm_start_task(self) -> TaskConfig:
        """The task the built-in tiny model is warm-started on: the run's own when it has one, else addition (the
        model generators load too: cli/run_config.py)."""
        if self.multi_task:
            return TaskConfig()
        c = self.task_configs()[0]
        # A lone [[trainer.tasks]] entry warm-starts like the same [trainer.task]: label and weight are not its data.
        return TaskConfig(**{f.name: getattr(c, f.name) for f in dataclasses.fields(TaskConfig)})

    def task_configs(self) -> list[TaskConfig]:
        """Every task of the run: the [[trainer.tasks]] entries, else [trainer.task] alone."""
        return list(self.tasks) if self.tasks else [self.task]


def check_eval(cfg: TrainerConfig, evaluation: EvalConfig) -> None:
    """What the trainer's section asks of the run's [eval] (each is checked on its own first)."""
    if cfg.multi_task and evaluation.mode == "process":
        raise ValueError(
            "a multi-task run evaluates inline (eval.mode = 'inline'): the evaluator process scores one task"
        )


def check_wiring(cfg: TrainerConfig, wiring: RunWiring, evaluation: EvalConfig) -> None:
    """What the trainer's section and the run's [eval] ask of the run's wiring (each is checked on its own first)."""
    check_eval(cfg, evaluation)
    evaluation.check_wiring(wiring)
