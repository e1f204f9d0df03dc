"""Hostile inputs found by a sweep over every command, each class with its test: 0-d values through
every op, labels out of the range their op indexes, literal values a dtype cannot hold, shapes of
more dimensions than numpy makes, names that would break a one-line message, inner names of a
repeat. Every case is exit 0 with the exact figure, or exit 2 and one line; never a traceback."""

import pytest

from ckpt.ops import REGISTRY
from ckpt.sizes import MAX_NDIM
from helpers import assert_one_line, invoke

HEAD = "name: t\ndtype: float64\n"


def _run(tmp_path, text, *args):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return invoke([args[0] if args else "run", str(p), *args[1:]])


# ---- 0-d values: numpy makes a scalar, not an array, of an op on them -------------------------
def _scalar_ops():
    """Every op of one input that takes a 0-d value with its default attrs (from the registry)."""
    out = []
    for name, op in sorted(REGISTRY.items()):
        if op.internal or op.arity[0] != 1 or op.int_inputs or any(a is not None and a.__class__ is object
                                                                      for a in op.attrs.values()):
            continue
        if not op.differentiable:  # stop_gradient: x's only path to the loss carries no gradient
            continue
        try:
            op.shape([()], dict(op.attrs))
        except Exception:
            continue
        out.append(name)
    return out


SCALAR_OPS = _scalar_ops()


def test_scalar_ops_cover_the_ops_that_failed():
    assert {"gelu", "dropout", "exp", "sum", "mean"} <= set(SCALAR_OPS)


@pytest.mark.parametrize("op", SCALAR_OPS)
def test_every_op_on_a_0d_value(tmp_path, op):
    """gelu's and dropout's in-place rules wrote into a numpy scalar (TypeError traceback)."""
    text = (HEAD + "inputs:\n  x: {shape: [], value: 0.7, grad: true}\n"
            f"nodes:\n  - {{name: o, op: {op}, inputs: [x]}}\n  - {{name: loss, op: sum, inputs: [o]}}\noutput: loss\n")
    for args in (("run", "--steps", "1"), ("check",), ("jacobian",)):
        res = _run(tmp_path, text, *args)
        assert res.exit_code == 0, (args, res.output)


@pytest.mark.parametrize("axis", ["0", "[0, 0]", "[0]", "-0"])
@pytest.mark.parametrize("op", ["sum", "mean"])
def test_reduction_over_axis_0_of_a_0d_value(tmp_path, op, axis):
    """Planned as a reduction over nothing, it failed when run (numpy's AxisError)."""
    text = (HEAD + "inputs:\n  x: {shape: [], value: 0.7, grad: true}\n"
            f"nodes:\n  - {{name: o, op: {op}, inputs: [x], attrs: {{axis: {axis}, keepdims: true}}}}\n"
            "  - {name: loss, op: sum, inputs: [o]}\noutput: loss\n")
    res = _run(tmp_path, text, "check")
    assert res.exit_code == 0, res.output
    res = _run(tmp_path, text, "run", "--steps", "1")
    assert res.exit_code == 0 and "0.7" in res.output, res.output


@pytest.mark.parametrize("init", ["xavier", "normal", "uniform", "ones", "zeros"])
def test_every_init_of_a_0d_parameter(tmp_path, init):
    """xavier read the fan of a shape with no axes (IndexError traceback)."""
    text = (HEAD + f"params:\n  w: {{shape: [], init: {init}}}\n"
            "nodes:\n  - {name: o, op: sin, inputs: [w]}\n  - {name: loss, op: sum, inputs: [o]}\noutput: loss\n")
    res = _run(tmp_path, text, "run", "--steps", "1")
    assert res.exit_code == 0, res.output


# ---- integer labels out of the range their op indexes -----------------------------------------
def _labels(leaf, op="softmax_cross_entropy"):
    if op == "embedding":
        body = "params:\n  W: {shape: [4, 2]}\nnodes:\n  - {name: e, op: embedding, inputs: [W, y]}\n" \
               "  - {name: loss, op: sum, inputs: [e]}\n"
    else:
        body = "params:\n  x: {shape: [3, 4]}\nnodes:\n  - {name: loss, op: softmax_cross_entropy, inputs: [x, y]}\n"
    return HEAD + f"inputs:\n  y: {leaf}\n" + body + "output: loss\n"


LABEL_VALUES = ["[0, 1, 4]", "[-1, 0, 1]", "[0, 9, 2]", "-1", "[3, 3, 99999999]"]


