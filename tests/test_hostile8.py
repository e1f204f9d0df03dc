"""Hostile inputs found by driving every command with a fuzz probe (run outside the suite): each
class with its test. Every case is exit 0 with the right figures, or one line and its exit code; never a
traceback, never a value read other than as written, never code run that the user did not write."""

import json
import zipfile

import numpy as np
import pytest

from helpers import assert_one_line, invoke

SEED = """name: m
dtype: float64
inputs:
  x1: {shape: [], value: 2.0, grad: true}
  x2: {shape: [], value: 5.0, grad: true}
nodes:
  - {name: v1, op: log, inputs: [x1]}
  - {name: v2, op: mul, inputs: [x1, x2]}
  - {name: v3, op: sin, inputs: [x2]}
  - {name: v4, op: add, inputs: [v1, v2]}
  - {name: v5, op: sub, inputs: [v4, v3]}
output: v5
"""


def _write(tmp_path, text, name="c.yaml"):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return str(p)


# ---- bfloat16 is for planning only, in every command that makes arrays --------------------------
@pytest.mark.parametrize("args", [["jacobian"], ["jacobian", "--mode", "forward"], ["run", "--steps", "1"]])
def test_bfloat16_is_refused_by_every_command_that_computes(tmp_path, args):
    """jacobian made the leaves itself: a TypeError traceback from np.dtype('bfloat16')."""
    p = _write(tmp_path, SEED.replace("dtype: float64", "dtype: bfloat16"))
    assert_one_line(invoke([args[0], p, *args[1:]]), needle="bfloat16")
    assert_one_line(invoke([args[0], _write(tmp_path, SEED, "s.yaml"), "--dtype", "bfloat16", *args[1:]]),
                    needle="bfloat16")


def test_bfloat16_still_plans(tmp_path):
    res = invoke(["plan", _write(tmp_path, SEED.replace("dtype: float64", "dtype: bfloat16"))])
    assert res.exit_code == 0, res.output


# ---- compile: names from the user are text in the module it writes and runs ----------------------
@pytest.mark.parametrize("name", ['a"""+__import__("os").system("exit 7")+"""', "back\\Nslash", 'ends"', "x'''y"])
def test_a_model_name_never_becomes_code_in_the_compiled_module(tmp_path, name):
    """The model's name went into the module's docstring as written: a name holding three quotes
    ended the docstring, and `compile --check` ran what followed; a backslash made a SyntaxError."""
    p = _write(tmp_path, SEED.replace("name: m", "name: " + json.dumps(name)))
    out = tmp_path / "step.py"
    res = invoke(["compile", p, "-o", str(out), "--check"])
    assert res.exit_code == 0, res.output
    import ast
    doc = ast.get_docstring(ast.parse(out.read_text()))
    assert doc.startswith(f"One training step of {name},")


def test_a_config_path_with_quotes_stays_in_the_docstring(tmp_path):
    folder = tmp_path / 'we"""ird'
    folder.mkdir()
    p = folder / "c.yaml"
    p.write_text(SEED)
    res = invoke(["compile", str(p), "-o", str(tmp_path / "step.py"), "--check"])
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize("names", [["a²", "b"], ["ﬁ", "fi"], ["x₁", "x1"], ["Ⅻ", "XII"]])
def test_compiled_names_are_identifiers_python_reads_as_written(tmp_path, names):
    """'²' is a word character but not an identifier one (SyntaxError); Python reads 'ﬁ' as 'fi'
    (NFKC), so two nodes shared one variable (UnboundLocalError after a `del`, or a wrong value)."""
    a, b = names
    text = f"""name: m
dtype: float64
inputs:
  x: {{shape: [3], value: [1.0, 2.0, 3.0], grad: true}}
nodes:
  - {{name: "{a}", op: exp, inputs: [x]}}
  - {{name: "{b}", op: sin, inputs: [x]}}
  - {{name: s, op: add, inputs: ["{a}", "{b}"]}}
  - {{name: l, op: sum, inputs: [s]}}
output: l
"""
    res = invoke(["compile", _write(tmp_path, text), "-o", str(tmp_path / "step.py"), "--check", "--strategy",
                  "sqrt-n"])
    assert res.exit_code == 0, res.output
    assert "bitwise equal" in res.output


# ---- names printed at the head of a report: no control characters --------------------------------
@pytest.mark.parametrize("name", ['"a\\nb"', '"\\x1b[2J"', '"x\\0"'])
def test_a_model_name_with_control_characters_is_refused(tmp_path, name):
    res = invoke(["plan", _write(tmp_path, SEED.replace("name: m", "name: " + name))])
    assert_one_line(res, needle="name holds a control character")


