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
import math
import operator
import re
from dataclasses import dataclass, field

import yaml

from ..errors import ConfigError
from ..jsonio import read_text
from ..ops import REGISTRY, REQUIRED, size as n_elements
from ..sizes import MAX_BYTES, MAX_DEPTH, MAX_NDIM, MAX_NODES, joint_nodes_error


def _close_matches(word, choices, n=1):
    """The "did you mean" suggestions of an error message (difflib, imported only for one)."""
    import difflib
    return difflib.get_close_matches(word, choices, n=n)


DTYPES = ("float16", "bfloat16", "float32", "float64")
INT_DTYPES = ("int32", "int64")
INITS = ("normal", "uniform", "xavier", "zeros", "ones", "randint", "causal_mask")
_TOP_KEYS = ("name", "dtype", "seed", "dims", "inputs", "params", "blocks", "nodes", "output", "description", "weights")
_LEAF_KEYS = ("shape", "dtype", "init", "scale", "value", "grad", "high")
_NODE_KEYS = ("name", "op", "inputs", "attrs")
_REPEAT_KEYS = ("name", "repeat", "times", "input")
_BLOCK_KEYS = ("params", "nodes", "output")
# A dim expression is a short formula such as `D*4` or `(H+2*P-K)//S+1`.
MAX_EXPRESSION_CHARS = 200
# YAML is slow to load (PyYAML keeps ~150 bytes per byte of config): configs over this are refused.
# A 10,000-layer MLP written with a repeat block is 600 bytes; written out node by node, ~1 MiB.
MAX_CONFIG_CHARS = 4 * 2**20
# Blocks may repeat other blocks; this many levels deep at most.
MAX_REPEAT_NESTING = 32
# The largest `high` of a randint init, per integer dtype (numpy draws below it).
_INT_HIGH = {"int32": 2**31, "int64": 2**63 - 1}
# The range of a literal value per dtype: a number beyond it would be stored as inf, or wrapped
# around / refused by numpy, not as written.
_VALUE_RANGE = {"float16": 65504.0, "bfloat16": 3.3895313892515355e38, "float32": 3.4028234663852886e38,
                "float64": 1e300, "int32": 2**31 - 1, "int64": 2**63 - 1}

# What each op attribute holds: how the config is read and what the config reference says (a test
# checks that every attribute in the op registry has a kind here). Keyed by attribute name, and by
# (op, attribute) where one op reads a name differently.
ATTR_KINDS = {
    "factor": "number", "axis": "axes", "keepdims": "bool", "shape": "shape", "axes": "permutation",
    "eps": "positive", "stride": "count", "padding": "index", "kernel": "count", "scale": "count",
    "p": "probability", "exponent": "number", "start": "index", "stop": "count", "step": "count",
    "dilation": "count", "first": "bool", "ignore_index": "integer", "average": "bool",
}
ATTR_KINDS_BY_OP = {("concat", "axis"): "axis", ("softmax", "axis"): "axis", ("log_softmax", "axis"): "axis",
                    ("slice", "axis"): "axis", ("labels_view", "axes"): "permutation", ("topk_indices", "k"): "count",
                    ("topk_indices", "largest"): "bool", ("labels_slice", "axis"): "axis",
                    ("float_labels", "high"): "count"}
KIND_TEXT = {
    "number": "a finite number", "positive": "a finite number > 0", "probability": "a number in [0, 1)",
    "bool": "true or false", "count": "an integer >= 1", "index": "an integer >= 0", "integer": "an integer",
    "axis": "an integer axis (negative counts from the end)",
    "axes": "null (every axis), an integer axis, or a list of axes",
    "permutation": "null (reverse the axes) or a list of axes",
    "shape": "a list of sizes, one of which may be -1 (inferred)",
}


def attr_kind(op, name):
    return ATTR_KINDS_BY_OP.get((op, name), ATTR_KINDS.get(name))


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


_BOOL = "tag:yaml.org,2002:bool"


# libyaml's parser where PyYAML has it (several times faster), PyYAML's own otherwise; the
# constructors below are Python either way.
_BaseLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_BaseLoader):
    """A safe loader that refuses what a config never means: duplicate keys (the last would win
    silently) and keys that are lists or mappings. Only `true` and `false` are booleans: YAML
    1.1's yes/no/on/off stay strings, so `grad: no` is refused, not read as false."""

    file = None


def _check_depth(text, file):
    """Refuse nesting deeper than MAX_DEPTH before composing: the composers (Python and libyaml's)
    recurse once per level, so a deep document would exhaust the stack. Parsing into events is
    iterative."""
    scan = _Loader(text)
    try:
        depth = 0
        while scan.check_event():
            event = scan.get_event()
            if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                depth += 1
                if depth > MAX_DEPTH:
                    raise ConfigError(f"nested more than {MAX_DEPTH} levels deep", file=file,
                                      line=event.start_mark.line + 1)
            elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                depth -= 1
    finally:
        scan.dispose()


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != _BOOL]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def _construct_map(loader, node):
    m = _Map()
    yield m
    seen = {}
    for k, _ in node.value:
        if k.tag == "tag:yaml.org,2002:merge":
            continue
        if not isinstance(k, yaml.ScalarNode):
            raise ConfigError("a key must be a plain name, not a list or mapping", file=loader.file,
                              line=k.start_mark.line + 1)
        if k.value in seen:
            raise ConfigError(f"duplicate key {k.value!r} (first on line {seen[k.value]})", file=loader.file,
                              line=k.start_mark.line + 1)
        seen[k.value] = k.start_mark.line + 1
    m.update(loader.construct_mapping(node))
    m.line = node.start_mark.line + 1
    m.key_lines = seen


_Loader.add_constructor("tag:yaml.org,2002:map", _construct_map)


def _line(m, key=None):
    if isinstance(m, _Map):
        return m.key_lines.get(key, m.line) if key is not None else m.line
    return None


def load_config(path, overrides=None):
    return parse_config(read_text(path, "file"), file=path, overrides=overrides)


