"""Preparing a run directory and its model before any process starts; shared by `scalerl train` and its slurm tasks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

# The user's own settings for a run (its --config file, --set, --max-steps, --max-minutes), apart from the resolved
# config.toml with every default and the wiring filled in: what `scalerl train --resume` starts from.
SETTINGS_NAME = "settings.toml"
# Keys a checkpoint restores whatever the config says (the model's weights; AdamW's param_groups): changed on a
# resume they would be written into config.toml and have no effect.
RESTORED_ON_RESUME = (
    "run.model",
    "trainer.optim.lr",
    "trainer.optim.betas",
    "trainer.optim.eps",
    "trainer.optim.weight_decay",
)


def user_settings(config_path, sets, max_steps, max_minutes, base: dict | None) -> dict:
    """This start's settings: a resumed run's own (`base`), under this command's file, --set and flags."""
    from scalerl.shared.config import apply_sets, load_toml, merge_tables

    raw = merge_tables(base or {}, load_toml(config_path) if config_path is not None else {})
    out = apply_sets(raw, list(sets))
    if max_steps is not None:
        out.setdefault("trainer", {})["max_steps"] = max_steps
    if max_minutes is not None:
        out.setdefault("run", {})["max_minutes"] = max_minutes
    out.get("run", {}).pop("run_dir", None)  # where the run lives, not a setting it carries
    return out


def stored_settings(run_dir: Path) -> dict | None:
    """RUN/settings.toml, or None for a run dir without one (none yet, or made by a release before it)."""
    from scalerl.shared.config import load_toml

    path = Path(run_dir) / SETTINGS_NAME
    return load_toml(path) if path.is_file() else None


