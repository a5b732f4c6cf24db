"""`scalerl export CHECKPOINT OUT_DIR`: a trainer checkpoint as an ordinary Hugging Face model directory."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option(
    "--dtype",
    type=click.Choice(["auto", "float32", "bfloat16", "float16"]),
    default="auto",
    show_default=True,
    help="Weights dtype of the export; auto = as the checkpoint holds them.",
)
def export(checkpoint, out_dir, dtype):
    """Write CHECKPOINT as an HF model directory OUT_DIR: safetensors weights, config.json, generation config
    and tokenizer, which transformers (from_pretrained) and vLLM load.

    CHECKPOINT is a checkpoint directory (RUN/checkpoints/step-N), or a run directory (its newest checkpoint that
    verifies). OUT_DIR must not exist or be empty; an existing one is kept and filled, file by file (`scalerl
    export RUN .` leaves a shell in it where it was). Checkpoints written at any number of trainer ranks export
    the same way.

    \b
    Exit codes: 0 written; 2 no checkpoint there, a damaged one (named), OUT_DIR not empty, or a link or a
    file where its temporary directory goes (OUT_DIR/.scalerl-export.tmp, or .OUT_DIR.tmp beside it).
    """
    import logging
    import sys

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="scalerl export: %(message)s")
    from scalerl.trainer_service.export import export_checkpoint

    got = export_checkpoint(checkpoint, out_dir, dtype)
    click.echo(
        f"scalerl export: wrote {got['out_dir']} from {got['checkpoint']} (step {got['step']}, "
        f"{got['params']:,} parameters, {got['dtype'].removeprefix('torch.')})",
        err=True,
    )
