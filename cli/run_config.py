"""The whole-run config of `scalerl train`: one TOML file, one section per service.

scalerl.toml is the single source of truth: unknown sections and keys are errors that name them, `--set`
values are type-checked, and the resolved config (every default filled in) is written into the run directory.
`train` derives the run's wiring (socket addresses, the secret, the weight group, device counts: the [wiring] table,
shared/wiring.py) and forwards the keys the services must agree on (the model, the FP32 LM head switch), so each
service receives its own section and the wiring, never another service's section.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from scalerl.curvefit.limits import MAX_BOUND
from scalerl.generator_service.config import GeneratorConfig, VllmSection, names_experts
from scalerl.shared.config import (
    MAX_SEED,
    RUN_TABLES,
    ConfigError,
    apply_sets,
    check_durations,
    check_tables,
    from_dict,
    load_toml,
    merge_tables,
    to_dict,
)
from scalerl.shared.eval_config import INTERRUPTION_ONLY_KEYS, EvalConfig
from scalerl.shared.ownership import SECRET_NAME
from scalerl.shared.tasks.catalog import interruption_defaults, interruption_problem, task_delimiter
from scalerl.shared.wire.addresses import LOOPBACK_IP, is_loopback
from scalerl.shared.wire.weights.registry import DEFAULT_WEIGHT_TRANSPORT, TRANSPORTS
from scalerl.shared.wiring import ADDRESS_KEYS, MAX_GENERATORS, RunWiring
from scalerl.trainer_service.config import TASK_TABLES_CLASH, TrainerConfig
from scalerl.trainer_service.config import check_wiring as check_trainer_wiring

from . import defaults as model_layers
from . import slurm
from .defaults import (
    NO_VLLM_ON_GPU,
    REQUIRED_FOR_USER_MODEL,
    SOURCE_BUILTIN,
    SOURCE_DEFAULT,
    SOURCE_GPU,
    SOURCE_PAPER,
    gpu_defaults,
    model_defaults,
)


@dataclass(frozen=True)
class RunSection:
    # "" = runs/<date-time> under the current directory.
    run_dir: str = ""
    # "" = the built-in tiny model; else a local HF directory. Forwarded to the trainer and every generator.
    model: str = ""
    n_generators: int = 1
    # ipc:// sockets on one host; tcp:// on `host` for multi-node runs.
    transport: Literal["ipc", "tcp"] = "ipc"
    host: str = LOOPBACK_IP
    # tcp: the run's ports are base_port + 0..HIGHEST_PORT_OFFSET (below).
    base_port: int = 29600
    # Let the trainer bind tcp on a non-loopback `host` (multi-node). Set by slurm when the first node is remote.
    allow_remote: bool = False
    # Under srun (docs/slurm.md): 0 = task 0 is the trainer; k = the first k nodes run it (torchrun).
    trainer_nodes: int = 0
    # Under srun: trainer ranks per trainer node (> 1 or trainer_nodes > 1: torchrun).
    trainer_procs: int = 1
    # Start a generator again when it dies (the trainer re-issues its unfinished work); off = end the run.
    restart_generators: bool = False
    # Stop (with a checkpoint) after this many minutes; 0 = no limit.
    max_minutes: float = 0.0
    # Live forecast (docs/run-dir.md, forecast.jsonl): refit the curve after every held-out evaluation, off the
    # trainer. budget: GPU-hours to forecast the pass rate at; 0 = 10x the compute so far. target: the pass rate
    # whose compute is forecast; 0 = none.
    live_forecast: bool = True
    budget: float = 0.0
    target: float = 0.0
    # Stop rules (off at 0; each writes a checkpoint, says why, and exits 3): stop when the forecast misses
    # `target` within `budget` with at least this probability, or when the forecast gain from here to `budget`
    # falls below this many points of pass rate.
    stop_if_target_unreachable: float = 0.0
    stop_if_gain_below: float = 0.0
    # Also send every metrics and forecast line to these (the tensorboard / wandb extras; docs/run-dir.md).
    trackers: tuple[Literal["tensorboard", "wandb"], ...] = ()
    wandb_project: str = "scalerl"

    def check(self):
        if not 1 <= self.n_generators <= MAX_GENERATORS:
            raise ValueError(f"n_generators must be between 1 and {MAX_GENERATORS}, not {self.n_generators}")
        check_durations(self, "max_minutes", unit="minutes", zero="no limit")
        if self.trainer_nodes < 0 or self.trainer_procs < 1:
            raise ValueError("trainer_nodes must be >= 0 and trainer_procs >= 1")
        if not 0 <= self.budget < math.inf or not 0 <= self.target <= 1:
            raise ValueError(f"budget must be finite and >= 0 and target in [0, 1], not {self.budget}, {self.target}")
        if not 0 <= self.stop_if_target_unreachable < 1 or self.stop_if_gain_below < 0:
            raise ValueError("stop_if_target_unreachable must be in [0, 1) and stop_if_gain_below >= 0")
        if self.stop_if_target_unreachable and not self.target:
            raise ValueError("stop_if_target_unreachable needs run.target")
        if (self.stop_if_target_unreachable or self.stop_if_gain_below) and not self.live_forecast:
            raise ValueError("stop rules need run.live_forecast = true")
        for name in ("budget", "target"):  # read by the live forecast only (cli/live_forecast.py)
            if getattr(self, name) and not self.live_forecast:
                raise ValueError(
                    f"{name} = {getattr(self, name):g} needs run.live_forecast = true: only the live forecast reads it"
                )
        if not 1 <= self.base_port <= MAX_PORT - HIGHEST_PORT_OFFSET:
            raise ValueError(
                f"base_port must be in 1..{MAX_PORT - HIGHEST_PORT_OFFSET}, not {self.base_port}: the run uses "
                f"run.base_port + 0..{HIGHEST_PORT_OFFSET}, and a port is at most {MAX_PORT}"
            )
        # zmq binds and connects IPv4 only here (no socket turns on ZMQ_IPV6): tcp://::1:PORT and tcp://[::1]:PORT
        # both fail to bind, after every process started.
        if _is_ipv6(self.host):
            raise ValueError(
                f"host {self.host!r} is an IPv6 address, which the run's zmq sockets cannot bind (they are IPv4 only): "
                f"set run.host to an IPv4 address or a host name ({LOOPBACK_IP!r} for loopback)"
            )
        # The same rule the trainer applies when it binds (shared/wire/sockets.py check_bind_address), here so that
        # the run is refused before any process starts.
        if self.transport == "tcp" and not self.allow_remote and not is_loopback(self.host):
            raise ValueError(
                f"host {self.host!r} is not loopback and run.allow_remote = false: the trainer binds tcp beyond "
                f"loopback only with run.allow_remote = true (multi-node runs; docs/slurm.md)"
            )


def _is_ipv6(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).version == 6
    except ValueError:
        return False


@dataclass(frozen=True)
class CurvefitSection:
    """[curvefit]: the options of the run's own fits (the end-of-run curve, the live forecast), which are those of
    `scalerl fit RUN_DIR --bound --r0 --level --n-boot`; the bounds are that command's (cli/curve_cmds.py)."""

    bound: float = 1.0
    r0: str | float = "first"
    level: float = 0.90
    n_boot: int = 1000

    def check(self):
        if not (math.isfinite(self.bound) and 0 < self.bound <= MAX_BOUND):
            raise ValueError(f"bound must be a finite number > 0 and at most {MAX_BOUND:g}, not {self.bound}")
        if not 0.5 <= self.level <= 0.999:
            raise ValueError(f"level must be in [0.5, 0.999], not {self.level}")
        if not 50 <= self.n_boot <= 100000:
            raise ValueError(f"n_boot must be in [50, 100000], not {self.n_boot}")
        if self.r0 in ("first", "fit"):
            return
        try:
            r0 = float(self.r0)
        except ValueError:
            r0 = math.nan
        # R0 is the curve's value at no compute: a pass rate within [0, bound), below the asymptote's ceiling.
        if not 0 <= r0 < self.bound:
            raise ValueError(f"r0 must be 'first', 'fit' or a number in [0, bound = {self.bound:g}), not {self.r0!r}")