def _leaves(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_leaves(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = list(v) if isinstance(v, tuple) else v
    return out


def resume_changes(run_dir: Path, resolved: dict) -> list[tuple[str, Any, Any]]:
    """(key, the run's value, this start's) for each setting a resume changes, from RUN/config.toml. Raises
    ConfigError for a key the checkpoint restores (RESTORED_ON_RESUME): changed, it would not take effect."""
    from scalerl.shared.config import ConfigError, load_toml

    path = Path(run_dir) / "config.toml"
    if not path.is_file():
        return []
    old = {k: v for k, v in _leaves(load_toml(path)).items() if not k.startswith("wiring.")}
    new = {k: v for k, v in _leaves(resolved).items() if not k.startswith("wiring.")}
    changes = [(k, old.get(k), new.get(k)) for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k)]
    for key, was, now in changes:
        if key in RESTORED_ON_RESUME:
            raise ConfigError(
                f"{key} = {now!r} differs from the run's {was!r}, which its checkpoint restores on --resume, so it "
                f"would not take effect: leave it as it was, or start a new run"
            )
    return changes


def say_changes(changes, where: str = "scalerl train") -> None:
    """One line naming what a resume changes (nothing when it changes nothing)."""
    if changes:
        shown = "; ".join(f"{k} {was!r} -> {now!r}" for k, was, now in changes[:8])
        more = f" (and {len(changes) - 8} more)" if len(changes) > 8 else ""
        click.echo(f"{where}: resume changes {shown}{more}", err=True)


def prepare_run_dir(cfg, resolved: dict, resume: bool, settings: dict | None = None) -> Path:
    """Refuse to clobber a finished or running run, write the resolved config (and the user's `settings`, when
    given), make sure the model exists.

    Returns the config file every service of the run reads."""
    from scalerl.shared.config import dump_toml
    from scalerl.shared.ownership import ensure_secret
    from scalerl.shared.run_dir import atomic_write_text, check_fresh

    out = Path(cfg.run.run_dir)
    check_fresh(out, resume)
    if cfg.run.transport == "tcp":
        check_ports_free(cfg)
    out.mkdir(parents=True, exist_ok=True)
    ensure_secret(out)
    config_file = out / "config.toml"
    atomic_write_text(config_file, "# resolved by scalerl train; every default filled in\n" + dump_toml(resolved))
    if settings is not None:
        atomic_write_text(
            out / SETTINGS_NAME,
            "# the settings this run was started with (--config, --set, --max-steps, --max-minutes): scalerl train\n"
            "# --resume starts from them, under its own\n" + dump_toml(settings),
        )
    ensure_model(cfg)
    return config_file


def check_inputs(cfg) -> None:
    """What the run's processes would refuse only once started, checked before the run dir is locked or written, so
    that a refused start is one line and exit 2 and leaves the file system as it was: a bad task file or verifier
    name, a verifier the task's answers do not fit, model directory or tokenizer, a model the torch engine cannot
    run."""
    from scalerl.shared.tasks.catalog import load_task, task_label
    from scalerl.shared.tasks.verifiers import check_verifier_fits

    tokenizer = None
    for task_cfg in cfg.trainer.task_configs():  # every task of a multi-task run
        task = load_task(task_cfg)
        check_verifier_fits(task, task_label(task_cfg))
        tokenizer = check_model(cfg, task, task_cfg)
    check_interruption_fits(cfg, tokenizer)


def check_interruption_fits(cfg, tokenizer=None) -> None:
    """An interrupted completion holds its thinking (up to the budget's max), the forced interruption text and an
    answer, all within trainer.max_new_tokens. Past it the forced text is cut and the sample ends with no answer: a
    reward of 0 for every long thought, so the interruption punishes instead of cutting the thinking short.
    Checked here because the text's length in tokens needs the model's tokenizer (tokenizer: None for the built-in
    tiny model's). cfg.generator is None for a trainer started alone (its evaluation is still checked)."""
    from scalerl.shared.config import ConfigError

    gen, evaluation = cfg.generator, cfg.eval
    cases = []  # (budget key, its max, interruption text, answer budget key, answer budget)
    if gen is not None and gen.thinking_budget is not None:
        budget, text = gen.thinking_budget[1], gen.interruption_text
        cases.append(("generator.thinking_budget", budget, text, "generator", gen.answer_budget))
    text = getattr(evaluation, "interruption_text", None) or (gen.interruption_text if gen is not None else None)
    if getattr(evaluation, "thinking_budget", None) is not None and text:
        cases.append(("eval.thinking_budget", evaluation.thinking_budget, text, "eval", evaluation.answer_budget))
    for key, budget, text, section, answer in cases:
        if tokenizer is None:
            from scalerl.shared.models.tokenizer import encode

            n_forced = len(encode(text))
        else:
            n_forced = len(tokenizer.encode(text, add_special_tokens=False))
        need = budget + n_forced + (answer or 1)
        if need > cfg.trainer.max_new_tokens:
            room = f"and {section}.answer_budget = {answer}" if answer else "and one answer token"
            raise ConfigError(
                f"{key} reaches {budget} tokens: with the interruption text's {n_forced} tokens {room}, an "
                f"interrupted completion needs {need}, but trainer.max_new_tokens = {cfg.trainer.max_new_tokens} ends "
                f"it first (the sample would stop inside the forced text and score 0); raise trainer.max_new_tokens "
                f"or lower the budget"
            )


def check_standalone_inputs(run, model_key: str, check=None) -> None:
    """`check` (default check_inputs, cli/run_setup.py) for a process started alone, on its sections seen as a run
    config (`run`). Its errors name `scalerl train`'s key, run.model; this command's is `model_key`."""
    from scalerl.shared.config import ConfigError

    try:
        (check or check_inputs)(run)
    except ConfigError as e:
        if not str(e).startswith("run.model "):
            raise
        raise ConfigError(model_key + str(e).removeprefix("run.model")) from None


def check_backend_installed(cfg) -> None:
    """generator.backend = 'vllm' without vLLM installed, for generators that scalerl train starts on this node (under
    srun the generator tasks check on their own nodes)."""
    from scalerl.generator_service.config import VLLM_MISSING
    from scalerl.shared.config import ConfigError

    from .defaults import vllm_installed

    generator = getattr(cfg, "generator", None)
    if generator is not None and generator.backend == "vllm" and not vllm_installed():
        raise ConfigError(VLLM_MISSING)


def check_model(cfg, task, task_cfg=None):
    """run.model is a model directory whose tokenizer loads and renders the task's prompts (chat template); returns
    that tokenizer (None for the built-in tiny model)."""
    from scalerl.shared.config import ConfigError
    from scalerl.shared.tasks.chat import format_task

    task_cfg = cfg.trainer.task if task_cfg is None else task_cfg
    if not cfg.run.model:
        if task_cfg.chat_template:
            raise ConfigError("task.chat_template = true, but the built-in tiny model's tokenizer has no chat template")
        return None
    tokenizer = check_model_dir(cfg)
    format_task(task, tokenizer, task_cfg)  # TaskError: a chat template asked for but missing, or unusable
    return tokenizer


def check_model_dir(cfg):
    """run.model is a model directory whose tokenizer loads and which this run's engine can run; returns the
    tokenizer (None for the built-in tiny model). No task is read: a generator renders no prompts (`scalerl
    generator` checks only this).

    Under `scalerl train` this runs twice on one model: here, before any process starts, and again in each
    `scalerl generator` child (cli/generator_cmd.py), which is the command a slurm script or a user runs alone and so
    cannot take a parent's word for it (a flag or variable saying "checked" would let any caller skip the check).
    The second run costs one tokenizer load per generator, in parallel, before an engine load that takes far longer
    (the built-in tiny model is not checked at all), and it gives a model dir changed in between the same one-line
    exit 2."""
    from scalerl.shared.config import ConfigError

    if not cfg.run.model:
        return None
    model = Path(cfg.run.model)
    if not model.is_dir():
        raise ConfigError(f"run.model {cfg.run.model!r}: no such directory (a local Hugging Face model directory)")
    if not (model / "config.json").is_file():
        raise ConfigError(f"run.model {cfg.run.model!r}: no config.json (not a Hugging Face model directory)")
    from scalerl.shared.models.tokenizer import load_tokenizer

    try:
        tokenizer = load_tokenizer(model)
    except Exception as e:  # transformers raises many kinds; any of them means the run cannot start
        raise ConfigError(f"run.model {cfg.run.model!r}: cannot load its tokenizer: {type(e).__name__}: {e}") from None
    # After the tokenizer: a directory that is no model at all is told so, not that its model_type is unsupported.
    _check_torch_engine(cfg, model)
    return tokenizer


def _check_torch_engine(cfg, model: Path) -> None:
    """A model the torch engine cannot run (a mixture of experts, an unsupported model_type) is refused when a
    torch engine would run it: generator.backend 'torch', or inline evaluation (always a CPU torch engine)."""
    from scalerl.generator_service.engine.support import model_dir_problem
    from scalerl.shared.config import ConfigError

    problem = model_dir_problem(model)
    generator = getattr(cfg, "generator", None)
    if problem is None:
        return
    if generator is not None and generator.backend == "torch":
        raise ConfigError(f"run.model {cfg.run.model!r}: {problem}")
    if cfg.eval.mode == "inline":
        raise ConfigError(f"run.model {cfg.run.model!r}: {problem}; eval.mode 'inline' evaluates on one: use 'process'")


def ensure_model(cfg) -> None:
    """Build the cached tiny model once here, so trainer and generators do not race to build it."""
    if cfg.run.model:
        return
    from .progress import prepare_tiny_model

    prepare_tiny_model(cfg.trainer.warm_start_task(), "scalerl train")


def check_ports_free(cfg) -> None:
    """Refuse a tcp run whose ports are taken (another run, another program) before anything starts: otherwise the
    trainer dies on bind, or worse, this run's generators connect to the other run's trainer."""
    import socket
    from urllib.parse import urlsplit

    from scalerl.shared.config import ConfigError
    from scalerl.shared.wire.addresses import LOOPBACK_IP
    from scalerl.shared.wire.weights.registry import weight_transport

    from .run_config import ADDRESS_KEYS, EVAL_PORT_OFFSET, WEIGHTS_PORT_OFFSET

    ports = [(i, key, f"run.base_port + {i}") for i, key in enumerate(ADDRESS_KEYS)]
    if cfg.eval.mode == "process":
        ports.append((EVAL_PORT_OFFSET, "eval_weights_addr", f"run.base_port + {EVAL_PORT_OFFSET}"))
    # The broadcast transports: the trainer hosts the weight group's rendezvous (a TCPStore).
    if weight_transport(cfg.wiring.weights_transport).broadcast:
        rendezvous = urlsplit(cfg.wiring.weights_dist_init_method)
        if rendezvous.port == cfg.run.base_port + WEIGHTS_PORT_OFFSET:
            ports.append((WEIGHTS_PORT_OFFSET, "weights_dist_init_method", f"run.base_port + {WEIGHTS_PORT_OFFSET}"))
    for i, key, where in ports:
        port = cfg.run.base_port + i
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((cfg.run.host if cfg.run.allow_remote else LOOPBACK_IP, port))
            except OSError as e:
                raise ConfigError(
                    f"port {port} ({key}, {where}) on {cfg.run.host} is not free ({e.strerror}); set --set "
                    f"run.base_port=<another port> (a run uses base_port + 0..3, + 5 for its evaluator and + 6 for "
                    f"its weight group)"
                ) from None


def cleanup_sockets(cfg) -> None:
    """Remove the run's ipc socket files and their directory (they are not results; tcp runs have none)."""
    import shutil

    from .run_config import ipc_dir

    if cfg.run.transport == "ipc":
        shutil.rmtree(ipc_dir(cfg.run.run_dir, create=False), ignore_errors=True)
