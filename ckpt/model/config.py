"""Read a model config: safe YAML with line numbers, dims and repeated blocks, into a ModelSpec.

The format (README, "Model configs"):

    name: mlp_deep
    dtype: float32            # or float64
    seed: 0
    dims: {B: 64, D: 256, L: 32}
    inputs:  {x: {shape: [B, D], init: normal}, y: {shape: [B, D], init: normal}}
    params:  {}
    blocks:
      layer:
        params: {W: {shape: [D, D], init: xavier}, b: {shape: [D], init: zeros}}
        nodes:
          - {name: h, op: linear, inputs: [in, W, b]}
          - {name: a, op: relu, inputs: [h]}
    nodes:
      - {name: body, repeat: layer, times: L, input: x}
      - {name: loss, op: mse, inputs: [body, y]}
    output: loss
"""

import ast
import difflib
import operator
from dataclasses import dataclass, field

import yaml

from ..errors import ConfigError
from ..ops import REGISTRY, REQUIRED

DTYPES = ("float16", "bfloat16", "float32", "float64")
INT_DTYPES = ("int32", "int64")
INITS = ("normal", "uniform", "xavier", "zeros", "ones", "randint", "causal_mask")
_TOP_KEYS = ("name", "dtype", "seed", "dims", "inputs", "params", "blocks", "nodes", "output", "description", "weights")
_LEAF_KEYS = ("shape", "dtype", "init", "scale", "value", "grad", "high")
_NODE_KEYS = ("name", "op", "inputs", "attrs")
_REPEAT_KEYS = ("name", "repeat", "times", "input")
_BLOCK_KEYS = ("params", "nodes", "output")


@dataclass
class LeafSpec:
    name: str
    kind: str  # "input" | "param"
    shape: tuple
    dtype: str
    init: str = "normal"
    scale: float = 1.0
    value: object = None
    grad: bool = False
    high: int = 2
    line: int = None


@dataclass
class NodeSpec:
    name: str
    op: str
    inputs: list
    attrs: dict
    line: int = None


@dataclass
class ModelSpec:
    name: str
    dtype: str
    seed: int
    leaves: dict  # name -> LeafSpec, inputs first, then params in order of appearance
    nodes: list  # NodeSpec, blocks expanded
    output: str
    file: str = None
    dims: dict = field(default_factory=dict)


# ---- safe YAML that remembers where each mapping and key came from ------------------------------
class _Map(dict):
    line = None
    key_lines: dict = {}


class _Loader(yaml.SafeLoader):
    pass


def _construct_map(loader, node):
    m = _Map()
    yield m
    m.update(loader.construct_mapping(node))
    m.line = node.start_mark.line + 1
    m.key_lines = {k.value: k.start_mark.line + 1 for k, _ in node.value if isinstance(k, yaml.ScalarNode)}


_Loader.add_constructor("tag:yaml.org,2002:map", _construct_map)


def _line(m, key=None):
    if isinstance(m, _Map):
        return m.key_lines.get(key, m.line) if key is not None else m.line
    return None


def load_config(path, overrides=None):
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise ConfigError("no such file", file=path) from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read: {e.__class__.__name__}", file=path) from None
    return parse_config(text, file=path, overrides=overrides)


def parse_config(text, file="<config>", overrides=None):
    try:
        doc = yaml.load(text, Loader=_Loader)  # noqa: S506 -- _Loader is a SafeLoader subclass
    except yaml.constructor.ConstructorError as e:
        line = e.problem_mark.line + 1 if e.problem_mark else None
        tag = (e.problem or "").split("'")[1] if "'" in (e.problem or "") else "tag"
        raise ConfigError(f"YAML tag {tag.replace('tag:yaml.org,2002:', '!!')} is not allowed "
                          "(configs are loaded safely; no Python objects)", file=file, line=line) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        what = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"YAML does not parse: {what}", file=file, line=mark.line + 1 if mark else None) from None
    if doc is None:
        raise ConfigError("empty document: a model needs inputs, nodes and an output", file=file)
    if not isinstance(doc, dict):
        raise ConfigError("the document must be a mapping with inputs, nodes and output", file=file, line=1)
    return _Reader(file, doc, overrides or {}).spec()