@dataclass(frozen=True)
class RunConfig:
    run: RunSection = field(default_factory=RunSection)
    generator: GeneratorConfig | None = None  # resolved per generator by `generator_config(i)`
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)  # held-out evaluation: the trainer's and the evaluator's
    wiring: RunWiring = field(default_factory=RunWiring)  # derived, never a user's: how the processes meet
    curvefit: CurvefitSection = field(default_factory=CurvefitSection)
    raw_generator: dict = field(default_factory=dict)
    # (section, key, ...) -> what set the value: --set, config file, a model default, scalerl train (config show)
    sources: dict = field(default_factory=dict)


SECTIONS = {
    "run": RunSection,
    "generator": GeneratorConfig,
    "trainer": TrainerConfig,
    "eval": EvalConfig,
    "curvefit": CurvefitSection,
}
# The tables in RUN/config.toml: the user's sections and the wiring scalerl train derives.
RESOLVED = {**SECTIONS, "wiring": RunWiring}
SOURCE_FILE, SOURCE_SET, SOURCE_TRAIN = "config file", "--set", "set by scalerl train"
if tuple(RESOLVED) != RUN_TABLES:  # the service commands accept the tables of shared/config.py's list
    raise ImportError(f"RESOLVED {tuple(RESOLVED)} != shared.config.RUN_TABLES {RUN_TABLES}")