@pytest.mark.parametrize("op", ["softmax_cross_entropy", "embedding"])
@pytest.mark.parametrize("value", LABEL_VALUES)
def test_literal_labels_out_of_range(tmp_path, op, value):
    """Past the end: IndexError traceback; negative: numpy indexed from the end, a silent wrong loss."""
    text = _labels(f"{{shape: [3], dtype: int64, value: {value}}}", op)
    for args in (("run", "--steps", "1"), ("check",), ("trace", "--mode", "reverse"), ("jacobian",), ("numeric",)):
        res = _run(tmp_path, text, *args)
        assert_one_line(res, needle="outside 0..3")
        assert ":4: y:" in res.output  # the file, the line and the labels' name


@pytest.mark.parametrize("op", ["softmax_cross_entropy", "embedding"])
def test_labels_in_range_still_run(tmp_path, op):
    res = _run(tmp_path, _labels("{shape: [3], dtype: int64, value: [0, 3, 2]}", op), "check")
    assert res.exit_code == 0, res.output
    res = _run(tmp_path, _labels("{shape: [3], dtype: int32, init: randint, high: 4}", op), "check")
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize("op", ["softmax_cross_entropy", "embedding"])
@pytest.mark.parametrize("command", ["plan", "run", "export"])
def test_randint_labels_past_the_classes(tmp_path, op, command):
    """Refused when the config is read, so `plan` says so too (it plans what `run` would fail)."""
    args = ("-o", str(tmp_path / "g.json")) if command == "export" else ()
    res = _run(tmp_path, _labels("{shape: [3], dtype: int64, init: randint, high: 5}", op), command, *args)
    assert_one_line(res, needle="labels below 4")


@pytest.mark.parametrize("init", ["normal", "uniform", "xavier", "causal_mask"])
def test_integer_input_with_a_float_init(tmp_path, init):
    """Drawn as floats and cast: mostly 0 and -1, labels that index wrong without a word."""
    res = _run(tmp_path, _labels(f"{{shape: [3, 3], dtype: int64, init: {init}}}", "embedding"), "plan")
    assert_one_line(res, needle=f"init {init} draws floating-point numbers")


# ---- literal values the dtype cannot hold as written ------------------------------------------
@pytest.mark.parametrize("dtype,value,needle", [
    ("int64", "[1.5, 2]", "whole numbers"),
    ("int32", "[0.5, 1]", "whole numbers"),
    ("int64", "[1.0e+30, 1]", "out of the range of int64"),    # OverflowError traceback
    ("int64", "[1e30, 1]", "write it with a point and a sign"),  # YAML 1.1 reads 1e30 as a string
    ("int64", "[9223372036854775808, 1]", "out of the range of int64"),
    ("int32", "[2147483648, 1]", "out of the range of int32"),  # OverflowError traceback
    ("int32", "[-2147483649, 1]", "out of the range of int32"),
])
def test_integer_values_out_of_their_dtype(tmp_path, dtype, value, needle):
    text = _labels(f"{{shape: [2], dtype: {dtype}, value: {value}}}", "embedding")
    for command in ("plan", "run"):
        assert_one_line(_run(tmp_path, text, command), needle=needle)


def test_integer_values_at_the_edge_of_their_dtype_are_read_exactly(tmp_path):
    for dtype, value in (("int32", "[-2147483648, 2147483647]"), ("int64", "[-9223372036854775808, 2.0]")):
        res = _run(tmp_path, _labels(f"{{shape: [2], dtype: {dtype}, value: {value}}}", "embedding"), "plan")
        assert res.exit_code == 0, res.output


@pytest.mark.parametrize("dtype,value", [("float16", "70000.0"), ("float16", "-1.0e+5"), ("float32", "1.0e+39"),
                                         ("bfloat16", "-1.0e+39")])
def test_float_values_past_their_dtype(tmp_path, dtype, value):
    """Stored as inf: a silent wrong loss."""
    text = (f"name: t\ndtype: {dtype}\ninputs:\n  x: {{shape: [2], value: [{value}, 1], grad: true}}\n"
            "nodes:\n  - {name: loss, op: sum, inputs: [x]}\noutput: loss\n")
    assert_one_line(_run(tmp_path, text, "plan"), needle=f"out of the range of {dtype}")
    # --dtype overrides the config's: the value is checked against the dtype it will be stored in
    text64 = text.replace(f"dtype: {dtype}", "dtype: float64")
    assert _run(tmp_path, text64, "plan").exit_code == 0
    assert_one_line(_run(tmp_path, text64, "plan", "--dtype", dtype), needle=f"out of the range of {dtype}")


# ---- shapes of more dimensions than numpy makes -----------------------------------------------
def test_leaf_shape_past_numpys_dimensions(tmp_path):
    ones = ", ".join(["1"] * (MAX_NDIM + 1))
    text = HEAD + f"inputs:\n  x: {{shape: [{ones}], init: normal, grad: true}}\n" \
                  "nodes:\n  - {name: loss, op: sum, inputs: [x]}\noutput: loss\n"
    for command in ("plan", "run"):  # run failed inside numpy's random generator (ValueError traceback)
        assert_one_line(_run(tmp_path, text, command), needle=f"at most {MAX_NDIM}")
    ok = text.replace(ones, ", ".join(["1"] * MAX_NDIM))
    assert _run(tmp_path, ok, "run", "--steps", "1").exit_code == 0