def parse_config(text, file="<config>", overrides=None):
    if len(text) > MAX_CONFIG_CHARS:
        raise ConfigError(f"config is larger than {MAX_CONFIG_CHARS // 2**20} MiB, the largest YAML ckpt reads "
                          "(repeat blocks keep a deep model short; a cost graph can be JSON)", file=file)
    loader = _Loader(text)
    loader.file = file
    try:
        _check_depth(text, file)
        doc = loader.get_single_data()
    except yaml.constructor.ConstructorError as e:
        line = e.problem_mark.line + 1 if e.problem_mark else None
        problem = e.problem or ""
        if "could not determine a constructor for the tag" in problem and "'" in problem:
            tag = problem.split("'")[1]
            raise ConfigError(f"YAML tag {tag.replace('tag:yaml.org,2002:', '!!')} is not allowed "
                              "(configs are loaded safely; no Python objects)", file=file, line=line) from None
        raise ConfigError(f"YAML does not load: {problem or e}", file=file, line=line) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        what = getattr(e, "problem", None) or str(e).splitlines()[0]
        if "nesting depth" in what:  # newer libyaml stops deep nesting itself, before the scan does
            raise ConfigError(f"nested more than {MAX_DEPTH} levels deep", file=file,
                              line=mark.line + 1 if mark else None) from None
        raise ConfigError(f"YAML does not parse: {what}", file=file, line=mark.line + 1 if mark else None) from None
    except (ValueError, OverflowError) as e:  # e.g. an integer of more digits than Python converts
        raise ConfigError(f"YAML does not load: {str(e).splitlines()[0]}", file=file) from None
    finally:
        loader.dispose()
    if doc is None:
        raise ConfigError("empty document: a model needs inputs, nodes and an output", file=file)
    if not isinstance(doc, dict):
        raise ConfigError("the document must be a mapping with inputs, nodes and output", file=file, line=1)
    return _Reader(file, doc, overrides or {}).spec()


class _Scope(dict):
    """Names visible in a node list: its own, then its enclosing lists' (a chain, never a copy, so
    that expanding a repeat costs its own nodes and not the size of the scope around it)."""

    def __init__(self, parent=None):
        super().__init__()
        self.parent = parent

    def find(self, name):
        s = self
        while s is not None:
            if name in s:
                return s[name]
            s = s.parent
        return None

    def names(self):
        out, s = set(), self
        while s is not None:
            out |= set(s)
            s = s.parent
        return sorted(out)


def _text(v):
    """A name as a message shows it: itself when a string, else bounded (see _describe)."""
    return v if isinstance(v, str) else _describe(v)


def _describe(v):
    """A value as a message shows it: short, whatever its type. reprlib's, not repr: it stops after
    a few items and levels, where repr would walk every element of a YAML alias bomb (10**9 of them
    in a few lines)."""
    import reprlib
    r = reprlib.Repr()
    r.maxstring, r.maxother = 60, 60
    text = r.repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