def _leaves(d: dict, prefix: tuple = ()) -> set[tuple]:
    out: set[tuple] = set()
    for k, v in d.items():
        out |= _leaves(v, (*prefix, k)) if isinstance(v, dict) else {(*prefix, k)}
    return out


def _require(model: str, given: set[tuple]) -> None:
    """A user's model must set what has no default that transfers; the error names the key."""
    for key, why in REQUIRED_FOR_USER_MODEL.items():
        if key not in given:
            name = ".".join(key)
            raise ConfigError(
                f"'{name}' must be set for run.model = {model!r}: {why}; set it in the config file or with "
                f"--set {name}=VALUE"
            )


def resolve(
    config_path: Path | None,
    sets: list[str],
    run_dir: str | None = None,
    max_steps: int | None = None,
    max_minutes: float | None = None,
    run_overrides: dict | None = None,
    eval_mode: str = "process",
    base: dict | None = None,
) -> tuple[dict, RunConfig]:
    """(resolved raw TOML dict, typed config). Raises ConfigError naming any bad section or key.

    base: the settings a run was started with (RUN/settings.toml), under this command's file and --set: a resumed
    run keeps them without their being repeated.

    run_overrides: [run] keys that win over the file and --set (slurm's transport, host, n_generators).
    eval_mode: eval.mode unless the file or --set says: "process" where an evaluator process is started
    (`scalerl train`), "inline" where none is (srun tasks)."""
    raw = load_toml(config_path) if config_path is not None else {}
    if "wiring" in raw:
        raise ConfigError(f"[wiring] is derived by scalerl train from [run] and [generator]; remove it ({WIRING_DOC})")
    if base:
        raw = merge_tables(base, raw)
    check_tables(raw, SECTIONS)
    check_tables(apply_sets({}, sets), SECTIONS, " in --set")  # `--set trainer=5` is no table
    # As written by the user: TrainerConfig.check sees a [trainer.task] that spells out the defaults as none at all.
    # (Only here: a run's resolved config.toml holds both, every default filled in.)
    if {"task", "tasks"} <= set(apply_sets(raw, sets).get("trainer", {})):
        raise ConfigError(f"trainer: {TASK_TABLES_CLASH}")
    file_keys, set_keys = _leaves(raw), _leaves(apply_sets({}, sets))
    model = str(apply_sets(raw, sets).get("run", {}).get("model", "") or "")
    defaults = model_defaults(user_model=bool(model))
    gpu = model_layers.gpu_visible() if model else False  # the built-in model keeps its CPU values everywhere
    chosen_backend = apply_sets(raw, sets).get("generator", {}).get("backend")  # the user's own choice, if any
    vllm = gpu and chosen_backend in (None, "vllm") and model_layers.vllm_installed()
    gpu_layer = gpu_defaults(bool(model), gpu, vllm)
    if gpu and chosen_backend is None and not vllm:
        print(NO_VLLM_ON_GPU, file=sys.stderr)
    defaults = merge_tables(defaults, gpu_layer)
    raw = apply_sets(merge_tables(defaults, raw), sets)
    check_tables(raw, SECTIONS, " in --set")
    run_raw = dict(raw.get("run", {}))
    if run_dir is not None:
        run_raw["run_dir"] = run_dir
    if max_minutes is not None:
        run_raw["max_minutes"] = max_minutes
    run_raw.update(run_overrides or {})
    run_raw.setdefault("run_dir", "")
    if not run_raw["run_dir"]:
        run_raw["run_dir"] = str(Path("runs") / time.strftime("%Y%m%d-%H%M%S"))
    run = from_dict(RunSection, run_raw, "run.")
    addresses = _addresses(run, ipc_dir(run.run_dir, create=False))
    trainer_raw = dict(raw.get("trainer", {}))
    gen_raw = dict(raw.get("generator", {}))
    _refuse_wiring("trainer", trainer_raw)
    _refuse_wiring("generator", gen_raw)
    for key in ("model", "run_dir"):
        if key in trainer_raw:
            raise ConfigError(f"'trainer.{key}' is set by scalerl train; use [run] instead")
    wiring_raw: dict[str, Any] = dict(
        addresses,
        secret_file=str(Path(run.run_dir) / SECRET_NAME),
        n_generators=run.n_generators,
        allow_remote=run.allow_remote,  # the trainer passes it to its endpoints
    )
    trainer_raw.update(model=run.model, run_dir=run.run_dir)
    if max_steps is not None:
        trainer_raw["max_steps"] = max_steps
    wiring_raw.update(_weight_transport(run, gen_raw))
    trainer = from_dict(TrainerConfig, trainer_raw, "trainer.")
    problem = model_layers.device_problem(trainer.device)
    if problem:
        raise ConfigError(problem)
    eval_raw = dict(raw.get("eval", {}))
    # The evaluator process scores one task; a multi-task run evaluates each of its tasks inline (trainer_service/
    # evaluation.py InlineEvaluation).
    eval_raw.setdefault("mode", "inline" if trainer.multi_task else eval_mode)
    if eval_raw["mode"] == "process":
        wiring_raw["eval_weights_addr"] = _eval_weights_address(run, ipc_dir(run.run_dir, create=False))
    for key in ("interruption_text", "think_end_text"):
        if key in eval_raw:
            raise ConfigError(f"'eval.{key}' is set by scalerl train from generator.{key}; set that instead")
    evaluation = from_dict(EvalConfig, eval_raw, "eval.")  # checked against [trainer] with the wiring, below
    for key in ("model", "peer_id"):
        if key in gen_raw:
            raise ConfigError(f"'generator.{key}' is set by scalerl train; use [run] instead")
    gen_raw.update(model=run.model, fp32_lm_head=trainer.loss.fp32_lm_head)
    if trainer.router_replay:  # the generators must send the experts the trainer replays (GeneratorConfig.check)
        gen_raw["router_replay"] = True
    if trainer.warm_start_task().name in ("addition", "addition_steps"):  # the trainer's tiny model too
        gen_raw["tiny_task"] = trainer.warm_start_task().name
    # Unset: the task's interruption text and end of thinking, so that the model is interrupted with the text its
    # task (and warm start) ends thinking with, and the verifier finds the delimiter it reads after. A multi-task
    # run interrupts with its first task's.
    text, think_end = interruption_defaults(task_delimiter(trainer.task_configs()[0]))
    gen_raw.setdefault("interruption_text", text)
    gen_raw.setdefault("think_end_text", think_end)
    # The trainer publishes its weights before it issues anything, and the zmq channel hands the newest version to a
    # generator that joins later (a restart). A generator that took requests first sampled from the model directory
    # (the base model, version 0): after a resume every such token is older than max_off_policy, and the first step
    # dropped its groups as stale (16 of 32 in a review's resumed run).
    gen_raw.setdefault("wait_for_weights", True)
    cfg = RunConfig(
        run=run,
        trainer=trainer,
        curvefit=from_dict(CurvefitSection, raw.get("curvefit", {}), "curvefit."),
        raw_generator=gen_raw,
    )
    generator = generator_config(cfg, 0)  # validates the section once
    last = generator_seed(gen_raw, run.n_generators - 1)
    if isinstance(last, int) and last > MAX_SEED:
        raise ConfigError(
            f"generator.seed = {gen_raw['seed']}: generator i samples with generator.seed + i, so with "
            f"{run.n_generators} generators it must be at most {MAX_SEED - run.n_generators + 1}"
        )
    _check_generator_fits(generator, trainer)
    cfg = dataclasses.replace(cfg, generator=generator)
    cfg = dataclasses.replace(cfg, eval=_eval_interruption(generator, trainer, evaluation, raw.get("eval", {})))
    # The evaluator runs the generators' engine, so it holds as many devices as one generator.
    wiring_raw.update(generator_devices=generator.devices, eval_devices=generator.devices)
    wiring = from_dict(RunWiring, wiring_raw, "wiring.")
    try:
        generator.check_wiring(wiring)
        check_trainer_wiring(cfg.trainer, wiring, cfg.eval)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    cfg = dataclasses.replace(cfg, wiring=wiring)
    _check_nccl_device(wiring, generator, cfg.trainer)
    resolved = {
        "run": to_dict(run),
        "generator": to_dict(cfg.generator),
        "trainer": to_dict(cfg.trainer),
        "eval": to_dict(cfg.eval),
        "curvefit": to_dict(cfg.curvefit),
        "wiring": to_dict(wiring),
    }
    # What the user changed from its default (the model and GPU layers included): a file that spells every default
    # out, as scalerl.toml does, changes nothing.
    baseline = merge_tables({name: _plain_defaults(cls) for name, cls in RESOLVED.items()}, defaults)
    _refuse_ineffective(cfg, {k for k in file_keys | set_keys if _get(resolved, k) != _get(baseline, k)})
    if model:  # after the checks above, whose errors say more about a wrong value than a missing one
        _require(model, file_keys | set_keys)
    flags = {("run", "run_dir"): run_dir, ("run", "max_minutes"): max_minutes, ("trainer", "max_steps"): max_steps}
    given = {("run", k): "srun" for k in run_overrides or {}}
    given |= {k: f"--{k[-1].replace('_', '-')}" for k, v in flags.items() if v is not None}
    model_source = SOURCE_PAPER if model else SOURCE_BUILTIN
    plain = {name: _plain_defaults(cls) for name, cls in RESOLVED.items()}
    sources = {}
    for leaf in _leaves(resolved):
        if leaf in set_keys:
            sources[leaf] = SOURCE_SET
        elif leaf in given and given[leaf] != SOURCE_TRAIN:
            sources[leaf] = given[leaf]
        elif leaf in file_keys:
            sources[leaf] = SOURCE_FILE
        elif leaf in _leaves(gpu_layer):
            sources[leaf] = SOURCE_GPU
        elif leaf in _leaves(defaults):
            sources[leaf] = model_source
        else:  # a value other than the section's own default was derived by scalerl train (addresses, [run] keys)
            sources[leaf] = SOURCE_DEFAULT if _get(resolved, leaf) == _get(plain, leaf) else SOURCE_TRAIN
    cfg = dataclasses.replace(cfg, sources=sources)
    return resolved, cfg