def test_reshape_past_numpys_dimensions(tmp_path):
    ones = ", ".join(["1"] * (MAX_NDIM + 1))
    text = HEAD + "inputs:\n  x: {shape: [1], init: normal, grad: true}\n" \
                  f"nodes:\n  - {{name: r, op: reshape, inputs: [x], attrs: {{shape: [{ones}]}}}}\n" \
                  "  - {name: loss, op: sum, inputs: [r]}\noutput: loss\n"
    assert_one_line(_run(tmp_path, text, "plan"), needle="reshape attr 'shape'")


# ---- names are printed inside one-line messages -----------------------------------------------
@pytest.mark.parametrize("name", ['"a\\nb"', '"a\\tb"', '"a\\x1b[31m"', '"a\\u2028b"', '"a\\0b"', '"a\\rb"'])
@pytest.mark.parametrize("where", ["input", "node", "param"])
def test_names_with_whitespace_or_control_characters(tmp_path, name, where):
    if where == "input":
        text = HEAD + f"inputs:\n  {name}: {{shape: [2], init: normal, grad: true}}\n" \
                      f"nodes:\n  - {{name: loss, op: sum, inputs: [{name}]}}\noutput: loss\n"
    elif where == "param":
        text = HEAD + f"params:\n  {name}: {{shape: [2]}}\n" \
                      f"nodes:\n  - {{name: loss, op: sum, inputs: [{name}]}}\noutput: loss\n"
    else:
        text = HEAD + "inputs:\n  x: {shape: [2], init: normal, grad: true}\n" \
                      f"nodes:\n  - {{name: {name}, op: neg, inputs: [x]}}\n" \
                      f"  - {{name: loss, op: sum, inputs: [{name}]}}\noutput: loss\n"
    assert_one_line(_run(tmp_path, text, "plan"), needle="control characters")


# ---- a repeat's inner nodes by their full names -----------------------------------------------
REPEAT = HEAD + """inputs:
  x: {shape: [3], init: normal, grad: true}
blocks:
  inner: {nodes: [{name: h, op: sin, inputs: [in]}]}
  outer: {nodes: [{name: k, repeat: inner, times: 2, input: in}, {name: m, op: neg, inputs: [k]}]}
nodes:
  - {name: r, repeat: outer, times: 2, input: x}
  - {name: loss, op: sum, inputs: [REF]}
output: loss
"""


@pytest.mark.parametrize("ref", ["r.0.k.1.h", "r.1.m", "r.0.k.0.h"])
def test_inner_node_by_its_full_name(tmp_path, ref):
    """Refused as "undefined value 'r.0.k.1.h' (did you mean 'r.0.k.1.h'?)" though `output` takes
    these names and the message offered the very name given."""
    res = _run(tmp_path, REPEAT.replace("REF", ref), "check")
    assert res.exit_code == 0, res.output


def test_misspelt_inner_name_is_still_refused(tmp_path):
    assert_one_line(_run(tmp_path, REPEAT.replace("REF", "r.0.k.7.h"), "plan"), needle="undefined value 'r.0.k.7.h'")


# ---- standard output stays the one document asked for ------------------------------------------
SEED = "configs/seed_example.yaml"


def test_compile_to_stdout_is_only_the_module():
    """The summary line ("wrote -: step(params, inputs) ...") was printed after the module, on
    stdout: `ckpt compile M -o - > step.py` wrote a file that does not parse."""
    import ast
    from click.testing import CliRunner

    from ckpt.cli import cli
    res = CliRunner().invoke(cli, ["compile", SEED, "-o", "-", "--check"])
    assert res.exit_code == 0, res.output
    ast.parse(res.stdout)
    assert "wrote -" in res.stderr and "passed" in res.stderr


def test_compile_to_stdout_with_json_is_refused():
    assert_one_line(invoke(["compile", SEED, "-o", "-", "--json"]), needle="choose one")


@pytest.mark.parametrize("args", [["bench", SEED, "--steps", "1"], ["export", SEED], ["compile", SEED],
                                  ["export-config", "examples/seed.py:f"],
                                  ["bench", SEED, "--steps", "1", "--baseline"],
                                  ["bench", SEED, "--steps", "1", "--update-baseline", "--baseline"]])
def test_empty_output_path(args):
    """bench -o '' ran and wrote nothing, silently; the others said the path 'is not a regular file'."""
    res = invoke(args + ([""] if args[-1] == "--baseline" else ["-o", ""]))
    assert_one_line(res, needle="empty path")