def test_a_python_model_name_with_control_characters_is_refused(tmp_path):
    p = tmp_path / "m.py"
    p.write_text('import ckpt\n\n@ckpt.traced(inputs={"x": {"shape": [3], "grad": True}}, name="a\\nb")\n'
                 'def f(x):\n    return x.sum()\n')
    assert_one_line(invoke(["plan", f"{p}:f"]), needle="name holds a control character")


def _graph(**graph):
    return {"graph": graph, "nodes": [{"id": "a", "cost_cpu": 1, "cost_ram": 8},
                                      {"id": "b", "cost_cpu": 1, "cost_ram": 8, "backward": True}],
            "links": [{"source": "a", "target": "b"}]}


@pytest.mark.parametrize("graph,needle", [
    ({"name": "a\nb"}, "the graph's name must be a string without control characters"),
    ({"name": "\x1b[31mred"}, "the graph's name must be a string without control characters"),
    ({"name": {"x": 1}}, "the graph's name must be a string"),
    ({"resident_bytes": 1.5}, "resident_bytes must be a whole number of bytes"),  # was read as 1
])
def test_cost_graph_attributes(tmp_path, graph, needle):
    p = _write(tmp_path, json.dumps(_graph(**graph)), "g.json")
    assert_one_line(invoke(["plan", p]), needle=needle)


@pytest.mark.parametrize("graph", [{"name": None}, {"name": 7}, {"name": "ok ünïcode"}, {"resident_bytes": 16.0}])
def test_cost_graph_attributes_that_are_fine(tmp_path, graph):
    res = invoke(["plan", _write(tmp_path, json.dumps(_graph(**graph)), "g.json")])
    assert res.exit_code == 0, res.output


# ---- an error line is one line, whatever the file is called ---------------------------------------
@pytest.mark.parametrize("name", ["a\nb.yaml", "a\rb.yaml", "a\x1b[31mb.yaml"])
def test_an_error_naming_a_file_with_control_characters_is_one_line(tmp_path, name):
    res = invoke(["plan", str(tmp_path / name)])
    assert_one_line(res, needle="no such file")
    assert "\x1b" not in res.output and "\r" not in res.output


def test_a_baseline_path_with_a_newline_is_one_line(tmp_path):
    (tmp_path / "a\nb.json").write_text("{}")
    res = invoke(["bench", _write(tmp_path, SEED), "--steps", "1", "--baseline", str(tmp_path / "a\nb.json")])
    assert_one_line(res, needle="a\\nb.json")