def _check_generator_fits(gen: GeneratorConfig, trainer: TrainerConfig) -> None:
    """A sequence slot holds the prompt and its completion: one no longer than a completion fits no request."""
    if gen.max_seq_len <= trainer.max_new_tokens:
        raise ConfigError(
            f"generator.max_seq_len = {gen.max_seq_len} leaves no room for a prompt: a request is its prompt plus up "
            f"to trainer.max_new_tokens = {trainer.max_new_tokens} tokens; raise generator.max_seq_len"
        )


def _check_nccl_device(wiring: RunWiring, generator: GeneratorConfig, trainer: TrainerConfig) -> None:
    """NCCL moves device tensors only: a weight group over it cannot form without a GPU in every member (the
    processes would start and then fail to join it)."""
    if wiring.weights_dist_backend != "nccl":
        return
    key = (
        "dist_backend = 'nccl'"
        if wiring.weights_transport == "dist"
        else f"weights_transport = {wiring.weights_transport!r}"
    )
    if trainer.device == "cpu":
        raise ConfigError(
            f"generator.{key} broadcasts weights over NCCL from the trainer's GPU, and trainer.device = 'cpu' "
            f"(its ranks take no GPU): use a gloo transport, or let the trainer have its GPUs"
        )
    if generator.backend == "torch":
        # scalerl train's plan (cli/device_plan.py, also under srun) gives GPUs to vLLM engines only and hides them
        # from a torch engine, which generates on CPU: its end of the group would have no device.
        raise ConfigError(
            "generator.dist_backend = 'nccl' needs a GPU in every generator, and under scalerl train the torch engine "
            "generates on CPU (the node's GPUs go to the trainer and to vLLM engines): use dist_backend = 'gloo', or "
            "generator.backend = 'vllm'"
        )
    if model_layers.gpu_visible():
        return
    raise ConfigError(
        f"generator.{key} broadcasts weights over NCCL, which needs a CUDA device, and torch sees none here"
    )