# ---- counts and seeds past what a command can do --------------------------------------------
@pytest.mark.parametrize("args", [["bench", SEED, "--steps"], ["impl", SEED, "--rounds"],
                                  ["torch-check", "m.py:f", "--plan", "p.json", "--steps"]])
@pytest.mark.parametrize("count", ["99999999999999999999", "100001", "0", "-1"])
def test_step_counts_out_of_range(run_main, alarm, args, count):
    """A typo of a count ran for days instead of failing."""
    alarm(60)
    assert_one_line(run_main(args + [count]), needle="is not in the range 1<=x<=100000")


@pytest.mark.parametrize("args", [["import", "m.py:f", "-o", "m.yaml"], ["torch-check", "m.py:f", "--plan", "p.json"]])
@pytest.mark.parametrize("seed", ["-1", str(2**64)])
def test_seeds_out_of_range(run_main, args, seed):
    """numpy's generator refused -1 and torch's 2**64, each with a traceback, after the trace."""
    assert_one_line(run_main(args + ["--seed", seed]), needle="--seed")


def test_torch_check_without_torch_is_one_line(monkeypatch):
    """torch-check imported torch bare (ModuleNotFoundError traceback); import said how to install it."""
    import sys
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError, as without the extra
    assert_one_line(invoke(["torch-check", "m.py:f", "--plan", "p.json"]), needle="needs PyTorch")


# ---- cost graphs and sizes past 2**62 ---------------------------------------------------------
def _cost_graph(tmp_path, text):
    p = tmp_path / "g.json"
    p.write_text(text)
    return invoke(["plan", str(p)])


@pytest.mark.parametrize("text,needle", [
    # json's decoder raised a bare ValueError past Python's 4300-digit limit (traceback)
    ('{"nodes": [{"id": "a", "cost_cpu": 1, "cost_ram": 1' + "0" * 5000 + '}], "links": []}', "4300 digits"),
    ('{"nodes": [{"id": "a", "cost_cpu": 1, "cost_ram": 1}], "links": [], "graph": {"resident_bytes": 1'
     + "0" * 9000 + "}}", "4300 digits"),
    # a workspace past 2**62 was planned (a peak of 2**70 bytes)
    ('{"nodes": [{"id": "a", "cost_cpu": 1, "cost_ram": 1, "ws": 1180591620717411303424}], "links": []}', "2**62"),
    ('{"nodes": [{"id": "a", "cost_cpu": 1, "cost_ram": 2305843009213693952, "ws": 2305843009213693952}, '
     '{"id": "b", "cost_cpu": 1, "cost_ram": 1}], "links": [{"source": "a", "target": "b"}]}', "largest ws"),
    # ids are printed inside one-line messages
    ('{"nodes": [{"id": "a\\nb", "cost_cpu": 1, "cost_ram": 1}], "links": [{"source": "a\\nb", "target": "a\\nb"}]}',
     "control character"),
    ('{"nodes": [{"id": "\\ud800", "cost_cpu": 1, "cost_ram": 1}], "links": []}', "control character"),
    ('{"nodes": [{"id": "a\\u001b[2J", "cost_cpu": 1, "cost_ram": 1}], "links": []}', "control character"),
])
def test_hostile_cost_graph_numbers_and_ids(tmp_path, text, needle):
    assert_one_line(_cost_graph(tmp_path, text), needle=needle)


def test_cost_graph_ids_with_spaces_still_plan(tmp_path):
    res = _cost_graph(tmp_path, '{"nodes": [{"id": "layer 1", "cost_cpu": 1, "cost_ram": 1}], "links": []}')
    assert res.exit_code == 0, res.output


def test_a_baseline_with_a_number_past_the_digit_limit(tmp_path):
    p = tmp_path / "b.json"
    p.write_text('{"schema": 1, "entries": {"x": {"peak": 1' + "0" * 5000 + "}}}")
    assert_one_line(invoke(["bench", SEED, "--steps", "1", "--baseline", str(p)]), needle="4300 digits")


def test_workspace_past_2_62_is_refused_not_planned(tmp_path):
    """Every value under 2**62, the convolution's im2col matrix 2**80 bytes: planned with a peak of
    2**80 before (and a budget of 0.9x was then 'over the largest size ckpt handles')."""
    text = ("name: c\ninputs:\n  x: {shape: [1, 1, 1048576, 1048576], init: normal, grad: true}\n"
            "params:\n  w: {shape: [1, 1, 524288, 524288]}\n"
            "nodes:\n  - {name: y, op: conv2d, inputs: [x, w]}\n  - {name: loss, op: sum, inputs: [y]}\noutput: loss\n")
    for command in ("plan", "export"):
        args = ("-o", str(tmp_path / "g.json")) if command == "export" else ()
        assert_one_line(_run(tmp_path, text, command, *args), needle="the workspace of conv2d node 'y'")
    # the same model at a size that fits is planned
    assert _run(tmp_path, text.replace("1048576", "64").replace("524288", "3"), "plan").exit_code == 0


