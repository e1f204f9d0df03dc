"""A model whose joint forward+gradient graph is past sizes.MAX_NODES is refused before it is built:
a YAML config while its names are counted (before its nodes are read and the graph made), a
Python model while it is traced. The early count must be exact, so nothing within the limit is
refused: it is checked against the model graph's own count (graph.joint_size) on many shapes of
config."""

import glob
import random
import textwrap

import pytest

from ckpt.frontends import python as pyfront
from ckpt.model import build_graph, config, parse_config
from ckpt.model.graph import joint_size
from ckpt.sizes import MAX_NODES

from helpers import assert_one_line, invoke


def early_count(text, overrides=None):
    """The count the config reader makes before expanding (None: it leaves the document to expand)."""
    loader = config._Loader(text)
    try:
        doc = loader.get_single_data()
    finally:
        loader.dispose()
    r = config._Reader("<config>", doc, overrides or {})
    r.read_dims()
    return r.joint_nodes()


def built_count(text, overrides=None):
    return joint_size(build_graph(parse_config(text, overrides=overrides)))


class Expanded(Exception):
    pass


def forbid_expansion(monkeypatch):
    """From here on, fail loudly if a config's nodes are expanded: a refusal must come before."""
    def expand(self, *a, **k):
        raise Expanded
    monkeypatch.setattr(config._Reader, "expand", expand)


@pytest.fixture
def no_expansion(monkeypatch):
    forbid_expansion(monkeypatch)


def read(name):
    with open(f"configs/{name}.yaml") as f:
        return f.read()


# ---- the early count is the model graph's count --------------------------------------------------
@pytest.mark.parametrize("path", sorted(glob.glob("configs/*.yaml")))
def test_early_count_equals_the_graphs_on_every_config(path):
    text = open(path).read()
    if "gpt_large" in path:  # planning-only sizes; the count does not depend on them
        over = {"L": 2, "V": 64, "D": 64, "H": 2, "HD": 32, "T": 16}
    else:
        over = {}
    assert early_count(text, over) == built_count(text, over)


@pytest.mark.parametrize("name,over", [("mlp_deep", {"L": 1}), ("mlp_deep", {"L": 7}), ("gpt_small", {"L": 1}),
                                       ("gpt_small", {"L": 3}), ("resnet_small", {"R": 1}),
                                       ("resnet_small", {"R": 5})])
def test_early_count_follows_dims_that_multiply_layers(name, over):
    text = read(name)
    assert early_count(text, over) == built_count(text, over)