def _refuse_ineffective(cfg: RunConfig, changed: set[tuple]) -> None:
    """Refuse a setting this run would ignore: whoever set it expects it to act. `changed`: the keys the user set to
    a value other than its default."""
    run, trainer, loss = cfg.run, cfg.trainer, cfg.trainer.loss
    assert cfg.generator is not None
    if cfg.generator.backend != "vllm":
        for leaf in sorted(k for k in changed if k[:2] == ("generator", "vllm")):
            raise ConfigError(
                f"generator.vllm.{leaf[2]} = {getattr(cfg.generator.vllm, leaf[2])!r} is set but generator.backend = "
                f"{cfg.generator.backend!r}: [generator.vllm] is read only by the vLLM backend"
            )
    if loss.load_balance_coef and not (run.model and names_experts(run.model)):
        which = repr(run.model) if run.model else "the built-in tiny model"
        raise ConfigError(
            f"trainer.loss.load_balance_coef = {loss.load_balance_coef:g} cannot act: {which} is dense, with no "
            f"router to balance (a mixture-of-experts model names its experts in config.json)"
        )
    under_srun = slurm.active(os.environ)
    # Outside a multi-task srun step the launcher starts run.trainer_procs ranks on this host, whatever
    # trainer_nodes says (docs/slurm.md).
    if run.trainer_nodes != RunSection.trainer_nodes and not under_srun:
        raise ConfigError(
            f"run.trainer_nodes = {run.trainer_nodes} is set but this is no multi-task srun step: outside srun the "
            f"trainer runs run.trainer_procs = {run.trainer_procs} ranks on this host; leave run.trainer_nodes out or "
            f"start the run under srun (docs/slurm.md)"
        )
    # torchrun ranks under srun: trainer_procs on each trainer node, and trainer_nodes = 0 is one node (task 0).
    ranks = (max(1, run.trainer_nodes) if under_srun else 1) * run.trainer_procs
    if trainer.grad_reduce_dtype != "float32" and ranks < 2:
        raise ConfigError(
            f"trainer.grad_reduce_dtype '{trainer.grad_reduce_dtype}' needs more than one rank: one rank reduces "
            f"nothing (run.trainer_procs = {run.trainer_procs}, run.trainer_nodes = {run.trainer_nodes})"
        )
    for key, mode in (("tis_cap", "tis"), ("mis_threshold", "mis")):
        if ("trainer", "loss", key) in changed and loss.is_correction != mode:
            raise ConfigError(
                f"trainer.loss.{key} = {getattr(loss, key):g} is set but trainer.loss.is_correction = "
                f"{loss.is_correction!r}: it acts only with is_correction = {mode!r}"
            )
    # Each loss kind reads its own parameters only (trainer_service/loss.py token_terms and ratio_cap).
    for key, kind in LOSS_KIND_KEYS.items():
        if ("trainer", "loss", key) in changed and loss.kind != kind:
            raise ConfigError(
                f"trainer.loss.{key} = {_shown(getattr(loss, key))} is set but trainer.loss.kind = {loss.kind!r}: it "
                f"acts only with kind = {kind!r}"
            )
    prompts = trainer.prompts
    if ("trainer", "prompts", "npr_threshold") in changed and not prompts.no_positive_resampling:
        raise ConfigError(
            f"trainer.prompts.npr_threshold = {prompts.npr_threshold:g} is set but "
            f"trainer.prompts.no_positive_resampling = false: it acts only with no_positive_resampling = true"
        )
    # Interruption fires once a completion holds `budget` tokens (generator_service/engine/sequence.py), and every
    # completion, held-out ones included, ends at trainer.max_new_tokens.
    budget = cfg.generator.thinking_budget
    if budget is not None and budget[0] >= trainer.max_new_tokens:
        raise ConfigError(
            f"generator.thinking_budget = {_shown(budget)} is never reached: a completion ends at "
            f"trainer.max_new_tokens = {trainer.max_new_tokens} tokens, before its smallest budget; set "
            f"generator.thinking_budget below trainer.max_new_tokens or raise that"
        )
    transport = TRANSPORTS[cfg.generator.weights_transport]
    if ("generator", "dist_backend") in changed and not (transport.broadcast and transport.group_backend is None):
        raise ConfigError(
            f"generator.dist_backend = {cfg.generator.dist_backend!r} is set but generator.weights_transport = "
            f"{transport.name!r}: it acts only with weights_transport = 'dist' (the backend of its weight group)"
        )
    gen, evaluation = cfg.generator, cfg.eval
    # An answer budget and the interruption's texts act only once a sample is interrupted: training samples with
    # generator.thinking_budget, held-out ones with eval's (its own, or the generators' max).
    if gen.thinking_budget is None and evaluation.thinking_budget is None:
        for key in INTERRUPTION_ONLY_KEYS:
            if ("generator", key) in changed:
                raise ConfigError(
                    f"generator.{key} = {_shown(getattr(gen, key))} is set but neither generator.thinking_budget nor "
                    f"eval.thinking_budget is: it acts only after a forced interruption; set a thinking budget or "
                    f"leave generator.{key} out"
                )
    if ("eval", "answer_budget") in changed and evaluation.thinking_budget is None:
        raise ConfigError(
            f"eval.answer_budget = {_shown(evaluation.answer_budget)} is set but held-out samples are never "
            f"interrupted (no eval.thinking_budget, and no generator.thinking_budget to take its max from): set one "
            f"or leave eval.answer_budget out"
        )
    from .trackers import check_names as check_tracker_names

    check_tracker_names(run.trackers)  # here, so that config show, --dry-run, train and srun refuse it alike
    if ("run", "wandb_project") in changed and "wandb" not in run.trackers:
        raise ConfigError(
            f"run.wandb_project = {run.wandb_project!r} is set but run.trackers = {_shown(run.trackers)}: it acts "
            f"only with 'wandb' in run.trackers"
        )
    # Under srun the transport is tcp whatever the file says (docs/slurm.md), so host and base_port act there.
    if run.transport == "ipc" and not under_srun:
        for key in ("host", "base_port"):
            if ("run", key) in changed:
                raise ConfigError(
                    f"run.{key} = {getattr(run, key)!r} is set but run.transport = 'ipc': ipc sockets have no host or "
                    f"port; set run.transport = 'tcp' or leave run.{key} out"
                )
        if run.allow_remote:
            raise ConfigError(
                "run.allow_remote = true is set but run.transport = 'ipc': ipc sockets stay on this host, so there is "
                "nothing to bind beyond loopback; set run.transport = 'tcp' or leave run.allow_remote out"
            )


