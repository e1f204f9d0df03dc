"""Every kind of bad input: exit 2 and one line naming the file, the line when known, and the key."""

import subprocess
import sys

import pytest
from click.testing import CliRunner

from ckpt.cli import cli

GOOD = """\
name: t
inputs:
  x: {shape: [2, 3], init: normal}
params:
  w: {shape: [3, 4], init: normal}
nodes:
  - {name: h, op: matmul, inputs: [x, w]}
  - {name: loss, op: sum, inputs: [h]}
output: loss
"""

CASES = {
    "parse": ("name: t\nfoo: bar: baz\n", "does not parse", ":2"),
    "python_tag": ("name: !!python/object/apply:os.system ['echo pwned']\n", "not allowed", ":1"),
    "empty": ("", "empty document", None),
    "unknown_op": (GOOD.replace("op: sum", "op: summ"), "did you mean 'sum'", ":8"),
    "undefined": (GOOD.replace("inputs: [h]", "inputs: [hh]"), "undefined value 'hh'", ":8"),
    "cycle": (GOOD.replace("inputs: [x, w]", "inputs: [loss, w]").replace("op: sum", "op: sum"), "cycle", None),
    "shape": (GOOD.replace("shape: [3, 4]", "shape: [5, 4]"), "(2, 3), (5, 4)", ":7"),
    "zero_size": (GOOD.replace("shape: [2, 3]", "shape: [0, 3]"), "positive integer", ":3"),
    "float_size": (GOOD.replace("shape: [2, 3]", "shape: [2.5, 3]"), "positive integer", ":3"),
    "dtype": (GOOD.replace("init: normal}\nparams", "init: normal, dtype: float8}\nparams"), "unknown dtype", ":3"),
    "repeated": (GOOD.replace("name: loss, op: sum, inputs: [h]", "name: h, op: sum, inputs: [h]"),
                 "repeated name 'h'", ":8"),
    "unknown_key": (GOOD.replace("output: loss", "outptu: loss"), "did you mean 'output'", ":9"),
    "not_scalar": (GOOD.replace("output: loss", "output: h"), "must be a scalar", None),
    "unknown_attr": (GOOD.replace("inputs: [h]}", "inputs: [h], attrs: {axs: 0}}"), "did you mean 'axis'", ":8"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_config_exits_2_with_one_line(tmp_path, case):
    text, needle, line = CASES[case]
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    res = CliRunner().invoke(cli, ["run", str(path)])
    assert res.exit_code == 2, res.output
    out = res.output.strip()
    assert "\n" not in out and "Traceback" not in out
    assert str(path) in out and needle in out
    if line:
        assert f"{path}{line}:" in out


def test_python_tag_is_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.yaml"
    path.write_text(f"name: !!python/object/apply:os.system ['touch {marker}']\n")
    CliRunner().invoke(cli, ["run", str(path)])
    assert not marker.exists()


def test_missing_file(tmp_path):
    res = CliRunner().invoke(cli, ["plan", str(tmp_path / "nope.yaml")])
    assert res.exit_code == 2 and "no such file" in res.output


@pytest.mark.parametrize("args,needle", [
    (["plan", "CFG", "--memory-budget", "12 apples"], "cannot read memory budget"),
    (["plan", "CFG", "--memory-budget", "-5MiB"], "memory budget"),
    (["run", "CFG", "--set", "B"], "KEY=VALUE"),
    (["run", "CFG", "--set", "nope=3"], "no such dim"),
])
def test_bad_flags(tmp_path, args, needle):
    path = tmp_path / "good.yaml"
    path.write_text(GOOD)
    res = CliRunner().invoke(cli, [str(path) if a == "CFG" else a for a in args])
    assert res.exit_code == 2, res.output
    assert needle in res.output and "Traceback" not in res.output


def test_usage_errors_are_one_line_through_the_entry_point(tmp_path):
    res = subprocess.run([sys.executable, "-m", "ckpt", "run", "--strategy", "nope", "x.yaml"],
                         capture_output=True, text=True)
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and "ckpt: error:" in res.stderr


def test_a_plot_matplotlib_cannot_render_is_one_line(tmp_path, monkeypatch, run_main):
    """Past the format checks, matplotlib may still fail to render (a LaTeX or font backend, a
    size): one line naming the file and the error, exit 2, and no file left behind."""
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    def fail(self, *a, **k):
        raise RuntimeError("Failed to process string with tex because latex could not be found\nmore detail")

    monkeypatch.setattr(Figure, "savefig", fail)
    out = tmp_path / "f.png"
    r = run_main(["plan", "configs/seed_example.yaml", "--sweep", "--points", "3", "--plot", str(out)])
    assert r.exit_code == 2, r.output
    assert r.stderr.count("\n") == 1 and "cannot write the plot: RuntimeError: Failed to process" in r.stderr, r.stderr
    assert not out.exists() and not list(tmp_path.iterdir())


@pytest.mark.parametrize("doc,needle", [
    ({"format": "ckpt-torch-plan", "regions": {}}, "this is a plan for PyTorch"),
    ({"arg_order": ["x"], "profile": {}, "regions": []}, "what `ckpt import` records of the PyTorch model"),
])
def test_planning_ckpts_own_torch_files_says_what_they_are(tmp_path, run_main, doc, needle):
    import json
    path = tmp_path / "m.json"
    path.write_text(json.dumps(doc))
    r = run_main(["plan", str(path)])
    assert r.exit_code == 2 and r.stderr.count("\n") == 1 and needle in r.stderr, r.output