SHAPES = {
    # blocks repeating blocks, `times` from a dim expression, a block output that is not its last node
    "nested": """
        dims: {N: 3, M: 2}
        inputs: {x: {shape: [4], init: normal}}
        blocks:
          inner:
            params: {w: {shape: [4], init: normal}}
            nodes:
              - {name: m, op: mul, inputs: [in, w]}
              - {name: s, op: sin, inputs: [m]}
              - {name: dead, op: exp, inputs: [m]}
            output: s
          outer:
            params: {b: {shape: [4], init: zeros, grad: false}}
            nodes:
              - {name: a, op: add, inputs: [in, b]}
              - {name: r, repeat: inner, times: M*2-1, input: a}
        nodes:
          - {name: body, repeat: outer, times: N, input: x}
          - {name: loss, op: sum, inputs: [body]}
        output: loss
        """,
    # top-level names used before they are defined, a repeat whose input comes later, a full name
    # into a repetition (`body.1.h`), a frozen parameter and an input that takes a gradient
    "forward references": """
        inputs: {x: {shape: [3], init: normal, grad: true}, y: {shape: [3], init: normal}}
        params: {frozen: {shape: [3], init: normal, grad: false}, unused: {shape: [3], init: normal}}
        blocks:
          layer:
            params: {w: {shape: [3], init: normal}}
            nodes:
              - {name: h, op: mul, inputs: [in, w]}
              - {name: t, op: tanh, inputs: [h]}
        nodes:
          - {name: loss, op: sum, inputs: [both]}
          - {name: both, op: add, inputs: [body, side]}
          - {name: side, op: mul, inputs: [body.1.h, frozen]}
          - {name: body, repeat: layer, times: 3, input: start}
          - {name: start, op: add, inputs: [x, y]}
        output: loss
        """,
    # stop_gradient cuts the gradient but not the forward; a branch that reads only inputs
    "stop gradient": """
        inputs: {x: {shape: [2, 3], init: normal}}
        params: {w: {shape: [3, 3], init: normal}, v: {shape: [3, 3], init: normal}}
        nodes:
          - {name: a, op: matmul, inputs: [x, w]}
          - {name: target, op: matmul, inputs: [x, v]}
          - {name: frozen, op: stop_gradient, inputs: [target]}
          - {name: d, op: sub, inputs: [a, frozen]}
          - {name: c, op: exp, inputs: [x]}
          - {name: e, op: mul, inputs: [d, c]}
          - {name: loss, op: mean, inputs: [e]}
        output: loss
        """,
    # residual-bearing ops (layernorm's statistics, dropout's mask) and a block that shadows a name
    "residuals": """
        dims: {L: 3}
        inputs: {x: {shape: [2, 4], init: normal}}
        params: {g: {shape: [4], init: ones}, b: {shape: [4], init: zeros}}
        blocks:
          layer:
            params: {g: {shape: [4], init: ones}}
            nodes:
              - {name: n, op: layernorm, inputs: [in, g, b]}
              - {name: x, op: dropout, inputs: [n], attrs: {p: 0.25}}
        nodes:
          - {name: body, repeat: layer, times: L, input: x}
          - {name: loss, op: sum, inputs: [body]}
        output: loss
        """,
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_early_count_equals_the_graphs_on_odd_configs(shape):
    text = textwrap.dedent(SHAPES[shape])
    assert early_count(text) == built_count(text)


def random_config(seed):
    """A random DAG in any node order (top-level names may be used before they are defined), with
    leaves that do or do not take a gradient, ops that pass none back, dropout's residual, dead
    branches, and a repeated block that reads an outer value."""
    rng = random.Random(seed)
    flag = lambda: rng.choice(["true", "false"])  # noqa: E731
    lines = ["dims: {R: %d}" % rng.randint(1, 3), "inputs:", f"  x: {{shape: [3], init: normal, grad: {flag()}}}",
             f"  y: {{shape: [1], init: normal, grad: {flag()}}}", "params:",
             f"  w: {{shape: [3], init: normal, grad: {flag()}}}", "blocks:", "  cell:",
             f"    params: {{v: {{shape: [3], init: normal, grad: {flag()}}}}}", "    nodes:",
             f"      - {{name: a, op: {rng.choice(['mul', 'add'])}, inputs: [in, v]}}",
             f"      - {{name: b, op: {rng.choice(['sin', 'stop_gradient', 'tanh'])}, inputs: [a]}}",
             "      - {name: c, op: mul, inputs: [b, y]}", "nodes:"]
    names, nodes = ["x", "y", "w"], []
    for k in range(rng.randint(2, 9)):
        name = f"n{k}"
        kind = rng.choice(["unary", "binary", "binary", "repeat"])
        if kind == "unary":
            op = rng.choice(["sin", "exp", "stop_gradient", "dropout"])
            nodes.append(f"  - {{name: {name}, op: {op}, inputs: [{rng.choice(names)}]}}")
        elif kind == "binary":
            op = rng.choice(["add", "mul", "sub"])
            nodes.append(f"  - {{name: {name}, op: {op}, inputs: [{rng.choice(names)}, {rng.choice(names)}]}}")
        else:
            nodes.append(f"  - {{name: {name}, repeat: cell, times: R, input: {rng.choice(names)}}}")
        names.append(name)
    nodes.append(f"  - {{name: loss, op: sum, inputs: [{rng.choice(names[3:])}]}}")
    rng.shuffle(nodes)
    return "\n".join(lines + nodes + ["output: loss"]) + "\n"


@pytest.mark.parametrize("seed", range(60))
def test_early_count_equals_the_graphs_on_random_configs(seed):
    text = random_config(seed)
    assert early_count(text) == built_count(text), text


def test_early_count_leaves_malformed_configs_to_the_reader():
    text = textwrap.dedent(SHAPES["nested"]).replace("inputs: [in, w]", "inputs: [in, nowhere]")
    assert early_count(text) is None
    with pytest.raises(config.ConfigError, match="undefined value 'nowhere'"):
        parse_config(text)


# ---- refused before the nodes are read, with the model graph's message -----------------------------
@pytest.mark.parametrize("command", ["plan", "run"])
def test_too_deep_mlp_is_refused_before_it_is_expanded(command, no_expansion):
    # 60,000 layers: 240,003 model nodes (under the limit), 360,002 joint nodes (over it)
    res = invoke([command, "configs/mlp_deep.yaml", "--set", "L=60000"])
    assert_one_line(res, needle=f"the joint forward+gradient graph has 360002 nodes, more than the {MAX_NODES} "
                                 "ckpt handles")


def test_deep_transformer_by_dims_is_refused_before_it_is_expanded(no_expansion):
    text = read("gpt_small")
    per_layer = early_count(text, {"L": 2}) - early_count(text, {"L": 1})
    layers = MAX_NODES // per_layer + 1
    res = invoke(["plan", "configs/gpt_small.yaml", "--set", f"L={layers}"])
    assert_one_line(res, needle=f"has {early_count(text, {'L': layers})} nodes, more than the {MAX_NODES}")


def test_nested_repeats_past_the_joint_limit_are_refused_before_expanding(tmp_path, monkeypatch):
    # 100 x 500 repetitions of a 3-op block: 150,000 model nodes, 300,000+ joint nodes
    p = tmp_path / "m.yaml"
    text = textwrap.dedent("""
        dims: {N: 100, M: 500}
        inputs: {x: {shape: [2], init: normal}}
        params: {w: {shape: [2], init: normal}}
        blocks:
          cell:
            nodes:
              - {name: a, op: mul, inputs: [in, w]}
              - {name: b, op: sin, inputs: [a]}
              - {name: c, op: add, inputs: [b, in]}
          stack:
            nodes:
              - {name: s, repeat: cell, times: M, input: in}
        nodes:
          - {name: body, repeat: stack, times: N, input: x}
          - {name: loss, op: sum, inputs: [body]}
        output: loss
        """)
    assert early_count(text, {"N": 2, "M": 3}) == built_count(text, {"N": 2, "M": 3})
    forbid_expansion(monkeypatch)
    p.write_text(text)
    # 150,001 ops, their gradients and w's
    assert_one_line(invoke(["plan", str(p)]), needle=f"has {150001 * 2 + 1} nodes, more than the")


def test_just_under_the_limit_is_not_refused_early(no_expansion):
    # 41,666 layers: 249,998 joint nodes; the count lets it through to be read and built
    assert early_count(read("mlp_deep"), {"L": 41666}) == 249998
    with pytest.raises(Expanded):
        config.load_config("configs/mlp_deep.yaml", overrides={"L": 41666})


def test_dead_ops_do_not_count(monkeypatch):
    # a huge branch the loss never reads: the model graph drops it, so the count must too
    text = textwrap.dedent("""
        dims: {L: 60000}
        inputs: {x: {shape: [2], init: normal}}
        params: {w: {shape: [2], init: normal}}
        blocks:
          layer:
            nodes:
              - {name: a, op: mul, inputs: [in, w]}
              - {name: b, op: sin, inputs: [a]}
        nodes:
          - {name: unused, repeat: layer, times: L, input: x}
          - {name: m, op: mul, inputs: [x, w]}
          - {name: loss, op: sum, inputs: [m]}
        output: loss
        """)
    assert early_count(text, {"L": 3}) == built_count(text, {"L": 3}) == 5
    assert early_count(text) == 5
    forbid_expansion(monkeypatch)
    with pytest.raises(Expanded):
        parse_config(text)


# ---- Python models: a runaway loop stops while it is traced ----------------------------------------
LOOP = """
import ckpt


@ckpt.traced(dims={"D": 2, "L": 3}, inputs={"x": {"shape": ["D"], "init": "normal"}})
def chain(x, *, D, L):
    h = x
    for i in range(L):
        with open(__file__ + ".seen", "w") as f:  # how far the loop ran
            f.write(str(i))
        w = ckpt.param(f"w{i}", (D,), init="normal")
        h = ckpt.sin(h * w)
    return h.sum()
"""


def test_python_loop_stops_when_the_joint_graph_passes_the_limit(tmp_path, monkeypatch):
    p = tmp_path / "loop.py"
    p.write_text(LOOP)
    monkeypatch.setattr(pyfront, "MAX_NODES", 600)  # the real limit takes 40,000 iterations to reach
    res = invoke(["plan", f"{p}:chain", "--set", "L=60000"])
    assert_one_line(res, needle="the joint forward+gradient graph has more than the")
    # each iteration adds 5 joint nodes (mul and sin, their gradients, w's gradient): the 601st
    # is in iteration 120, at its first op
    assert (tmp_path / "loop.py.seen").read_text() == "120"


@pytest.mark.parametrize("target,over", [("examples/mlp.py", {"L": 3, "B": 2, "D": 4}),
                                         ("examples/seed.py:f", {}), ("examples/seed.py:leaky", {})])
def test_tracers_bound_is_exact_on_models_without_dead_ops(target, over):
    """The bound the tracer keeps is the model graph's count where every op feeds the loss, so a
    model within the limit is never stopped."""
    spec = pyfront.load_spec(target, {k: str(v) for k, v in over.items()})
    tape_bound = _tape_bound(target, over)
    assert tape_bound == joint_size(build_graph(spec))


def _tape_bound(target, over):
    seen = []
    real = pyfront.GraphTape.document

    def document(self, *a, **k):
        seen.append(self.joint)
        return real(self, *a, **k)
    pyfront.GraphTape.document = document
    try:
        pyfront.trace_document(target, {k: str(v) for k, v in over.items()})
    finally:
        pyfront.GraphTape.document = real
    return seen[0]