class _Reader:
    def __init__(self, file, doc, overrides):
        self.file = file
        self.doc = doc
        self.overrides = dict(overrides)
        self._parsed = {}

    def err(self, msg, where=None, key=None, node_key=None):
        return ConfigError(msg, file=self.file, line=_line(where, node_key), key=key)

    def check_keys(self, m, allowed, what):
        if not isinstance(m, dict):
            raise self.err(f"{what} must be a mapping, got {_describe(m)}", key=what)
        for k in m:
            if k not in allowed:
                near = _close_matches(str(k), allowed, n=1)
                hint = f" (did you mean {near[0]!r}?)" if near else f" (known: {', '.join(allowed)})"
                raise self.err(f"unknown key {_describe(k)}{hint}", m, key=what, node_key=k)

    def mapping(self, m, what, where, node_key=None):
        """A mapping or nothing (null or absent reads as empty)."""
        if m is None:
            return {}
        if not isinstance(m, dict):
            raise self.err(f"{what} must be a mapping, got {_describe(m)}", where, key=what, node_key=node_key)
        return m

    def name(self, v, what, where, key, node_key="name", dots=False):
        banned = ":/" if dots else ":./"
        # whitespace and control characters too: a name is printed inside one-line messages
        if not isinstance(v, str) or not v or any(c in banned or c.isspace() or not c.isprintable() for c in v):
            listed = "':', '/', spaces or control characters" if dots else "':', '.', '/', spaces or control characters"
            raise self.err(f"{what} must be a name without {listed}, got {_describe(v)}", where, key=key,
                           node_key=node_key)
        return v

    # ---- dims: named sizes and small integer expressions over them -----------------------------
    def read_dims(self):
        raw = self.mapping(self.doc.get("dims"), "dims", self.doc, "dims")
        for k in self.overrides:
            if k not in raw:
                raise ConfigError(f"--set {k}: no such dim in the config (dims: {', '.join(map(str, raw)) or 'none'})",
                                  file=self.file)
        self.dims = {}
        for k, v in raw.items():
            if not isinstance(k, str) or not k.isidentifier():
                raise self.err(f"dim name {_describe(k)} must be an identifier (letters, digits, _)", raw,
                               key="dims", node_key=k)
            v = self.overrides.get(k, v)
            self.dims[k] = self.size(v, raw, f"dims.{k}", k)

    _OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
            ast.FloorDiv: operator.floordiv, ast.Div: operator.truediv}

    def _eval(self, node, where, key):
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
            return node.value
        if isinstance(node, ast.Name):
            if node.id not in self.dims:
                known = ", ".join(self.dims) or "none"
                raise self.err(f"unknown dim {node.id!r} (dims: {known})", where, key=key)
            return self.dims[node.id]
        if isinstance(node, ast.BinOp) and type(node.op) in self._OPS:
            return self._OPS[type(node.op)](self._eval(node.left, where, key), self._eval(node.right, where, key))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            v = self._eval(node.operand, where, key)
            return -v if isinstance(node.op, ast.USub) else v
        raise self.err("only dims, numbers and + - * / // are allowed in size expressions", where, key=key)

    def value(self, v, where, key):
        """A number or a dim expression such as `D*4`."""
        if isinstance(v, str):
            if len(v) > MAX_EXPRESSION_CHARS:
                raise self.err(f"size expression of {len(v)} characters (at most {MAX_EXPRESSION_CHARS})",
                               where, key=key)
            try:
                tree = self._parsed.get(v)
                if tree is None:  # a repeated block reads the same few expressions again and again
                    tree = self._parsed[v] = ast.parse(v, mode="eval").body
                return self._eval(tree, where, key)
            except (SyntaxError, ValueError, MemoryError, RecursionError):
                raise self.err(f"cannot read {_describe(v)} as a size", where, key=key) from None
            except ZeroDivisionError:
                raise self.err(f"division by zero in {_describe(v)}", where, key=key) from None
            except OverflowError:
                raise self.err(f"{_describe(v)} is too large", where, key=key) from None
        return v

    def size(self, v, where, key, node_key=None, positive=True, limit=MAX_BYTES):
        n = self.value(v, where, key)
        if isinstance(n, float) and math.isfinite(n) and n.is_integer():
            n = int(n)
        if isinstance(n, bool) or not isinstance(n, int) or (positive and n <= 0):
            raise self.err(f"size must be a positive integer, got {_describe(v)}", where, key=key, node_key=node_key)
        if abs(n) > limit:
            raise self.err(f"size {_describe(v)} is over {limit} (2**{limit.bit_length() - 1})" if limit == MAX_BYTES
                           else f"{_describe(v)} is over {limit}", where, key=key, node_key=node_key)
        return n

    def number(self, v, where, key, node_key):
        n = self.value(v, where, key)
        if isinstance(n, bool) or not isinstance(n, (int, float)):
            raise self.err(f"{node_key} must be a number, got {_describe(v)}", where, key=key, node_key=node_key)
        try:
            n = float(n)
        except OverflowError:
            n = math.inf
        if not math.isfinite(n):
            raise self.err(f"{node_key} must be a finite number, got {_describe(v)}", where, key=key, node_key=node_key)
        return n

    def shape(self, v, where, key):
        if v is None:
            raise self.err("missing shape", where, key=key)
        if not isinstance(v, list):
            raise self.err(f"shape must be a list of sizes, got {_describe(v)}", where, key=key, node_key="shape")
        if len(v) > MAX_NDIM:
            raise self.err(f"shape of {len(v)} dimensions (at most {MAX_NDIM})", where, key=key, node_key="shape")
        return tuple(self.size(d, where, key, node_key="shape") for d in v)

    def attr(self, op, name, v, where, key):
        """An op attribute, read by its kind (ATTR_KINDS); dim expressions are evaluated."""
        kind = attr_kind(op, name)
        want = KIND_TEXT.get(kind, "")

        def bad():
            return self.err(f"{op} attr {name!r} must be {want}, got {_describe(v)}", where, key=key, node_key="attrs")

        def integer(x):
            n = self.value(x, where, key)
            if isinstance(n, float) and math.isfinite(n) and n.is_integer():
                n = int(n)
            if isinstance(n, bool) or not isinstance(n, int) or abs(n) > MAX_BYTES:
                raise bad()
            return n

        def integers(items):
            if any(isinstance(x, (list, dict)) or x is None for x in items):
                raise bad()
            return [integer(x) for x in items]

        if kind == "bool":
            if not isinstance(v, bool):
                raise bad()
            return v
        if kind in ("number", "positive", "probability"):
            if isinstance(v, (list, dict)) or v is None:
                raise bad()
            n = self.number(v, where, key, "attrs")
            if (kind == "positive" and n <= 0) or (kind == "probability" and not 0 <= n < 1):
                raise bad()
            return n
        if kind in ("count", "index", "axis", "integer"):
            if isinstance(v, (list, dict)) or v is None:
                raise bad()
            n = integer(v)
            if (kind == "count" and n < 1) or (kind == "index" and n < 0):
                raise bad()
            return n
        if kind in ("axes", "permutation"):
            if v is None:
                return None
            if kind == "axes" and not isinstance(v, (list, dict)):
                return integer(v)
            if not isinstance(v, list):
                raise bad()
            return integers(v)
        if kind == "shape":
            if not isinstance(v, list) or not v:
                raise bad()
            out = integers(v)
            if any(n < 1 and n != -1 for n in out) or out.count(-1) > 1 or len(out) > MAX_NDIM:
                raise bad()
            return out
        raise self.err(f"{op} attr {name!r} has no reading rule (a bug: add it to ATTR_KINDS)", where, key=key)

    # ---- leaves --------------------------------------------------------------------------------
    def leaf(self, name, m, kind, dtype, prefix=""):
        full = prefix + name
        key = f"{kind}s.{full}"
        if not isinstance(m, dict):
            raise self.err(f"must be a mapping with shape and init or value, got {_describe(m)}", self.doc, key=key)
        self.check_keys(m, _LEAF_KEYS, key)
        allowed = DTYPES + (INT_DTYPES if kind == "input" else ())
        ldtype = m.get("dtype", dtype)
        if not isinstance(ldtype, str) or ldtype not in allowed:
            raise self.err(f"unknown dtype {_describe(ldtype)} (use one of {', '.join(allowed)})", m, key=key,
                           node_key="dtype")
        if ldtype in DTYPES:
            ldtype = dtype  # one float dtype per model, so --dtype overrides every float leaf
        init = m.get("init", "value" if "value" in m else ("xavier" if kind == "param" else "normal"))
        if not isinstance(init, str) or (init != "value" and init not in INITS):
            near = _close_matches(str(init), INITS, n=1) if isinstance(init, str) else []
            raise self.err(f"unknown init {_describe(init)}" + (f" (did you mean {near[0]!r}?)" if near else "")
                           + f" (inits: {', '.join(INITS)}, or value)", m, key=key, node_key="init")
        grad = m.get("grad", kind == "param")
        if not isinstance(grad, bool):
            raise self.err(f"grad must be true or false, got {_describe(grad)}", m, key=key, node_key="grad")
        shape = self.shape(m.get("shape"), m, key)
        scale = self.number(m.get("scale", 1.0), m, key, "scale")
        spec = LeafSpec(full, kind, shape, ldtype, init=init, scale=scale, value=m.get("value"), grad=grad,
                        line=_line(m))
        if init == "causal_mask" and len(shape) < 2:
            raise self.err(f"init causal_mask needs a shape of at least 2 dimensions, got {list(shape)}", m, key=key,
                           node_key="shape")
        if init == "randint":
            if ldtype not in INT_DTYPES:
                raise self.err("init randint draws integers: give the input dtype int32 or int64", m, key=key,
                               node_key="init")
            spec.high = self.size(m.get("high", 2), m, key, node_key="high", limit=_INT_HIGH[ldtype])
        elif "high" in m:
            raise self.err("high applies to init: randint only", m, key=key, node_key="high")
        if ldtype in INT_DTYPES and "init" in m and init in ("normal", "uniform", "xavier", "causal_mask"):
            # drawn as floats and cast, they would be mostly 0 and -1: labels that silently index wrong
            raise self.err(f"init {init} draws floating-point numbers: an integer input takes randint, zeros, ones "
                           "or value", m, key=key, node_key="init")
        if init == "value":
            if spec.value is None:
                raise self.err("init: value needs a value", m, key=key)
            self.check_value(spec.value, shape, ldtype, m, key)
        if spec.grad and ldtype in INT_DTYPES:
            raise self.err("an integer input cannot take a gradient", m, key=key, node_key="grad")
        return spec

    def check_value(self, v, shape, dtype, where, key):
        """A literal value: a number or nested lists of numbers with no more elements than the
        shape (it is broadcast to it), each one the dtype holds as written (in range; whole for an
        integer dtype). Walked without recursion, with a budget, so that a value
        built from YAML aliases cannot expand without bound."""
        budget = min(n_elements(shape), 2**22)  # no more numbers than a 4 MiB file writes out
        stack, count = [v], 0
        while stack:
            x = stack.pop()
            if isinstance(x, list):
                stack.extend(x)
                continue
            count += 1
            if isinstance(x, bool) or not isinstance(x, (int, float)) or abs(x) > 1e300 or x != x:
                hint = ""
                if isinstance(x, str) and re.fullmatch(r"[-+]?[0-9.]+e[-+]?[0-9]+", x, re.I):
                    hint = " (YAML reads it as text: write it with a point and a sign, 1.0e+30)"
                raise self.err(f"value must be finite numbers or lists of them, got {_describe(x)}{hint}", where,
                               key=key, node_key="value")
            if dtype in INT_DTYPES and isinstance(x, float) and not x.is_integer():
                raise self.err(f"value of dtype {dtype} must be whole numbers, got {_describe(x)}", where, key=key,
                               node_key="value")
            if not -_VALUE_RANGE[dtype] - (dtype in INT_DTYPES) <= x <= _VALUE_RANGE[dtype]:
                raise self.err(f"value {_describe(x)} is out of the range of {dtype}", where, key=key, node_key="value")
            if count > budget:
                raise self.err(f"value has more elements than shape {shape} holds", where, key=key, node_key="value")

    # ---- counting before expanding -------------------------------------------------------------
    def block(self, bname, item, full):
        blocks = self.mapping(self.doc.get("blocks"), "blocks", self.doc, "blocks")
        if not isinstance(bname, str) or bname not in blocks:
            near = _close_matches(bname, [str(b) for b in blocks], n=1) if isinstance(bname, str) else []
            raise self.err(f"unknown block {_describe(bname)}" + (f" (did you mean {near[0]!r}?)" if near else ""),
                           item, key=full, node_key="repeat")
        block = blocks[bname]
        self.check_keys(block, _BLOCK_KEYS, f"blocks.{bname}")
        return block

    def count(self, items, stack):
        """Model nodes (ops and parameters) that one expansion of a node list adds, counted from
        the block sizes without expanding; refuses a block that repeats itself."""
        if not isinstance(items, list):
            return 0  # expand() says what is wrong
        n = 0
        for item in items:
            if not isinstance(item, dict) or "repeat" not in item:
                n += 1
                continue
            bname = item.get("repeat")
            full = _text(item.get("name"))
            block = self.block(bname, item, full)
            if bname in stack:
                loop = " -> ".join(stack[stack.index(bname):] + [bname])
                raise self.err(f"block {bname!r} repeats itself ({loop})", item, key=full, node_key="repeat")
            if len(stack) >= MAX_REPEAT_NESTING:
                raise self.err(f"blocks repeat blocks more than {MAX_REPEAT_NESTING} levels deep", item, key=full)
            if bname not in self.block_sizes:
                params = self.mapping(block.get("params"), f"blocks.{bname}.params", block, "params")
                self.block_sizes[bname] = len(params) + self.count(block.get("nodes"), stack + [bname])
            times = self.size(item.get("times", 1), item, full, node_key="times")
            n += times * self.block_sizes[bname]
            if n > MAX_NODES:
                return n
        return n

    def joint_nodes(self):
        """The nodes of the joint forward+gradient graph that this document lowers to, counted by
        graph.joint_size's rule from names and ops alone: a model past the limit is refused before
        its nodes are read and built (a tenth of the time or less). Names resolve as expand() and
        spec() resolve them; None where the document is malformed, for expand() to say how. Needs
        the dims read (read_dims)."""
        blocks = self.doc.get("blocks") if isinstance(self.doc.get("blocks"), dict) else {}
        public = {k for k, o in REGISTRY.items() if not o.internal}
        names, preds, ops, grad_leaf = [], [], [], []  # per value: full name, inputs (None: a leaf), op
        pending = []  # names read before they are defined

        def leaf(full, m, default):
            grad = m.get("grad", default) if isinstance(m, dict) else None
            if not isinstance(full, str) or not isinstance(grad, bool):
                raise ValueError  # malformed: expand() says how
            if grad:
                grad_leaf.append(len(names))
            names.append(full)
            preds.append(None)
            ops.append(None)
            return len(names) - 1

        def expand(items, scope, prefix):
            last = None
            for item in items if isinstance(items, list) else ():
                name = item.get("name") if isinstance(item, dict) else None
                if not isinstance(name, str):
                    raise ValueError
                if "repeat" in item:
                    last = repeat(item, scope, prefix + name)
                else:
                    op, inputs = item.get("op"), item.get("inputs", [])
                    inputs = [inputs] if isinstance(inputs, str) else inputs
                    if op not in public or not isinstance(inputs, list):
                        raise ValueError
                    found = [scope.find(i) for i in inputs]  # the common case inline: a million calls fewer
                    if None in found:
                        found = [u if u is not None else resolve(i, scope) for u, i in zip(found, inputs)]
                    names.append(prefix + name)
                    preds.append(found)
                    ops.append(op)
                    last = len(ops) - 1
                scope[name] = last
            return last

        def resolve(name, scope):
            found = scope.find(name) if isinstance(name, str) else None
            if found is None:
                if scope is not top or not isinstance(name, str):
                    raise ValueError
                pending.append(name)
                return name  # a later top-level name, or a full one (`body.3.h`): resolved at the end
            return found

        def repeat(item, scope, full):
            block = blocks.get(item.get("repeat")) if isinstance(item.get("repeat"), str) else None
            if not isinstance(block, dict):
                raise ValueError
            times = self.size(item.get("times", 1), item, full, node_key="times")
            current = resolve(item.get("input"), scope)
            params, out = block.get("params") or {}, block.get("output")
            if not isinstance(params, dict):
                raise ValueError
            for i in range(times):
                pre = f"{full}.{i}."
                inner = _Scope(scope)
                inner["in"] = current
                for pname, pm in params.items():
                    inner[pname] = leaf(pre + pname if isinstance(pname, str) else None, pm, True)
                last = expand(block.get("nodes"), inner, pre)
                current = last if out is None else inner.get(out)
                if last is None or current is None:
                    raise ValueError
            return current

        top = _Scope()
        try:
            for kind in ("input", "param"):
                for leaf_name, m in self.mapping(self.doc.get(kind + "s"), kind + "s", self.doc).items():
                    top[leaf_name] = leaf(leaf_name, m, kind == "param")
            expand(self.doc.get("nodes"), top, "")
            index = {n: k for k, n in enumerate(names)} if pending else {}
            for v, inputs in enumerate(preds) if pending else ():
                if inputs is not None and str in map(type, inputs):
                    preds[v] = [u if isinstance(u, int) else top[u] if u in top else index[u] for u in inputs]
            output = self.doc.get("output")
            out = top[output] if output in top else index[output]
            if preds[out] is None or (pending and any(str in map(type, p) for p in preds if p is not None)):
                return None  # a leaf; a block whose output is its `in`, read before it is defined
        except (ValueError, KeyError, TypeError, ConfigError, RecursionError):
            return None
        # forward nodes: the ops the output reads (each op's residual, a node of its own, with it)
        n = len(preds)
        seen, stack = bytearray(n), [out]
        seen[out] = 1
        while stack:
            for u in preds[stack.pop()]:
                if not seen[u] and preds[u] is not None:
                    seen[u] = 1
                    stack.append(u)
        with_residual = {k for k, o in REGISTRY.items() if o.residual is not None}
        joint = seen.count(1) + sum(1 for v in range(n) if seen[v] and ops[v] in with_residual)
        # gradient nodes (graph._mark_grad): values the output's gradient reaches through
        # differentiable ops that depend on a leaf taking one; a residual takes none
        differentiable = {k for k, o in REGISTRY.items() if o.differentiable}
        reach, stack, users = bytearray(n), [out], {}
        reach[out] = 1
        while stack:
            v = stack.pop()
            if ops[v] in differentiable:
                for u in preds[v]:
                    users.setdefault(u, []).append(v)
                    if not reach[u]:
                        reach[u] = 1
                        stack.append(u)
        grads = bytearray(n)
        stack = [v for v in grad_leaf if reach[v]]
        for v in stack:
            grads[v] = 1
        while stack:
            for w in users.get(stack.pop(), ()):
                if not grads[w]:
                    grads[w] = 1
                    stack.append(w)
        return joint + grads.count(1)

    # ---- nodes and repeated blocks -------------------------------------------------------------
    def expand(self, items, scope, prefix, where_key):
        """Expand a node list; `scope` maps local names to full names. Returns the last name."""
        if not isinstance(items, list):
            raise self.err(f"nodes must be a list, got {_describe(items)}", self.doc, key=where_key)
        last, seen = None, set()
        for item in items:
            if not isinstance(item, dict):
                raise self.err(f"each node must be a mapping, got {_describe(item)}", self.doc, key=where_key)
            name = self.name(item.get("name"), "node name", item, where_key)
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
        if not isinstance(op, str) or op not in REGISTRY or REGISTRY[op].internal:
            public = [k for k, o in REGISTRY.items() if not o.internal]  # (built only for the message)
            near = _close_matches(str(op), public, n=1) if isinstance(op, str) else []
            raise self.err(f"unknown op {_describe(op)}" + (f" (did you mean {near[0]!r}?)" if near else ""),
                           item, key=full, node_key="op")
        inputs = item.get("inputs", [])
        if isinstance(inputs, str):
            inputs = [inputs]
        if not isinstance(inputs, list) or not all(isinstance(i, str) for i in inputs):
            raise self.err(f"inputs must be a list of names, got {_describe(inputs)}", item, key=full,
                           node_key="inputs")
        lo, hi = REGISTRY[op].arity
        if not lo <= len(inputs) <= hi:
            want = str(lo) if lo == hi else f"{lo} to {hi}"
            raise self.err(f"{op} takes {want} inputs, got {len(inputs)}", item, key=full, node_key="inputs")
        attrs = self.mapping(item.get("attrs"), "attrs", item, "attrs")
        known = {k: v for k, v in REGISTRY[op].attrs.items() if not k.startswith("_")}
        out = {}
        for k, v in attrs.items():
            if k not in known:
                near = _close_matches(str(k), list(known), n=1)
                hint = f" (did you mean {near[0]!r}?)" if near else f" ({op} takes {', '.join(known) or 'no attrs'})"
                raise self.err(f"unknown attr {_describe(k)}{hint}", item, key=full, node_key="attrs")
            out[k] = self.attr(op, k, v, item, full)
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
        found = scope.find(name)
        if found is not None:
            return found
        # A later top-level node may be named here (any DAG order); checked once all are read.
        if scope is self.top:
            self.pending.append((name, item, full))
            return name
        near = _close_matches(name, scope.names(), n=1)
        raise self.err(f"undefined value {name!r}" + (f" (did you mean {near[0]!r}?)" if near else ""),
                       item, key=full, node_key="inputs")

    def repeat(self, item, scope, prefix, full):
        bname = item.get("repeat")
        block = self.block(bname, item, full)
        times = self.size(item.get("times", 1), item, full, node_key="times")
        source = item.get("input")
        if not isinstance(source, str):
            raise self.err(f"repeat needs input: the name of the value the first repetition reads, got "
                           f"{_describe(source)}", item, key=full, node_key="input")
        current = self.resolve(source, scope, item, full)
        params = self.mapping(block.get("params"), f"blocks.{bname}.params", block, "params")
        out = block.get("output")
        if out is not None and not isinstance(out, str):
            raise self.err(f"block output must be the name of one of its nodes, got {_describe(out)}", block,
                           key=f"blocks.{bname}", node_key="output")
        for i in range(times):
            pre = f"{full}.{i}."
            inner = _Scope(scope)
            inner["in"] = current
            for pname, pm in params.items():
                self.name(pname, "parameter name", params, f"blocks.{bname}.params", node_key=pname)
                leaf = self.leaf(pname, pm, "param", self.dtype, prefix=pre)
                self.add_leaf(leaf, pm)
                inner[pname] = leaf.name
            last = self.expand(block.get("nodes") or [], inner, pre, f"blocks.{bname}")
            if last is None:
                raise self.err("block has no nodes", block, key=f"blocks.{bname}")
            if out is not None and out not in inner:
                raise self.err(f"block output {out!r} is not one of its nodes", block, key=f"blocks.{bname}",
                               node_key="output")
            current = inner[out] if out is not None else last
        return current

    def add_leaf(self, leaf, m):
        if leaf.name in self.leaves or leaf.name in self.defined_at:
            raise self.err(f"repeated name {leaf.name!r}", m, key=leaf.name)
        self.leaves[leaf.name] = leaf
        self.defined_at[leaf.name] = leaf.line

    def spec(self):
        doc = self.doc
        self.check_keys(doc, _TOP_KEYS, "config")
        name = doc.get("name", "model")
        if not isinstance(name, (str, int)) or isinstance(name, bool):
            raise self.err(f"name must be a string, got {_describe(name)}", doc, key="name", node_key="name")
        if not str(name).isprintable():  # printed at the head of every report, and into compiled modules
            raise self.err(f"name holds a control character: {_describe(name)}", doc, key="name", node_key="name")
        self.dtype = doc.get("dtype", "float32")
        if self.overrides.get("dtype") is not None:
            self.dtype = self.overrides.pop("dtype")
        if not isinstance(self.dtype, str) or self.dtype not in DTYPES:
            raise self.err(f"unknown dtype {_describe(self.dtype)} (use one of {', '.join(DTYPES)})", doc, key="dtype",
                           node_key="dtype")
        seed = doc.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
            raise self.err(f"seed must be an integer from 0 to 2**63-1, got {_describe(seed)}", doc, key="seed",
                           node_key="seed")
        self.read_dims()
        self.leaves, self.nodes, self.defined_at, self.pending = {}, [], {}, []
        groups = {}
        for kind in ("input", "param"):
            groups[kind] = self.mapping(doc.get(kind + "s"), kind + "s", doc, kind + "s")
        if "nodes" not in doc:
            raise self.err("missing key 'nodes'", doc, key="config")
        # Count before expanding: `times: 1000000000` is refused at once, not after the memory is gone.
        self.block_sizes = {}
        total = len(groups["input"]) + len(groups["param"]) + self.count(doc["nodes"], [])
        if total > MAX_NODES:
            raise self.err(f"the model expands to {total} nodes, more than the {MAX_NODES} ckpt handles", doc,
                           key="nodes", node_key="nodes")
        # A model node makes at most three joint nodes (its value, its gradient, an op's residual):
        # below that bound the count is not needed, and the model graph counts them exactly anyway.
        if 3 * total > MAX_NODES:
            joint = self.joint_nodes()
            if joint is not None and joint > MAX_NODES:
                raise joint_nodes_error(joint, file=self.file, limit=MAX_NODES)
        for kind in ("input", "param"):
            for leaf_name, m in groups[kind].items():
                # a parameter may keep a module path for its name (`layers.3.attn.q_proj.weight`)
                self.name(leaf_name, f"{kind} name", groups[kind], f"{kind}s", node_key=leaf_name, dots=kind == "param")
                self.add_leaf(self.leaf(leaf_name, m, kind, self.dtype), m)
        self.top = _Scope()
        self.top.update({k: k for k in self.leaves})
        self.expand(doc["nodes"], self.top, "", "nodes")
        for node in self.nodes:  # forward references to top-level names, repeats' names included
            node.inputs = [i if i in self.defined_at else self.top.get(i, i) for i in node.inputs]
        for pname, item, full in self.pending:
            if pname not in self.top and pname not in self.defined_at:  # a full name (`body.3.h`) is one too
                near = _close_matches(pname, list(self.defined_at), n=1)
                raise self.err(f"undefined value {pname!r}" + (f" (did you mean {near[0]!r}?)" if near else ""),
                               item, key=full, node_key="inputs")
        output = doc.get("output")
        if output is None:
            raise self.err("missing key 'output' (the scalar to differentiate)", doc, key="config")
        if not isinstance(output, str):
            raise self.err(f"output must be the name of a node, got {_describe(output)}", doc, key="output",
                           node_key="output")
        output = self.top.get(output, output)
        if output not in self.defined_at or output in self.leaves:
            raise self.err(f"output {doc.get('output')!r} is not a node", doc, key="output", node_key="output")
        if "weights" in doc:
            attach_weights(self.leaves, doc["weights"], self.file, _line(doc, "weights"))
        return ModelSpec(str(name), self.dtype, seed, self.leaves, self.nodes, output,
                         file=self.file, dims=self.dims)