# ---- the Python front end: wrong calls and declarations name the file and the line ------------
PY_HEAD = '''import ckpt
import numpy as np


@ckpt.traced(inputs={"x": {"shape": [2, 3], "init": "normal", "grad": True}}, dtype="float64")
def f(x):
'''


@pytest.mark.parametrize("body,needle", [
    ("    W = ckpt.param('W', (2.5, 3))\n    return (x @ W).sum()", "got 2.5"),  # int() rounded it to 2
    ("    W = ckpt.param('W', 'ab')\n    return (x @ W).sum()", "shape must be a list or tuple"),
    ("    W = ckpt.param('W', (-1, 3))\n    return (x @ W).sum()", "positive integer"),
    ("    W = ckpt.param('W', (3,), value=float('nan'))\n    return (x * W).sum()", "finite"),
    ("    return ckpt.layernorm(x, np.ones(3), np.zeros(3), eps=-1).sum()", "eps"),
    ("    return (x * float('inf')).sum()", "finite"),
    ("    return ckpt.softmax(x, axis=1.5).sum()", "axis"),
    ("    return x.sum(axis=0, keepdims='yes').sum()", "keepdims"),
    ("    import sys\n    sys.exit(3)", "SystemExit"),  # left the process with exit 3, silently
    ("    raise GeneratorExit()", "GeneratorExit"),
])
def test_wrong_calls_name_the_line(tmp_path, body, needle):
    p = tmp_path / "m.py"
    p.write_text(PY_HEAD + body + "\n")
    res = invoke(["plan", f"{p}:f"])
    assert_one_line(res, needle=needle)
    assert "m.py:7:" in res.output or "m.py:8:" in res.output, res.output  # the body's lines


@pytest.mark.parametrize("decorator,needle", [
    ('@ckpt.traced(inputs=[1, 2])', "inputs=...) must be a mapping"),
    ('@ckpt.traced(inputs={"x": {"shape": [2]}}, dims=[1])', "dims=...) must be a mapping"),
    ('@ckpt.traced(inputs={"x": {"shape": [2]}}, params=5)', "params=...) must be a mapping"),
    ('@ckpt.traced(inputs={"x": {"shape": ["D"]}}, dims={"D": -1})', "dims.D"),
    ('@ckpt.traced(inputs={"x": {"shape": "ab"}})', "shape must be a list"),
    ('@ckpt.traced(inputs={"x": 3})', "must be a mapping"),
    ('@ckpt.traced(inputs={"x": {"shape": [2]}}, seed=-5)', "seed must be"),
    ('@ckpt.traced(inputs={"x": {"shape": [2]}}, name=[1])', "name must be a string"),
    ('@ckpt.traced(inputs={"x": {"shape": [2], "dtype": "int8"}})', "unknown dtype"),
])
def test_bad_declarations_name_the_decorator(tmp_path, decorator, needle):
    p = tmp_path / "m.py"
    p.write_text(f"import ckpt\n\n\n{decorator}\ndef f(x, *, D=1):\n    return ckpt.sin(x).sum()\n")
    res = invoke(["plan", f"{p}:f"])
    assert_one_line(res, needle=needle)
    assert "m.py:4:" in res.output, res.output


@pytest.mark.parametrize("source", ["raise GeneratorExit()\n", "raise BaseException('x')\n"])
def test_model_file_raising_a_base_exception(tmp_path, source):
    p = tmp_path / "m.py"
    p.write_text(source)
    assert_one_line(invoke(["plan", f"{p}:f"]), needle="m.py:1:")


def test_a_decorated_class_is_one_line(tmp_path):
    """decl.fn.__code__ of a class: AttributeError traceback."""
    p = tmp_path / "m.py"
    p.write_text("import ckpt\n\n\n@ckpt.traced(inputs={'x': {'shape': [2]}})\nclass f:\n    pass\n")
    assert_one_line(invoke(["plan", f"{p}:f"]), needle="must return one traced value")


def test_a_runaway_trace_stops_at_the_node_limit(tmp_path, monkeypatch):
    """Recorded to the end (minutes for a long loop) before the limit was checked."""
    from ckpt.frontends import python
    monkeypatch.setattr(python, "MAX_NODES", 50)
    p = tmp_path / "m.py"
    p.write_text(PY_HEAD + "    s = x.sum()\n    for i in range(10**9):\n        s = s + 1.0\n    return s\n")
    res = invoke(["export-config", f"{p}:f", "-o", str(tmp_path / "m.yaml")])
    assert_one_line(res)
    # whichever count passes the limit first: ops recorded, or (x takes a gradient) joint nodes
    assert "more than 50 ops" in res.output or "has more than the 50 nodes" in res.output, res.output
    assert "m.py:9:" in res.output