def test_one_line_through_the_entry_point(tmp_path, capsys):
    from ckpt.cli import main
    with pytest.raises(SystemExit) as e:
        main(["plan", str(tmp_path / "x\ny.yaml"), "--points", "1"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1, err


# ---- weights files: anything a zip or numpy can raise, and values the dtype cannot hold ----------
WEIGHTS = """name: m
dtype: DTYPE
weights: m.npz
inputs:
  x: {shape: [2, 3]}
  y: {shape: [2], dtype: LABELS, init: randint, high: 3}
params:
  W: {shape: [3, 3]}
nodes:
  - {name: h, op: linear, inputs: [x, W]}
  - {name: loss, op: softmax_cross_entropy, inputs: [h, y]}
output: loss
"""
GOOD = {"x": np.ones((2, 3)), "y": np.array([0, 1]), "W": np.eye(3)}


def _weights_config(tmp_path, dtype="float64", labels="int64"):
    return _write(tmp_path, WEIGHTS.replace("DTYPE", dtype).replace("LABELS", labels), "m.yaml")


def _corrupt(path, how):
    data = bytearray(path.read_bytes())
    if how == "truncated":
        del data[len(data) // 2:]
    elif how == "deflate":
        data[60:80] = b"\xff" * 20
    elif how == "encrypted":  # the flag bit of every local and central header
        for sig, at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
            i = data.find(sig)
            while i >= 0:
                data[i + at] |= 1
                i = data.find(sig, i + 4)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("how,needle", [
    ("truncated", "cannot read weights m.npz: BadZipFile"),
    ("deflate", "cannot read weights m.npz: error"),          # zlib.error
    ("encrypted", "cannot read weights m.npz: RuntimeError"),
])
def test_a_damaged_weights_archive_is_one_line(tmp_path, how, needle):
    p = _weights_config(tmp_path)
    np.savez_compressed(tmp_path / "m.npz", **GOOD)
    _corrupt(tmp_path / "m.npz", how)
    assert_one_line(invoke(["run", p, "--steps", "1"]), needle=needle)


def test_a_weights_array_header_numpy_cannot_parse_is_one_line(tmp_path):
    p = _weights_config(tmp_path)
    with zipfile.ZipFile(tmp_path / "m.npz", "w") as z:
        z.writestr("W.npy", b"\x93NUMPY\x01\x00\x10\x00{'descr': 'zz', }    \n")  # tokenize.TokenError
    assert_one_line(invoke(["run", p, "--steps", "1"]), needle="cannot read weights m.npz")


@pytest.mark.parametrize("content,needle", [
    ("npy", "is a single .npy array"),   # np.load read it whole (any size the header claims), then a TypeError
    (b"PK\x03\x04garbage" * 4, "BadZipFile"),
    (b"", "is not a zip archive"),
    (b"\x80\x04K\x01.", "is not a zip archive"),  # a pickle
])
def test_weights_that_are_not_an_npz(tmp_path, content, needle):
    p = _weights_config(tmp_path)
    if content == "npy":
        with open(tmp_path / "m.npz", "wb") as f:
            np.save(f, np.eye(3))
    else:
        (tmp_path / "m.npz").write_bytes(content)
    assert_one_line(invoke(["run", p, "--steps", "1"]), needle=needle)


@pytest.mark.parametrize("dtype,labels,arrays,needle", [
    ("float16", "int64", {"W": np.full((3, 3), 1e10)}, "W holds 1e+10, past the range of float16"),
    ("float32", "int64", {"x": np.full((2, 3), -1e300)}, "x holds 1e+300, past the range of float32"),
    ("float64", "int32", {"y": np.array([2**32, 1])}, "outside the range of int32"),  # was label 0
    ("float64", "int64", {"y": np.array([2**64 - 1, 1], np.uint64)}, "outside the range of int64"),  # was -1
])
def test_weights_the_dtype_cannot_hold_are_refused_not_cast(tmp_path, dtype, labels, arrays, needle):
    p = _weights_config(tmp_path, dtype, labels)
    np.savez(tmp_path / "m.npz", **{**GOOD, **arrays})
    assert_one_line(invoke(["run", p, "--steps", "1"]), needle=needle)


def test_weights_a_dtype_override_cannot_hold_are_refused(tmp_path):
    p = _weights_config(tmp_path)
    np.savez(tmp_path / "m.npz", **{**GOOD, "W": np.full((3, 3), 1e6)})
    assert invoke(["run", p, "--steps", "1"]).exit_code == 0
    assert_one_line(invoke(["run", p, "--steps", "1", "--dtype", "float16"]), needle="past the range of float16")


@pytest.mark.parametrize("dtype,arrays", [
    ("float64", {"W": np.full((3, 3), np.finfo(np.float64).min)}),   # PyTorch's masked_fill value
    ("float32", {"W": np.full((3, 3), -np.inf)}),                     # a mask
    ("float64", {"W": np.eye(3).astype(">f4")}),
    ("float64", {"y": np.array([0, 2], np.uint8)}),
])
def test_weights_that_are_fine(tmp_path, dtype, arrays):
    p = _weights_config(tmp_path, dtype)
    np.savez(tmp_path / "m.npz", **{**GOOD, **arrays})
    res = invoke(["plan", p])
    assert res.exit_code == 0, res.output
    res = invoke(["run", p, "--steps", "1"])
    assert res.exit_code == 0 and "Traceback" not in res.output, res.output


# ---- MODEL.py:NAME naming a function the file imports ----------------------------------------------
def test_a_function_imported_into_the_model_file_is_named_as_imported(tmp_path):
    """`examples/seed.py:log` said `examples/seed.py:248: ... above def log`: line 248 of ckpt's own
    frontends/python.py, given as the model file's."""
    p = tmp_path / "m.py"
    p.write_text("import ckpt\nfrom ckpt import log\nfrom os.path import join\n\n"
                 '@ckpt.traced(inputs={"x": {"shape": [3], "grad": True}})\ndef f(x):\n    return log(x).sum()\n')
    for name, origin in (("log", "ckpt.frontends.python"), ("join", "posixpath")):
        res = invoke(["plan", f"{p}:{name}"])
        assert_one_line(res, needle=f"m.py: {name} is imported into this file from {origin}")
        assert "(functions marked @ckpt.traced: f)" in res.output


def test_a_plain_function_of_the_file_still_names_its_line(tmp_path):
    p = tmp_path / "m.py"
    p.write_text("import ckpt\n\n\ndef g(x):\n    return x\n")
    assert_one_line(invoke(["plan", f"{p}:g"]), needle="m.py:4: g: declare its inputs")


# ---- import writes three files: each is checked before any is written ------------------------------
@pytest.mark.parametrize("companion", ["m.npz", "m.torch.json"])
def test_import_checks_the_configs_companions_before_the_trace(tmp_path, monkeypatch, companion):
    """m.torch.json a directory: m.yaml and m.npz were written, then the third write was refused,
    leaving a config without the file `torch-check` and `plan --emit torch` read beside it."""
    import ckpt.frontends.torch_import as ti
    monkeypatch.setattr(ti, "import_model", lambda *a, **k: pytest.fail("traced before the outputs were checked"))
    (tmp_path / companion).mkdir()
    res = invoke(["import", "m.py:f", "-o", str(tmp_path / "m.yaml")])
    assert_one_line(res, needle=f"{companion}: cannot write: the path exists and is not a regular file")
    assert sorted(p.name for p in tmp_path.iterdir()) == [companion]


# ---- an output that is a file the config brings with it ---------------------------------------------
IMPORTED = SEED.replace("name: m", "name: m\nweights: m.npz")


@pytest.mark.parametrize("args,target", [
    (["plan", "CFG", "--emit", "torch", "-o", "OUT"], "m.torch.json"),
    (["export", "CFG", "-o", "OUT"], "m.torch.json"),
    (["bench", "CFG", "--steps", "1", "-o", "OUT"], "m.torch.json"),
    (["bench", "CFG", "--steps", "1", "-o", "OUT"], "m.npz"),
])
def test_an_output_that_is_the_configs_companion_is_refused(tmp_path, args, target):
    """`plan m.yaml --emit torch -o m.torch.json` replaced the metadata `ckpt import` wrote, which
    that very command reads: every later plan of m.yaml failed (`re-run ckpt import`)."""
    cfg = _write(tmp_path, IMPORTED, "m.yaml")
    np.savez(tmp_path / "m.npz", x1=np.float64(2.0))
    (tmp_path / "m.torch.json").write_text('{"old": true}')
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    res = invoke([cfg if a == "CFG" else str(tmp_path / target) if a == "OUT" else a for a in args])
    assert_one_line(res, needle=f"{target} is a file this command reads (its ")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


# ---- a terminal that cannot show a character ckpt prints ---------------------------------------------
@pytest.mark.parametrize("encoding", ["latin-1", "ascii"])
def test_output_in_an_encoding_without_the_characters_is_escaped(tmp_path, encoding):
    """The seed's adjoint trace writes v̄ (a combining macron): UnicodeEncodeError traceback in a
    latin-1 locale."""
    import os
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONIOENCODING": encoding}
    p = subprocess.run([sys.executable, "-m", "ckpt", "trace", os.path.join(root, "configs", "seed_example.yaml")],
                       cwd=root, env=env, capture_output=True, timeout=60)
    assert p.returncode == 0 and b"Traceback" not in p.stderr, p.stderr.decode(errors="replace")
    # escaped, or (click, seeing a stream that claims ASCII) written as UTF-8
    assert b"\\u0304" in p.stdout or "\u0304".encode() in p.stdout


# ---- methods CONFIG: the symbolic side is bounded, never a hang ---------------------------------------
@pytest.mark.parametrize("n,needle", [
    (3, None),                                          # simplify of a 114-node derivative: 11 s
    (5, "symbolic derivatives of more than 5000 tree nodes are not evaluated"),
    (9, "f as one closed-form expression has more than 5000 tree nodes"),
    (300, "the model has 2098 ops, more than the 64"),  # to_sympy alone ran for minutes
])
def test_methods_on_a_deep_scalar_model_finishes(n, needle, monkeypatch):
    """`ckpt methods examples/seed.py:seed_chain` ran for minutes at every N (sympy's simplify at
    N=3, the exponential closed form past it). An alarm fails the test instead of hanging it."""
    import os
    import signal
    pytest.importorskip("sympy")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def hung(*_):
        raise AssertionError("methods ran over 20 s")
    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(20)
    try:
        res = invoke(["methods", os.path.join(root, "examples", "seed.py") + ":seed_chain", "--set", f"N={n}"])
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert res.exit_code == 0, res.output
    assert "reverse mode runs" in res.output
    if needle:
        assert needle in res.output
    else:
        assert "d/dx1 = " in res.output and "simplified" not in res.output