# ---- the config reference (docs/config.md), generated from the op registry --------------------
# One line per op for the reference; a test checks that every registered op has one.
OP_SUMMARY = {
    "neg": "-x", "exp": "e^x", "log": "natural logarithm", "sin": "sine", "cos": "cosine", "tanh": "tanh",
    "sigmoid": "1 / (1 + e^-x)", "relu": "max(x, 0)", "gelu": "Gaussian error linear unit (tanh form)",
    "gelu_erf": "Gaussian error linear unit, exact: x * (1 + erf(x / sqrt 2)) / 2",
    "scale": "x * factor", "add": "a + b (numpy broadcasting)", "sub": "a - b (broadcasting)",
    "mul": "a * b (broadcasting)", "div": "a / b (broadcasting)", "sum": "sum over axes",
    "mean": "mean over axes", "reshape": "same elements, new shape", "transpose": "permute axes",
    "concat": "join inputs along an axis", "matmul": "matrix product, batched over leading axes",
    "linear": "x @ W (+ b)", "softmax": "softmax along an axis", "log_softmax": "log of softmax along an axis",
    "layernorm": "normalise the last axis, then * gamma + beta (the row mean and 1/std are saved: a "
                 "`layernorm_stats` value the planner may keep or compute again)",
    "conv2d": "2-D convolution, NCHW (+ bias); dilation spaces the kernel's taps",
    "maxpool2d": "max over k x k windows (NCHW)", "avgpool2d": "mean over k x k windows (NCHW)",
    "upsample2d": "repeat each pixel scale x scale times (NCHW)",
    "dropout": "zero elements with probability p, scale the rest by 1/(1-p); the mask is a hash of seed, "
               "node and element, saved as a `dropout_mask` value of one byte an element that the "
               "planner may keep or draw again", "mse": "mean squared error of two tensors",
    "softmax_cross_entropy": "mean cross-entropy of logits against integer labels",
    "where": "a where c != 0, else b (broadcasting; no gradient into c)",
    "greater": "1 where a > b, else 0", "greater_equal": "1 where a >= b, else 0",
    "less": "1 where a < b, else 0", "less_equal": "1 where a <= b, else 0", "pow": "x ** exponent",
    "embedding": "rows of a table W (rows, dim) gathered by integer indices",
    "slice": "x[start:stop:step] along an axis (the other axes whole)",
    "amax": "largest element over axes; the gradient is shared equally by tied elements, or with `first` "
            "(one axis) goes to the first of them",
    "amin": "smallest element over axes; ties as `amax`",
    "stop_gradient": "x, passing no gradient back (torch's detach)",
    "gather": "x (..., n) at integer positions idx (..., k) along the last axis: out[..., j] = x[..., idx[..., j]]",
    "nll": "negative log-likelihood of log-probabilities (..., C) at integer labels (...), each row weighted "
           "by weight[label] (optional third input, (C,)), rows labelled `ignore_index` skipped; divided by "
           "the weights' sum (`average`) or summed",
    "label_float": "integer labels read as floats (the second input, a 0-d float, gives the dtype); no gradient",
    "topk_indices": "positions (int64) of the k largest (or smallest) along the last axis, in order; ties by "
                    "position; no gradient",
    "labels_view": "integer labels an op computed, axes permuted, then reshaped",
    "labels_slice": "integer labels an op computed, x[start:stop:step] along an axis",
    "labels_expand": "integer labels an op computed, broadcast to a shape (axes of size 1 repeated)",
    "float_labels": "floats holding whole numbers (positions, counts) read as integer labels, each checked "
                    "to lie below `high` (`ignore_index` aside); no gradient",
    "scatter_add": "base (..., n) plus src (..., k) added at integer positions idx (..., k) along the last axis",
}