def test_numeric_warnings_are_one_line(tmp_path):
    """numpy's RuntimeWarning printed the source line inside ckpt under it (two lines of internals)."""
    import subprocess
    import sys
    p = tmp_path / "m.py"
    p.write_text(PY_HEAD + "    return (ckpt.log(x - 10.0)).sum()\n")
    proc = subprocess.run([sys.executable, "-m", "ckpt", "run", f"{p}:f", "--steps", "1"], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == ["ckpt: warning: invalid value encountered in log"], proc.stderr


# ---- YAML alias bombs anywhere in a config ----------------------------------------------------
def _bomb(levels=8):
    """A flow sequence of 10**levels ones in a few hundred bytes (billion laughs, YAML aliases): 10**8,
    so that code which walks it fails the alarm after some seconds rather than hanging for hours."""
    parts = ["&l0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    parts += [f"&l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, levels)]
    return "[" + ", ".join(parts) + "]"


def _bomb_positions():
    from test_hostile_config import POSITIONS
    return POSITIONS


@pytest.fixture
def alarm():
    """Fail, not hang, when a case runs past its seconds (an alias bomb walked element by element)."""
    import signal

    def expired(*_):
        raise TimeoutError("still running: the alias bomb is being expanded")
    old = signal.signal(signal.SIGALRM, expired)
    yield lambda s: signal.alarm(s)
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


@pytest.mark.parametrize("path", _bomb_positions(), ids=lambda p: ".".join(map(str, p)))
def test_alias_bomb_at_every_position(tmp_path, alarm, path):
    """repr of the value in the message walked 10**9 elements (a hang) under attrs, dims, names,
    inputs and the rest; a bomb is one line, at once, wherever it is put."""
    import yaml
    from test_hostile_config import _with
    text = yaml.safe_dump(_with(path, "BOMB_HERE"), default_flow_style=None, width=10**6)
    p = tmp_path / "c.yaml"
    p.write_text(text.replace("BOMB_HERE", _bomb()))
    alarm(20)
    res = invoke(["plan", str(p)])
    assert res.exit_code in (0, 2), res.output
    if res.exit_code == 2:
        assert_one_line(res)


@pytest.mark.parametrize("tail", ["weights: BOMB\n", "description: BOMB\n", "? BOMB\n: 1\n", "unknown_key: BOMB\n"])
def test_alias_bomb_under_other_keys(tmp_path, alarm, tail):
    p = tmp_path / "c.yaml"
    p.write_text(open(SEED).read() + tail.replace("BOMB", _bomb()))
    alarm(20)
    res = invoke(["plan", str(p)])
    assert res.exit_code in (0, 2), res.output
    if res.exit_code == 2:
        assert_one_line(res)


# ---- a named pipe as the config ---------------------------------------------------------------
@pytest.mark.parametrize("name", ["c.yaml", "g.json"])
def test_a_named_pipe_without_a_writer_does_not_hang(tmp_path, alarm, name):
    """open() of a FIFO waited for a writer forever."""
    import os
    p = tmp_path / name
    os.mkfifo(p)
    alarm(20)
    assert_one_line(invoke(["plan", str(p)]))