# The [trainer.loss] keys only one loss kind reads, and that kind.
LOSS_KIND_KEYS = {"cispo_eps_max": "cispo", "dapo_eps": "dapo", "grpo_eps": "grpo", "gspo_eps": "gspo"}


def _shown(value) -> str:
    """A value as the config spells it: [0.1, 0.2], 4, 'x', true."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_shown(v) for v in value) + "]"
    return repr(value)


def _plain_defaults(cls) -> dict:
    try:
        return to_dict(cls())
    except TypeError:  # a section with required keys has no plain default for them
        return {}


def _get(d: dict, key: tuple) -> Any:
    node: Any = d
    for k in key:
        node = node.get(k) if isinstance(node, dict) else None
    return node


def _tables_list(v) -> bool:
    return isinstance(v, list) and any(isinstance(x, dict) for x in v)


def unset_keys(cfg, sections) -> list[tuple]:
    """The keys of `sections` (top-level names) whose resolved value is None ("unset": no thinking budget, pack
    decided per model): TOML has no null, so config show lists them as comments."""

    def walk(obj, path: tuple) -> list[tuple]:
        out: list[tuple] = []
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if value is None:
                out.append((*path, f.name))
            elif dataclasses.is_dataclass(value) and not isinstance(value, type):
                out.extend(walk(value, (*path, f.name)))
        return out

    return [key for name in sections for key in walk(getattr(cfg, name), (name,))]


def render_with_sources(resolved: dict, sources: dict[tuple, str], unset=()) -> str:
    """`scalerl config show`: the resolved config as TOML, each value followed by a comment naming what set it; the
    `unset` keys (paths) as comments, `# key = (unset)`, so that every key is shown and the output still loads."""
    import tomli_w

    lines: list[str] = []

    def commented(text: str, source: str) -> str:
        last = text.rsplit("\n", 1)
        return text + " " * max(1, 40 - len(last[-1])) + f"# {source}"

    def table(d: dict, path: tuple) -> None:
        scalars = {k: v for k, v in d.items() if not isinstance(v, dict)}
        # A list of tables may be written as [[section.key]] headers, after which a plain key would belong to its
        # last table: such lists come last.
        scalars = dict(sorted(scalars.items(), key=lambda kv: _tables_list(kv[1])))
        missing = [key[-1] for key in unset if key[:-1] == path and key[-1] not in d]
        if path and (scalars or missing or not d):
            lines.append(("\n" if lines else "") + f"[{'.'.join(path)}]")
        for k in missing:
            lines.append(commented(f"# {k} = (unset)", sources.get((*path, k), SOURCE_DEFAULT)))
        for k, v in scalars.items():
            # Dumped under its full path, so that [[section.key]] headers name this table (at the top level they
            # would read back as a table of their own); an inline dump starts with this table's header, dropped.
            nested: dict = {k: v}
            for part in reversed(path):
                nested = {part: nested}
            text = tomli_w.dumps(nested).removeprefix(f"[{'.'.join(path)}]\n" if path else "").rstrip("\n")
            source = sources.get((*path, k), SOURCE_DEFAULT)
            if _tables_list(v):  # its own [[...]] tables: the comment on the last line would read as that table's
                lines.append(f"# {'.'.join((*path, k))}: {source}\n{text}")
            else:
                lines.append(commented(text, source))
        for k, v in d.items():
            if isinstance(v, dict):
                table(v, (*path, k))

    table(resolved, ())
    return "\n".join(lines) + "\n"


def _eval_interruption(gen: GeneratorConfig, trainer: TrainerConfig, evaluation: EvalConfig, user: dict) -> EvalConfig:
    """Check the generators' interruption text against the task; evaluate with the same interruption."""
    delimiter = task_delimiter(trainer.task_configs()[0])
    problem = interruption_problem(gen.interruption_text, delimiter)
    if problem is not None:
        raise ConfigError(
            f"generator.interruption_text {gen.interruption_text!r} {problem} (trainer.task.name = "
            f"{trainer.task_configs()[0].name!r}): its verifier reads only what follows the last {delimiter!r}, so the "
            f"answer written after the interruption would not be scored. End the text with {delimiter!r}, or leave "
            f"generator.interruption_text unset for the task's {interruption_defaults(delimiter)[0]!r}"
        )
    budget = evaluation.thinking_budget
    if "thinking_budget" not in user and gen.thinking_budget is not None:
        budget = gen.thinking_budget[1]  # the longest a training sample may think: eval is never cut shorter
    answer = evaluation.answer_budget if "answer_budget" in user else gen.answer_budget
    return dataclasses.replace(
        evaluation,
        thinking_budget=budget,
        answer_budget=answer,
        interruption_text=gen.interruption_text,
        think_end_text=gen.think_end_text,
    )