_LEAF_DOC = {
    "shape": "required: a list of sizes (numbers or dim expressions)",
    "dtype": f"inputs: {', '.join(DTYPES + INT_DTYPES)}; params: a float dtype. Every float leaf takes the "
             "model's `dtype` (one float dtype per model)",
    "init": f"{', '.join(INITS)}, or `value`. Default: `value` when a value is given, else `xavier` for "
            "parameters and `normal` for inputs. An integer input refuses `init: normal`, `uniform`, `xavier` "
            "and `causal_mask` (floats cast to labels)",
    "scale": "a finite number (default 1): the standard deviation of normal, the bound of uniform, a factor "
             "on xavier and ones",
    "value": "with init: value, a number or nested lists of numbers, broadcast to the shape; each within "
             "the dtype's range, and whole for an integer dtype",
    "grad": "true or false (default: true for parameters, false for inputs). Only true and false are "
            "booleans: `yes`, `no`, `on`, `off` and quoted strings are refused",
    "high": "init: randint only, integer dtypes only: labels are drawn from 0 to high-1 (default 2), at "
            "most the classes (or rows) the op reading them indexes",
}


def reference_markdown():
    """The config reference as Markdown, from the op registry and this module's tables."""
    from ..sizes import MAX_FILE_BYTES
    q = "`"
    lines = [
        "# Config reference",
        "",
        "<!-- Generated by `python scripts/config_reference.py` from the op registry (ckpt/ops/) and",
        "     ckpt/model/config.py; tests/test_hostile_docs.py fails when this file is out of date. -->",
        "",
        "A model config is one YAML mapping. Keys not listed here are refused with the nearest known key.",
        "",
        "## Top level",
        "",
        "| key | what it holds |",
        "|---|---|",
        "| `name` | the model's name (a string) |",
        f"| `dtype` | {', '.join(q + d + q for d in DTYPES)} (default float32); `--dtype` overrides it |",
        "| `seed` | an integer from 0 to 2**63-1 (default 0); every random init and dropout mask derives from it |",
        "| `dims` | named sizes: `{B: 64, D: 256}`; `--set B=128` overrides one |",
        "| `inputs` | name -> leaf (below); no gradient unless `grad: true` |",
        "| `params` | name -> leaf (below); a gradient unless `grad: false` |",
        "| `blocks` | name -> block (below), repeated by a node with `repeat:` |",
        "| `nodes` | a list of op nodes and repeat nodes, in any order that forms a DAG |",
        "| `output` | the name of the scalar node to differentiate |",
        "| `description` | free text, ignored |",
        "",
        "Names (of leaves, nodes and block parameters) contain no `:`, `.`, `/`, spaces or control characters.",
        "",
        "## Leaves: `inputs` and `params`",
        "",
        "| key | what it holds |",
        "|---|---|",
    ]
    lines += [f"| `{k}` | {_LEAF_DOC[k]} |" for k in _LEAF_KEYS]
    lines += [
        "",
        "## Nodes",
        "",
        "An op node: `{name: h, op: linear, inputs: [x, W, b], attrs: {...}}`; `inputs` names leaves or",
        "nodes (one name may be given as a string). A repeat node: `{name: body, repeat: BLOCK, times: N,",
        "input: x}` expands the block N times (default 1), chaining each repetition's output into the",
        "next; its nodes are named `body.0.h`, `body.1.h`, ..., and `body` names the last output.",
        "",
        "## Blocks",
        "",
        "| key | what it holds |",
        "|---|---|",
        "| `params` | name -> leaf: a fresh parameter per repetition (`body.3.W`) |",
        "| `nodes` | the block's node list; `in` names the repetition's input, outer names are visible |",
        "| `output` | the node whose value the repetition passes on (default: the last node) |",
        "",
        f"A block may repeat another block, at most {MAX_REPEAT_NESTING} levels deep, never itself.",
        "",
        "## Sizes and dim expressions",
        "",
        "A size (a shape entry, `times`, `high`, a dim, an integer attr) is a positive integer or an",
        "expression over dims with numbers, `+ - * / //` and parentheses, such as `D*4` or `(H-K)//S+1`,",
        f"of at most {MAX_EXPRESSION_CHARS} characters; `/` must come out whole.",
        "",
        "## Ops",
        "",
        "Inputs are numbered from 1. *Backward reads*: what each input's gradient rule reads, i.e. what",
        "the op saves for the backward pass (the memory model is built from it).",
        "",
        "| op | what it computes | inputs | attrs | backward reads |",
        "|---|---|---|---|---|",
    ]
    for name in sorted(k for k, o in REGISTRY.items() if not o.internal):
        op = REGISTRY[name]
        lo, hi = op.arity
        n_in = str(lo) if lo == hi else f"{lo} to {hi}"
        if op.int_inputs:
            n_in += " (" + ", ".join(f"input {i + 1}: integer labels" for i in op.int_inputs) + ")"
        attrs = []
        for k, default in op.attrs.items():
            if k.startswith("_"):
                continue
            kind = attr_kind(name, k)
            d = "required" if default is REQUIRED else f"default `{_yaml_scalar(default)}`"
            attrs.append(f"`{k}`: {KIND_TEXT[kind]}, {d}")
        reads = []
        saved = f"the saved `{op.residual([()] * hi, op.attrs)[0]}`" if op.residual else ""

        def read(r):
            return "its output" if r == "out" else f"input {r + 1}" if r < hi else saved
        for i in range(min(hi, 3)):
            needs = op.needs(i)
            what = ", ".join(read(r) for r in needs) or "nothing"
            if i in op.int_inputs:
                continue
            reads.append(f"d input {i + 1}: {what}" if hi > 1 else what)
        if hi > 3:
            reads = [f"each input: {', '.join('its output' if r == 'out' else f'input {r + 1}' for r in op.needs(0)) or 'nothing'}"]
        lines.append(f"| `{name}` | {OP_SUMMARY[name]} | {n_in} | {'; '.join(attrs) or '-'} | {'; '.join(reads)} |")
    lines += [
        "",
        "## Limits",
        "",
        f"Refused with one line and exit 2: a config over {MAX_CONFIG_CHARS // 2**20} MiB (any file over"
        f" {MAX_FILE_BYTES // 2**20} MiB); YAML nested more than"
        f" {MAX_DEPTH} levels; duplicate keys; keys that are lists or mappings; a model of more than {MAX_NODES:,}"
        " nodes (ops, inputs and parameters after expanding repeats; counted before expanding, so"
        f" `times: 1000000000` is refused at once) or whose joint forward+gradient graph has more than {MAX_NODES:,}"
        " nodes; a value, or all values and gradients together (with the largest op workspace), over 2**62"
        f" bytes; a shape of more than {MAX_NDIM} dimensions; a literal value its dtype cannot hold as written"
        " (out of range; a fraction for an integer dtype); integer labels outside what their op indexes."
        " Every size is an exact Python integer.",
        "",
    ]
    return "\n".join(lines)