def test_a_pipe_on_standard_input_is_still_read():
    import subprocess
    import sys
    with open(SEED) as f:  # through a pipe, as `cat config | ckpt plan /dev/stdin`
        proc = subprocess.run([sys.executable, "-m", "ckpt", "plan", "/dev/stdin"], input=f.read(),
                              capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "store-all" in proc.stdout, proc.stderr


@pytest.mark.parametrize("strategy,budget,verdict", [("sqrt-n", "1", "EXCEEDED"), ("store-all", "80", "EXCEEDED"),
                                                     ("store-all", "1GiB", "met")])
def test_compile_says_whether_a_budget_is_met(tmp_path, strategy, budget, verdict):
    """A --memory-budget that store-all or sqrt-n does not plan to was ignored without a word; a
    plan over it is now refused (exit 3, nothing written), as the budget strategy's is."""
    import json
    for extra in ([], ["--json"]):
        res = invoke(["compile", SEED, "--strategy", strategy, "--memory-budget", budget, "-o",
                      str(tmp_path / "s.py"), *extra])
        if verdict == "met":
            assert res.exit_code == 0 and (": met (peak with workspace" in res.output
                                           or json.loads(res.stdout)["budget_met"] is True), res.output
        else:
            assert_one_line(res, code=3, needle="over the memory budget")
            assert not (tmp_path / "s.py").exists()


# ---- --of a value the graph adds ---------------------------------------------------------------
GPT = ["configs/gpt_small.yaml", "--set", "B=1", "--set", "T=2", "--set", "D=4", "--set", "H=1", "--set", "HD=4",
       "--set", "V=3", "--set", "L=1"]


@pytest.mark.parametrize("of", ["lnf:layernorm_stats", "body.0.drop:dropout_mask", "body.0.ln1:layernorm_stats"])
def test_jacobian_of_a_saved_residual(of):
    """A layernorm's saved statistics as --of failed inside the executor ("gradient has shape ()",
    exit 1, as if a check had failed); a dropout mask said no input takes a gradient."""
    res = invoke(["jacobian", GPT[0], "--of", of, *GPT[1:]])
    assert_one_line(res, needle="is a residual ckpt saves for")


# ---- bench entries are named by the file's stem -------------------------------------------------
def test_bench_configs_of_one_stem_are_refused(tmp_path):
    """Two configs named x.yaml in two folders (or two functions of one model file) wrote one
    entry: the second's figures replaced the first's without a word."""
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "x.yaml").write_text(open(SEED).read())
    res = invoke(["bench", str(tmp_path / "a" / "x.yaml"), str(tmp_path / "b" / "x.yaml"), "--steps", "1"])
    assert_one_line(res, needle="both make entries named 'x'")
    # two functions of one model file are two entries (m:f, m:g: tests/test_bench.py); one function
    # of two files of one name is still one name
    for d in ("a", "b"):
        (tmp_path / d / "seed.py").write_text(open("examples/seed.py").read())
    assert_one_line(invoke(["bench", str(tmp_path / "a" / "seed.py:f"), str(tmp_path / "b" / "seed.py:f"),
                            "--steps", "1"]), needle="both make entries named 'seed:f'")


def test_bench_config_given_twice_is_measured_once():
    import json
    res = invoke(["bench", SEED, SEED, "--steps", "1", "--strategy", "store-all", "--json"])
    assert res.exit_code == 0, res.output
    assert list(json.loads(res.stdout)["entries"]) == ["seed_example:store-all"]


# ---- a PyTorch plan file edited by hand ------------------------------------------------------
def _torch_plan(**change):
    doc = {"format": "ckpt-torch-plan", "model": "mlp",
           "inputs": {"x": {"shape": [8, 32], "dtype": "float64"}, "y": {"shape": [8, 32], "dtype": "float64"}},
           "parameters": {},
           "predicted": {"unplanned_held_bytes": 0, "held_end_forward_bytes": 0, "resident_bytes": 0},
           "regions": [{"name": "blocks.0", "checkpoint": True, "save": [{"region": "blocks.0", "op": "aten.mm", "k": 0}]}]}
    for path, v in change.items():
        d, keys = doc, path.split("__")
        for k in keys[:-1]:
            d = d[int(k)] if isinstance(d, list) else d[k]
        d[int(keys[-1]) if isinstance(d, list) else keys[-1]] = v
    return doc


@pytest.mark.parametrize("path,value,needle", [
    ("inputs", [1], "inputs must be a mapping"),
    ("inputs__x", "x", "inputs.x must be a mapping"),
    ("inputs__x__shape", "", "inputs.x.shape must be a list"),
    ("inputs__x__shape", [8, -1], "inputs.x.shape must be a list"),
    ("inputs__x__shape", [8, 2**64], "inputs.x.shape must be a list"),
    ("inputs__x__shape", [1] * 65, "inputs.x.shape must be a list"),
    ("inputs__x__dtype", "aten.nope", "inputs.x.dtype must be one of"),
    ("inputs__x__dtype", 3, "inputs.x.dtype must be one of"),
    ("inputs__x__high", 0, "inputs.x.high"),
    ("parameters", -1, "parameters must be a mapping"),
    ("parameters", {"w": "x"}, "parameters.w must be a list"),
    ("predicted", "", "predicted must be a mapping"),
    ("predicted__resident_bytes", "", "predicted.resident_bytes"),
    ("predicted__held_end_forward_bytes", {"a": 1}, "predicted.held_end_forward_bytes"),
    ("regions", {"a": 1}, "regions must be a list"),
    ("regions__0", 0, "regions[0] must be a mapping"),
    ("regions__0__name", 3, "regions[0] must be a mapping"),
    ("regions__0__checkpoint", "yes", "regions[0] must be a mapping"),
    ("regions__0__members", None, "regions[0].members"),
    ("regions__0__members", [], "regions[0].members"),
    ("regions__0__save", 1.5, "regions[0].save must be a list"),
    ("regions__0__save__0", None, "regions[0].save[0]"),
    ("regions__0__save__0", {"a": 1}, "regions[0].save[0]"),
    ("regions__0__save__0__k", [1], "regions[0].save[0]"),
    ("regions__0__save__0__op", {}, "regions[0].save[0]"),
    ("regions__0__save__0__region", {}, "regions[0].save[0]"),
])
def test_hostile_torch_plan_files(tmp_path, path, value, needle):
    """Read as they were: TypeError, KeyError or AttributeError tracebacks from inside torch-check
    and apply (randn of a string shape, getattr(torch, 3), `s["op"]` of an int)."""
    import json

    from ckpt.backends.torch_apply import load_plan
    from ckpt.errors import ConfigError
    p = tmp_path / "p.json"
    p.write_text(json.dumps(_torch_plan(**{path: value})))
    with pytest.raises(ConfigError) as e:
        load_plan(str(p))
    assert needle in str(e.value) and str(e.value).startswith(str(p)) and "\n" not in str(e.value)


