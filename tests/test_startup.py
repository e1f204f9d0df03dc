"""Start-up: the command line imports a command's module only when it runs, and heavy modules only
where they are used (scripts/bench_startup.py measures the time; these check what is imported)."""

import importlib
import subprocess
import sys

import pytest
from click.testing import CliRunner

from ckpt.cli import LAZY_COMMANDS, cli
from conftest import config_path


@pytest.mark.parametrize("name", sorted(LAZY_COMMANDS))
def test_the_help_line_listed_is_the_commands_own(name):
    module, attr, line = LAZY_COMMANDS[name]
    cmd = getattr(importlib.import_module(f"ckpt.cli.{module}"), attr)
    assert cmd.name == name
    assert cmd.help.split("\n")[0].strip() == line


def _imported_after(argv):
    """The set of heavy modules that `ckpt ARGV` has imported when it finishes, in a fresh process."""
    code = ("import sys\nfrom ckpt.cli import cli\n"
            f"try:\n    cli.main({argv!r}, standalone_mode=False)\nexcept SystemExit:\n    pass\n"
            "print(' '.join(m for m in ('numpy', 'networkx', 'yaml', 'scipy', 'scipy.optimize', 'matplotlib',"
            " 'sympy', 'torch', 'ckpt.cli.diff', 'ckpt.cli.bench', 'ckpt.plots', 'ckpt.frontends.python', 'ckpt.autodiff',"
            " 'difflib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(out.split("\n")[-2].split())


def test_help_imports_nothing_heavy():
    assert _imported_after(["--help"]) == set()


def test_run_imports_only_what_it_uses():
    got = _imported_after(["run", config_path("seed_example")])
    assert {"numpy", "networkx", "yaml"} <= got
    assert not got & {"scipy", "scipy.optimize", "matplotlib", "sympy", "torch", "ckpt.cli.diff", "ckpt.cli.bench"}
    # nor the figures, the Python front end, forward mode or the "did you mean" matcher: a YAML
    # model run without --plot-memory and without a typo needs none of them
    assert not got & {"ckpt.plots", "ckpt.frontends.python", "ckpt.autodiff", "difflib"}


def test_a_lazy_command_still_runs_and_an_unknown_one_is_one_line():
    res = CliRunner().invoke(cli, ["plan", config_path("seed_example")])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(cli, ["no-such-command"])
    assert res.exit_code == 2 and "No such command" in res.output