def _yaml_scalar(v):
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def attach_weights(leaves, weights, file, line=None):
    """`weights: FILE.npz` (beside the config): arrays, by leaf name, that replace those leaves'
    inits (what `ckpt import` writes: a module's current weights and the example inputs)."""
    import os

    import numpy as np

    if not isinstance(weights, str) or not weights.endswith(".npz"):
        raise ConfigError(f"weights must name an .npz file, got {_describe(weights)}", file=file, line=line,
                          key="weights")
    path = os.path.join(os.path.dirname(os.path.abspath(file)), weights) if file and file != "<config>" else weights
    def refuse(name, what):
        return ConfigError(f"weights {weights}: {name} {what}", file=file, line=leaves[name].line, key=name)

    try:
        with open(path, "rb") as f:  # np.load would read a bare .npy (or a pickle) whole, whatever its size
            magic = f.read(4)
        if magic not in (b"PK\x03\x04", b"PK\x05\x06"):
            what = "a single .npy array" if magic == b"\x93NUM" else "not a zip archive"
            raise ConfigError(f"weights {weights} is {what}: ckpt reads an .npz (np.savez) of arrays by name",
                              file=file, line=line, key="weights")
        with np.load(path, allow_pickle=False) as z:
            for name in z.files:
                leaf = leaves.get(name)
                if leaf is None:
                    continue  # arrays of other names (for other tools) are not ckpt's to check, nor read
                # the shape and dtype from the array's header, before its data is inflated: a small
                # compressed file can hold an array of any size
                shape, dtype = _npy_header(np, z, name)
                if shape != tuple(leaf.shape):
                    raise refuse(name, f"has shape {shape}, the config says {tuple(leaf.shape)}")
                if dtype.kind not in "biuf":
                    raise refuse(name, f"holds {dtype} values, not real numbers")
                arr = z[name]
                if dtype.kind == "f" and np.isnan(arr).any():  # (an -inf is a mask's, imported from PyTorch)
                    raise refuse(name, "holds nan values")
                if leaf.dtype in INT_DTYPES and dtype.kind == "f" and not (arr == np.round(arr)).all():
                    raise refuse(name, f"holds fractions, and the config's dtype is {leaf.dtype}")
                _check_range(arr, leaf.dtype, lambda what: refuse(name, what))
                leaf.init, leaf.value = "value", arr
    except (ConfigError, MemoryError):
        raise
    except Exception as e:  # noqa: BLE001 - zipfile, zlib, lzma and numpy's header parser each raise their own
        reason = str(e).splitlines()[0][:80] if str(e) else ""
        raise ConfigError(f"cannot read weights {weights}: {e.__class__.__name__}" + (f" ({reason})" if reason else ""),
                          file=file, line=line, key="weights") from None