def generator_seed(raw_generator: dict, i: int):
    """Generator i samples with generator.seed + i: distinct streams within a run, and another run's with another
    generator.seed (before, every run's generator i had seed i, whatever generator.seed said). A seed that is not an
    int is passed on for from_dict to refuse."""
    base = raw_generator.get("seed", 0)
    return base + i if isinstance(base, int) and not isinstance(base, bool) else base


def generator_config(cfg: RunConfig, i: int) -> GeneratorConfig:
    seed = generator_seed(cfg.raw_generator, i)
    return from_dict(GeneratorConfig, {**cfg.raw_generator, "peer_id": f"gen-{i}", "seed": seed}, "generator.")


def ipc_dir(run_dir: str, create: bool) -> Path:
    """Where a run's ipc sockets live: short (ipc paths are limited to ~100 bytes), outside the run directory
    (sockets are not results), and the same for a resumed run."""
    import hashlib
    import tempfile

    key = hashlib.sha1(str(Path(run_dir).resolve()).encode()).hexdigest()[:12]
    path = Path(tempfile.gettempdir()) / f"scalerl-{os.getuid()}" / key
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


# tcp: the evaluation weight channel's port is run.base_port + EVAL_PORT_OFFSET (+4 is slurm's rendezvous).
EVAL_PORT_OFFSET = 5


