"""The command line: one click group; JSON and exit codes are decided here and nowhere else.

One module per command family (run, diff, plan, bench); options they share are in `common`. A command's
module (and with it numpy, networkx, the planners) is imported only when that command runs, so that
`ckpt --help` and `ckpt run` do not pay for the other commands' imports (scipy.optimize alone costs
more than the rest of start-up)."""

import importlib
import os
import sys
import warnings

import click

from .. import __version__
from ..errors import CkptError


# command name -> (module in ckpt.cli, function, the one-line help `ckpt --help` lists without importing
# the module). tests/test_startup.py holds each line to the command's own docstring.
LAZY_COMMANDS = {
    "bench": ("bench", "bench",
              "Measure memory and time per config and strategy; compare with or update a baseline."),
    "check": ("diff", "check",
              "Compare reverse-mode gradients with numeric differences in float64 (exit 1 on failure)."),
    "export": ("plan", "export",
               "Write the model's joint forward+backward graph as node-link JSON with costs and bytes."),
    "jacobian": ("diff", "jacobian",
                 "The full Jacobian: a column per forward pass or a row per reverse pass; auto picks fewer passes."),
    "methods": ("diff", "methods",
                "Numeric, symbolic and automatic differentiation side by side, or the expression swell."),
    "numeric": ("diff", "numeric",
                "Numeric differences against reverse mode for h from 1e-1 to 1e-12: truncation vs round-off."),
    "plan": ("plan", "plan", "Plan without running: predicted peak and compute overhead of each strategy."),
    "run": ("run", "run", "Run forward+backward steps under a strategy; report loss, gradients, memory and time."),
    "trace": ("run", "trace",
              "Print the primal, tangent (forward) or adjoint (reverse) traces in the seed's notation."),
    # the seed's three ways to implement AD
    "export-config": ("impl", "export_config",
                      "Write a Python model function (MODEL.py[:NAME]) as the equivalent YAML config."),
    "compile": ("impl", "compile_step",
                "Generate a standalone numpy module whose step(params, inputs) runs the planned forward and backward."),
    # the PyTorch bridge
    "import": ("torch", "import_", "Trace a PyTorch module (its forward returns the loss) into a ckpt config or a cost graph."),
    "torch-check": ("torch", "torch_check",
                    "Run the training step in PyTorch with and without the plan, beside ckpt's prediction."),
    "impl": ("impl", "impl", "Time one training step four ways: interpreter, operator-overloading tape, generated "
                             "code, hand-written numpy."),
}


class _Group(click.Group):
    """Turns ckpt's typed errors into one line on stderr and the error's exit code; imports a
    command's module when the command is looked up to run (see LAZY_COMMANDS)."""

    def list_commands(self, ctx):
        return sorted(set(super().list_commands(ctx)) | set(LAZY_COMMANDS))

    def get_command(self, ctx, name):
        cmd = super().get_command(ctx, name)
        if cmd is not None or name not in LAZY_COMMANDS:
            return cmd
        module, attr, _ = LAZY_COMMANDS[name]
        return getattr(importlib.import_module(f"{__name__}.{module}"), attr)

    def format_commands(self, ctx, formatter):
        # click's own listing, except that a command not yet imported shows its line from the table
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max(map(len, names))
        rows = []
        for name in names:
            cmd = super().get_command(ctx, name) or click.Command(name, help=LAZY_COMMANDS[name][2])
            if not cmd.hidden:
                rows.append((name, cmd.get_short_help_str(limit)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except CkptError as e:
            click.echo(f"ckpt: error: {one_line(str(e))}", err=True)
            ctx.exit(e.exit_code)
        except BrokenPipeError:
            # the reader of standard output went away (`ckpt export ... -o - | head`): click would
            # call that exit 1, which ckpt's codes read as a failed check
            _quiet_stdout()
            ctx.exit(0)
        except MemoryError:  # the memory check should refuse first; this is the last line of defence
            click.echo("ckpt: error: out of memory (the machine or a limit on this process refused an "
                       "allocation); `ckpt plan` plans without allocating", err=True)
            ctx.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ckpt")
def cli():
    """ckpt: what to keep, what to recompute, and what it costs, for training deep networks."""



def one_line(text):
    """A message as one line on a terminal: a newline or escape sequence in a name the user gave (a
    file called `a\nb.json`) is shown escaped, as Python writes it, not obeyed."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def _quiet_stdout():
    """Point standard output at /dev/null, so that the interpreter's last flush into the closed
    pipe raises nothing more."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout is not a file (a test's capture)
        pass


def _one_line_warning(message, category, filename, lineno, line=None):
    """A warning (numpy's overflow in exp, say) as one line: not the file and source line inside ckpt
    that raised it, which read like the start of a traceback."""
    return f"ckpt: warning: {one_line(str(message))}\n"


def main(args=None):
    warnings.formatwarning = _one_line_warning
    for stream in (sys.stdout, sys.stderr):
        # a terminal or pipe whose encoding lacks a character ckpt prints (the seed's v̄ in a latin-1
        # locale, a model's name in ASCII): that character escaped, not a UnicodeEncodeError traceback
        try:
            stream.reconfigure(errors="backslashreplace")
        except (AttributeError, ValueError, OSError):  # not a text file (a test's capture)
            pass
    try:
        rv = cli.main(args=args, prog_name="ckpt", standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        click.echo("ckpt: aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        click.echo(f"ckpt: error: {one_line(e.format_message())}", err=True)
        sys.exit(e.exit_code)
    except BrokenPipeError:
        sys.exit(0)
    sys.exit(rv if isinstance(rv, int) else 0)
