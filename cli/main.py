"""The `scalerl` command. Exit codes: 0 success, 2 usage or bad input, 1 unexpected failure, 130/143 stopped by
SIGINT/SIGTERM.

Subcommand modules import numpy, scipy, matplotlib and torch only inside their functions, so that
`scalerl --help` starts fast.
"""

from __future__ import annotations

import os
import sys

import click

from scalerl.curvefit.errors import InputError
from scalerl.shared.config import ConfigError
from scalerl.shared.errors import one_line
from scalerl.shared.tasks.types import TaskError

from .curve_cmds import compare, fit, forecast, plot
from .eval_cmd import eval_
from .evaluator_cmd import evaluator
from .export_cmd import export
from .generator_cmd import generator
from .launcher import StoppedBeforeStart, stop_reason
from .status_cmd import status
from .sweep_cmd import sweep
from .train_cmd import config, train
from .trainer_cmd import trainer

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT = 0, 1, 2


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="scalerl")
def cli():
    """Predictable RL post-training: fit, forecast and compare compute-performance curves.

    \b
    Exit codes: 0 success; 2 usage error or bad input (one-line message on stderr,
    nothing on stdout); 1 unexpected failure; 130/143 stopped by Ctrl-C/SIGTERM.
    """


for command in (
    train,
    status,
    sweep,
    fit,
    forecast,
    plot,
    compare,
    config,
    export,
    eval_,
    generator,
    evaluator,
    trainer,
):
    cli.add_command(command)


def main(argv=None) -> None:
    try:
        cli.main(args=argv, prog_name="scalerl", standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.exceptions.NoArgsIsHelpError as e:
        # `scalerl` or `scalerl config` alone asks what there is: the help page, not a one-line error made of it.
        click.echo(e.ctx.get_help() if e.ctx else e.format_message())
        sys.exit(EXIT_OK)
    except click.UsageError as e:
        # One line, like every other bad-input error, so that slurm logs and scripts can grep it.
        cmd = e.ctx.command_path if e.ctx else "scalerl"
        click.echo(f"{cmd}: error: {one_line(e.format_message())} (see '{cmd} --help')", err=True)
        sys.exit(EXIT_BAD_INPUT)
    except click.ClickException as e:
        click.echo(f"scalerl: error: {one_line(e.format_message())}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo("scalerl: interrupted", err=True)
        sys.exit(130)
    except StoppedBeforeStart as e:
        # A stop that reached no BeforeStart (cli/launcher.py): a BaseException, so none of the handlers below would
        # take it, and Python would print a traceback and exit 1 for what is a stop, 128 + signal.
        click.echo(f"scalerl: {stop_reason(e.signum)}", err=True)
        sys.exit(128 + e.signum)
    except (InputError, ConfigError, TaskError) as e:
        click.echo(f"scalerl: error: {one_line(e)}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    except BrokenPipeError:  # `scalerl fit ... | head` is not a failure
        sys.exit(EXIT_OK)
    except Exception as e:
        if os.environ.get("SCALERL_DEBUG"):
            raise
        click.echo(
            f"scalerl: internal error: {type(e).__name__}: {one_line(e)} (SCALERL_DEBUG=1 shows the traceback)",
            err=True,
        )
        sys.exit(EXIT_FAILURE)
    sys.exit(EXIT_OK)