def _eval_weights_address(run: RunSection, where: Path) -> str:
    if run.transport == "tcp":
        return f"tcp://{run.host}:{run.base_port + EVAL_PORT_OFFSET}"
    return f"ipc://{where}/evalweights"


# tcp: the weight group's rendezvous (weights_transport dist / vllm-*) is run.base_port + WEIGHTS_PORT_OFFSET.
WEIGHTS_PORT_OFFSET = 6
HIGHEST_PORT_OFFSET = max(len(ADDRESS_KEYS) - 1, slurm.RDZV_PORT_OFFSET, EVAL_PORT_OFFSET, WEIGHTS_PORT_OFFSET)
MAX_PORT = 65535
WIRING_DOC = "docs/architecture.md, 'Where each config value comes from'"
# Keys that were section keys before [wiring] existed: a config that still sets them gets told where they went.
FORMER_GENERATOR_KEYS = ("dist_init_method", "dist_world_size")


def _refuse_wiring(section: str, table: dict) -> None:
    """Under scalerl train the wiring is derived; a section that sets one of its keys gets told which [run] or
    [generator] key decides it instead."""
    own = {f.name for f in dataclasses.fields(SECTIONS[section])}  # [generator] weights_transport is the user's
    wiring_only = ({f.name for f in dataclasses.fields(RunWiring)} | set(FORMER_GENERATOR_KEYS)) - own
    for key in table:
        if key in wiring_only:
            raise ConfigError(
                f"'{section}.{key}' is run wiring, derived by scalerl train from [run] (transport, host, base_port, "
                f"n_generators, allow_remote) and [generator] (weights_transport, dist_backend, dtype, backend, vllm); "
                f"set those instead ({WIRING_DOC})"
            )


def _weight_transport(run: RunSection, gen_raw: dict) -> dict:
    """The [wiring] weight keys from [generator] weights_transport, dist_backend and dtype. The group is the
    trainer (rank 0) plus one rank per generator (dist) or per vLLM worker (vllm-*)."""
    transport = gen_raw.get("weights_transport", DEFAULT_WEIGHT_TRANSPORT)
    if transport not in TRANSPORTS:
        known = ", ".join(repr(t) for t in TRANSPORTS)
        raise ConfigError(f"'generator.weights_transport' must be one of {known}, not {transport!r}")
    spec = TRANSPORTS[transport]
    wiring = {"weights_transport": transport, "weights_dtype": gen_raw.get("dtype", "float32")}
    if not spec.broadcast:
        return wiring
    if run.restart_generators:
        raise ConfigError(
            f"run.restart_generators needs generator.weights_transport = 'zmq': a restarted generator cannot rejoin "
            f"the {transport} group"
        )
    vllm = from_dict(VllmSection, gen_raw.get("vllm", {}), "generator.vllm.")
    per_generator = vllm.tensor_parallel_size * vllm.engines if spec.vllm_engine is not None else 1
    if run.transport == "tcp":
        init = f"tcp://{run.host}:{run.base_port + WEIGHTS_PORT_OFFSET}"
    else:  # one host, no port plan: any free one (the resolved config keeps it for every process of the run)
        import socket

        with socket.socket() as s:
            s.bind((LOOPBACK_IP, 0))
            init = f"tcp://{LOOPBACK_IP}:{s.getsockname()[1]}"
    return wiring | {
        "weights_dist_init_method": init,
        "weights_dist_world_size": 1 + run.n_generators * per_generator,
        "weights_dist_backend": spec.backend(gen_raw.get("dist_backend", "gloo")),
    }


def _addresses(run: RunSection, where: Path) -> dict:
    if run.transport == "tcp":
        return {key: f"tcp://{run.host}:{run.base_port + i}" for i, key in enumerate(ADDRESS_KEYS)}
    return {key: f"ipc://{where}/{key.split('_')[0]}" for key in ADDRESS_KEYS}