class _Reader:
    def __init__(self, file, doc, overrides):
        self.file = file
        self.doc = doc
        self.overrides = dict(overrides)

    def err(self, msg, where=None, key=None, node_key=None):
        return ConfigError(msg, file=self.file, line=_line(where, node_key), key=key)

    def check_keys(self, m, allowed, what):
        if not isinstance(m, dict):
            raise self.err(f"{what} must be a mapping", key=what)
        for k in m:
            if k not in allowed:
                near = difflib.get_close_matches(str(k), allowed, n=1)
                hint = f" (did you mean {near[0]!r}?)" if near else f" (known: {', '.join(allowed)})"
                raise self.err(f"unknown key {k!r}{hint}", m, key=what, node_key=k)

    # ---- dims: named sizes and small integer expressions over them -----------------------------
    def read_dims(self):
        raw = self.doc.get("dims") or {}
        if not isinstance(raw, dict):
            raise self.err("dims must be a mapping of names to sizes", self.doc, key="dims", node_key="dims")
        for k in self.overrides:
            if k not in raw:
                raise ConfigError(f"--set {k}: no such dim in the config (dims: {', '.join(map(str, raw)) or 'none'})",
                                  file=self.file)
        self.dims = {}
        for k, v in raw.items():
            v = self.overrides.get(k, v)
            self.dims[k] = self.size(v, raw, f"dims.{k}", k, allow_names=True)

    _OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
            ast.FloorDiv: operator.floordiv, ast.Div: operator.truediv}

    def _eval(self, node, where, key):
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return node.value
        if isinstance(node, ast.Name):
            if node.id not in self.dims:
                raise self.err(f"unknown dim {node.id!r}", where, key=key)
            return self.dims[node.id]
        if isinstance(node, ast.BinOp) and type(node.op) in self._OPS:
            return self._OPS[type(node.op)](self._eval(node.left, where, key), self._eval(node.right, where, key))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -self._eval(node.operand, where, key)
        raise self.err("only dims, numbers and + - * / // are allowed in size expressions", where, key=key)

    def value(self, v, where, key):
        """A number or a dim expression such as `D*4`."""
        if isinstance(v, str):
            try:
                tree = ast.parse(v, mode="eval").body
            except SyntaxError:
                raise self.err(f"cannot read {v!r} as a size", where, key=key) from None
            return self._eval(tree, where, key)
        return v

    def size(self, v, where, key, node_key=None, allow_names=False, positive=True):
        n = self.value(v, where, key)
        if isinstance(n, float) and n.is_integer():
            n = int(n)
        if isinstance(n, bool) or not isinstance(n, int) or (positive and n <= 0):
            raise self.err(f"size must be a positive integer, got {v!r}", where, key=key, node_key=node_key)
        return n

    def shape(self, v, where, key):
        if v is None:
            raise self.err("missing shape", where, key=key)
        if not isinstance(v, list):
            raise self.err(f"shape must be a list of sizes, got {v!r}", where, key=key, node_key="shape")
        return tuple(self.size(d, where, key, node_key="shape") for d in v)

    def attr(self, v, where, key):
        if isinstance(v, list):
            return [self.attr(x, where, key) for x in v]
        if isinstance(v, str) and v not in ("true", "false"):
            return self.value(v, where, key)
        return v

    # ---- leaves --------------------------------------------------------------------------------
    def leaf(self, name, m, kind, dtype, prefix=""):
        full = prefix + name
        key = f"{kind}s.{full}"
        if not isinstance(m, dict):
            raise self.err("must be a mapping with shape and init or value", self.doc, key=key)
        self.check_keys(m, _LEAF_KEYS, key)
        ldtype = m.get("dtype", dtype)
        if ldtype not in DTYPES + (INT_DTYPES if kind == "input" else ()):
            allowed = DTYPES + (INT_DTYPES if kind == "input" else ())
            raise self.err(f"unknown dtype {ldtype!r} (use one of {', '.join(allowed)})", m, key=key, node_key="dtype")
        if ldtype in DTYPES:
            ldtype = dtype  # one float dtype per model, so --dtype overrides every float leaf
        init = m.get("init", "value" if "value" in m else ("xavier" if kind == "param" else "normal"))
        if init != "value" and init not in INITS:
            near = difflib.get_close_matches(str(init), INITS, n=1)
            raise self.err(f"unknown init {init!r}" + (f" (did you mean {near[0]!r}?)" if near else ""),
                           m, key=key, node_key="init")
        spec = LeafSpec(full, kind, self.shape(m.get("shape"), m, key), ldtype, init=init,
                        scale=float(self.value(m.get("scale", 1.0), m, key)), value=m.get("value"),
                        grad=bool(m.get("grad", kind == "param")), line=_line(m))
        if init == "randint":
            spec.high = self.size(m.get("high", 2), m, key, node_key="high")
        if init == "value" and spec.value is None:
            raise self.err("init: value needs a value", m, key=key)
        if spec.grad and ldtype in INT_DTYPES:
            raise self.err("an integer input cannot take a gradient", m, key=key, node_key="grad")
        return spec

    # ---- nodes and repeated blocks -------------------------------------------------------------
    def expand(self, items, scope, prefix, where_key):
        """Expand a node list; `scope` maps local names to full names. Returns the last name."""
        if not isinstance(items, list):
            raise self.err("nodes must be a list", self.doc, key=where_key)
        last, seen = None, set()
        for item in items:
            if not isinstance(item, dict):
                raise self.err(f"each node must be a mapping, got {item!r}", self.doc, key=where_key)
            name = item.get("name")
            if not isinstance(name, str) or not name or any(c in name for c in ":./ "):
                raise self.err(f"node needs a name without ':', '.', '/' or spaces (got {name!r})", item, key=where_key)
            full = prefix + name
            # Inside a block a name may shadow an outer one; within one node list it must be new.
            if name in seen or (scope is self.top and name in self.leaves):
                raise self.err(f"repeated name {name!r}", item, key=full, node_key="name")
            seen.add(name)
            if "repeat" in item:
                self.check_keys(item, _REPEAT_KEYS, full)
                last = self.repeat(item, scope, prefix, full)
            else:
                self.check_keys(item, _NODE_KEYS, full)
                last = self.node(item, scope, full)
            scope[name] = last
        return last

    def node(self, item, scope, full):
        op = item.get("op")
        if op not in REGISTRY:
            near = difflib.get_close_matches(str(op), list(REGISTRY), n=1)
            raise self.err(f"unknown op {op!r}" + (f" (did you mean {near[0]!r}?)" if near else ""),
                           item, key=full, node_key="op")
        inputs = item.get("inputs", [])
        if isinstance(inputs, str):
            inputs = [inputs]
        if not isinstance(inputs, list) or not all(isinstance(i, str) for i in inputs):
            raise self.err("inputs must be a list of names", item, key=full, node_key="inputs")
        lo, hi = REGISTRY[op].arity
        if not lo <= len(inputs) <= hi:
            want = str(lo) if lo == hi else f"{lo} to {hi}"
            raise self.err(f"{op} takes {want} inputs, got {len(inputs)}", item, key=full, node_key="inputs")
        attrs = item.get("attrs") or {}
        if not isinstance(attrs, dict):
            raise self.err("attrs must be a mapping", item, key=full, node_key="attrs")
        known = {k: v for k, v in REGISTRY[op].attrs.items() if not k.startswith("_")}
        out = {}
        for k, v in attrs.items():
            if k not in known:
                near = difflib.get_close_matches(str(k), list(known), n=1)
                hint = f" (did you mean {near[0]!r}?)" if near else f" ({op} takes {', '.join(known) or 'no attrs'})"
                raise self.err(f"unknown attr {k!r}{hint}", item, key=full, node_key="attrs")
            out[k] = self.attr(v, item, full)
        for k, default in known.items():
            if k not in out:
                if default is REQUIRED:
                    raise self.err(f"{op} needs attr {k!r}", item, key=full)
                out[k] = default
        resolved = [self.resolve(i, scope, item, full) for i in inputs]
        self.nodes.append(NodeSpec(full, op, resolved, out, line=_line(item)))
        self.defined_at[full] = _line(item)
        return full

    def resolve(self, name, scope, item, full):
        if name in scope:
            return scope[name]
        # A later top-level node may be named here (any DAG order); checked once all are read.
        if scope is self.top:
            self.pending.append((name, item, full))
            return name
        near = difflib.get_close_matches(name, list(scope), n=1)
        raise self.err(f"undefined value {name!r}" + (f" (did you mean {near[0]!r}?)" if near else ""),
                       item, key=full, node_key="inputs")

    def repeat(self, item, scope, prefix, full):
        blocks = self.doc.get("blocks") or {}
        bname = item.get("repeat")
        if bname not in blocks:
            near = difflib.get_close_matches(str(bname), list(blocks), n=1)
            raise self.err(f"unknown block {bname!r}" + (f" (did you mean {near[0]!r}?)" if near else ""),
                           item, key=full, node_key="repeat")
        block = blocks[bname]
        self.check_keys(block, _BLOCK_KEYS, f"blocks.{bname}")
        times = self.size(item.get("times", 1), item, full, node_key="times")
        current = self.resolve(str(item.get("input")), scope, item, full)
        for i in range(times):
            pre = f"{full}.{i}."
            inner = dict(scope)
            inner["in"] = current
            for pname, pm in (block.get("params") or {}).items():
                leaf = self.leaf(pname, pm, "param", self.dtype, prefix=pre)
                self.add_leaf(leaf, pm)
                inner[pname] = leaf.name
            last = self.expand(block.get("nodes") or [], inner, pre, f"blocks.{bname}")
            if last is None:
                raise self.err("block has no nodes", block, key=f"blocks.{bname}")
            out = block.get("output")
            current = inner[out] if out is not None and out in inner else last
            if out is not None and out not in inner:
                raise self.err(f"block output {out!r} is not one of its nodes", block, key=f"blocks.{bname}")
        return current

    def add_leaf(self, leaf, m):
        if leaf.name in self.leaves or leaf.name in self.defined_at:
            raise self.err(f"repeated name {leaf.name!r}", m, key=leaf.name)
        self.leaves[leaf.name] = leaf
        self.defined_at[leaf.name] = leaf.line

    def spec(self):
        doc = self.doc
        self.check_keys(doc, _TOP_KEYS, "config")
        self.dtype = doc.get("dtype", "float32")
        if self.overrides.get("dtype") is not None:
            self.dtype = self.overrides.pop("dtype")
        if self.dtype not in DTYPES:
            raise self.err(f"unknown dtype {self.dtype!r} (use one of {', '.join(DTYPES)})", doc, key="dtype",
                           node_key="dtype")
        seed = doc.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise self.err(f"seed must be a non-negative integer, got {seed!r}", doc, key="seed", node_key="seed")
        self.read_dims()
        self.leaves, self.nodes, self.defined_at, self.pending = {}, [], {}, []
        for kind in ("input", "param"):
            group = doc.get(kind + "s") or {}
            if not isinstance(group, dict):
                raise self.err(f"{kind}s must be a mapping of names", doc, key=kind + "s", node_key=kind + "s")
            for name, m in group.items():
                # A parameter may keep a module path for its name (`layers.3.attn.q_proj.weight`).
                if not isinstance(name, str) or any(c in name for c in (":/ " if kind == "param" else ":./ ")):
                    raise self.err(f"bad name {name!r}: no ':', '/' or spaces" + ("" if kind == "param" else ", no '.'"),
                                   doc, key=kind + "s")
                self.add_leaf(self.leaf(name, m, kind, self.dtype), m)
        if "nodes" not in doc:
            raise self.err("missing key 'nodes'", doc, key="config")
        self.top = {k: k for k in self.leaves}
        self.expand(doc["nodes"], self.top, "", "nodes")
        for node in self.nodes:  # forward references to top-level names, repeats' names included
            node.inputs = [i if i in self.defined_at else self.top.get(i, i) for i in node.inputs]
        for name, item, full in self.pending:
            if name not in self.top:
                near = difflib.get_close_matches(name, list(self.defined_at), n=1)
                raise self.err(f"undefined value {name!r}" + (f" (did you mean {near[0]!r}?)" if near else ""),
                               item, key=full, node_key="inputs")
        output = doc.get("output")
        if output is None:
            raise self.err("missing key 'output' (the scalar to differentiate)", doc, key="config")
        output = self.top.get(output, output)
        if output not in {n.name for n in self.nodes}:
            raise self.err(f"output {doc.get('output')!r} is not a node", doc, key="output", node_key="output")
        if "weights" in doc:
            attach_weights(self.leaves, doc["weights"], self.file, _line(doc, "weights"))
        return ModelSpec(str(doc.get("name", "model")), self.dtype, seed, self.leaves, self.nodes, output,
                         file=self.file, dims=self.dims)


def attach_weights(leaves, weights, file, line=None):
    """`weights: FILE.npz` (beside the config): arrays, by leaf name, that replace those leaves'
    inits (what `ckpt import` writes: a module's current weights and the example inputs)."""
    import os

    import numpy as np

    if not isinstance(weights, str) or not weights.endswith(".npz"):
        raise ConfigError(f"weights must name an .npz file, got {weights!r}", file=file, line=line, key="weights")
    path = os.path.join(os.path.dirname(os.path.abspath(file)), weights) if file and file != "<config>" else weights
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read weights {weights}: {e.__class__.__name__}", file=file, line=line,
                          key="weights") from None
    for name, arr in arrays.items():
        leaf = leaves.get(name)
        if leaf is None:
            continue  # arrays of other names (for other tools) are not ckpt's to check
        if tuple(arr.shape) != tuple(leaf.shape):
            raise ConfigError(f"weights {weights}: {name} has shape {tuple(arr.shape)}, the config says "
                              f"{tuple(leaf.shape)}", file=file, line=leaf.line, key=name)
        leaf.init, leaf.value = "value", arr