def test_a_good_hand_written_torch_plan_loads(tmp_path):
    import json

    from ckpt.backends.torch_apply import load_plan
    p = tmp_path / "p.json"
    p.write_text(json.dumps(_torch_plan()))
    assert load_plan(str(p))["model"] == "mlp"


def test_torch_check_with_inputs_the_model_cannot_take(tmp_path):
    """The plan's input shapes are not the model's: a RuntimeError traceback from its forward."""
    import json
    pytest.importorskip("torch")
    p = tmp_path / "p.json"
    p.write_text(json.dumps(_torch_plan(inputs__x__shape=[8, 33], regions=[])))
    res = invoke(["torch-check", "tests/torch_models.py:mlp", "--plan", str(p), "--steps", "1"])
    assert_one_line(res, needle="the model's forward fails on the plan's inputs (x, y)")


# ---- the weights file of an imported model ---------------------------------------------------
WEIGHTS_CONFIG = """name: m
dtype: float64
weights: m.npz
inputs:
  x: {shape: [2, 3]}
  y: {shape: [2], dtype: int64, init: randint, high: 3}
params:
  W: {shape: [3, 3]}
nodes:
  - {name: h, op: linear, inputs: [x, W]}
  - {name: loss, op: softmax_cross_entropy, inputs: [h, y]}
output: loss
"""


@pytest.mark.parametrize("arrays,needle", [
    ({"W": ("U1", (3, 3))}, "W holds <U1 values, not real numbers"),
    ({"W": ("complex128", (3, 3))}, "not real numbers"),      # the imaginary part was dropped, silently
    ({"W": ("nan", (3, 3))}, "holds nan values"),              # a nan loss
    ({"y": ("frac", (2,))}, "holds fractions"),                # labels 0.5, 1.7 were read as 0, 1
    ({"y": ("label9", (2,))}, "label 9 is outside 0..2"),      # IndexError traceback
    ({"W": ("bomb", (4000, 4000))}, "has shape (4000, 4000)"),  # inflated (16 MB here) before the check
])
def test_hostile_weights(tmp_path, arrays, needle):
    import numpy as np
    (tmp_path / "m.yaml").write_text(WEIGHTS_CONFIG)
    made = {}
    for k, (kind, shape) in arrays.items():
        made[k] = {"U1": lambda: np.full(shape, "a"), "complex128": lambda: np.ones(shape, complex),
                   "nan": lambda: np.full(shape, np.nan), "frac": lambda: np.array([0.5, 1.7]),
                   "label9": lambda: np.array([0, 9]), "bomb": lambda: np.zeros(shape, np.uint8)}[kind]()
    np.savez_compressed(tmp_path / "m.npz", **made)
    assert_one_line(invoke(["run", str(tmp_path / "m.yaml"), "--steps", "1"]), needle=needle)


def test_weights_of_other_names_are_not_read(tmp_path, monkeypatch):
    import numpy as np
    (tmp_path / "m.yaml").write_text(WEIGHTS_CONFIG)
    np.savez(tmp_path / "m.npz", W=np.eye(3), y=np.array([0, 2]), other=np.zeros(5))
    read = []
    orig = np.lib.npyio.NpzFile.__getitem__
    monkeypatch.setattr(np.lib.npyio.NpzFile, "__getitem__", lambda self, k: read.append(k) or orig(self, k))
    res = invoke(["run", str(tmp_path / "m.yaml"), "--steps", "1"])
    assert res.exit_code == 0, res.output
    assert sorted(read) == ["W", "y"]


def test_ckpt_param_called_while_the_file_loads(tmp_path):
    """Said what was wrong, but neither the file nor the line."""
    p = tmp_path / "m.py"
    p.write_text("import ckpt\n\nW = ckpt.param('W', (3,))\n")
    assert_one_line(invoke(["plan", f"{p}:f"]), needle="m.py:3: ckpt.param is called inside a model function")