def _check_range(arr, dtype, refuse):
    """Weights the leaf's dtype holds as written: a float past its range would become inf (1e10 in
    float16) and an integer would wrap around (2**32 in int32 is label 0), silently, when cast."""
    import numpy as np

    if arr.size == 0:
        return
    if dtype in INT_DTYPES:
        lo, hi = np.iinfo(dtype).min, np.iinfo(dtype).max
        # compared as Python numbers: a uint64 or a float beside an int64 bound would round
        if int(arr.min()) < lo or int(arr.max()) > hi:
            raise refuse(f"holds values outside the range of {dtype} ({int(arr.min())} to {int(arr.max())})")
    elif arr.dtype.kind == "f" or dtype in ("float16", "bfloat16", "float32"):
        # float64's own limit, not the literal's 1e300: a mask imported from PyTorch holds finfo.min
        limit = float(np.finfo(np.float64).max) if dtype == "float64" else _VALUE_RANGE[dtype]
        finite = arr[np.isfinite(arr)] if arr.dtype.kind == "f" else arr
        if finite.size and float(np.abs(finite).max()) > limit:
            raise refuse(f"holds {float(np.abs(finite).max()):g}, past the range of {dtype} (it would be read as inf)")


def _npy_header(np, z, name):
    """(shape, dtype) of array `name` of an open .npz, read from its header alone."""
    with z.zip.open(name + ".npy") as f:
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(f)
    return tuple(shape), dtype
