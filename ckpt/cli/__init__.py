"""The command line: one click group; JSON and exit codes are decided here and nowhere else.

One module per command family (run, diff, plan, bench); options they share are in `common`."""

import sys

import click

from .. import __version__
from ..errors import CkptError
from . import bench, diff, plan, run, torch


class _Group(click.Group):
    """Turns ckpt's typed errors into one line on stderr and the error's exit code."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except CkptError as e:
            click.echo(f"ckpt: error: {e}", err=True)
            ctx.exit(e.exit_code)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ckpt")
def cli():
    """ckpt: what to keep, what to recompute, and what it costs, for training deep networks."""


for _command in (run.run, run.trace, plan.plan, plan.export, diff.check, diff.jacobian, diff.numeric, diff.methods,
                 bench.bench, torch.import_, torch.torch_check):
    cli.add_command(_command)


def main():
    try:
        rv = cli.main(standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        click.echo("ckpt: aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        click.echo(f"ckpt: error: {e.format_message()}", err=True)
        sys.exit(e.exit_code)
    except BrokenPipeError:
        sys.exit(0)
    sys.exit(rv if isinstance(rv, int) else 0)
