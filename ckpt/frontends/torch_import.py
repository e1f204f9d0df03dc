"""The PyTorch front end: trace an nn.Module with torch.export and record it as a ckpt model config.

torch.export traces at the aten level with fake tensors (shapes only: no activation is allocated).
Each aten node becomes one or more ckpt ops; parameters keep their module paths as names
(`layers.3.attn.q_proj.weight`) and their current values go to an .npz beside the config, with the
example inputs, so that `ckpt run` reproduces the module's loss and gradients. A front end only
records: every derivative rule stays in ckpt/ops.

Beside `model.yaml` the importer writes `model.torch.json`: where the model came from, the module
path and aten op of each node, the regions (blocks) a PyTorch plan may checkpoint, and the weights
stored transposed (ckpt's linear takes W as (in, out); torch's as (out, in)).
"""

import importlib.util
import json
import math
import os
import re
import sys

import numpy as np

from ..errors import ConfigError

DTYPES = {"float32": "float32", "float64": "float64", "int64": "int64", "int32": "int32"}


class UnsupportedOp(ConfigError):
    """An aten op that ckpt cannot run (exit 2); a cost graph (-o graph.json) still plans it."""


def torch_or_error():
    try:
        import torch
    except ImportError:
        raise ConfigError("this command needs PyTorch: pip install 'ckpt-recompute[torch]'") from None
    return torch


# ---- the user's model and inputs -----------------------------------------------------------------
def load_factory(target):
    """`MODEL.py:FACTORY` -> the nn.Module the factory returns."""
    torch = torch_or_error()
    path, sep, name = str(target).rpartition(":")
    if not sep or not path or not name:
        raise ConfigError(f"{target!r}: name a factory as MODEL.py:FACTORY")
    if not os.path.isfile(path):
        raise ConfigError("no such file", file=path)
    mod_name = "_ckpt_user_" + re.sub(r"\W", "_", os.path.abspath(path))
    try:
        spec = importlib.util.spec_from_file_location(mod_name, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = mod
        spec.loader.exec_module(mod)
    except Exception as e:  # noqa: BLE001 -- the user's code: any failure is reported as one line
        raise ConfigError(f"importing it raised {e.__class__.__name__}: {_first_line(e)}", file=path) from None
    factory = getattr(mod, name, None)
    if not callable(factory):
        raise ConfigError(f"no callable {name!r} in it", file=path)
    try:
        model = factory()
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"{name}() raised {e.__class__.__name__}: {_first_line(e)}", file=path) from None
    if not isinstance(model, torch.nn.Module):
        raise ConfigError(f"{name}() returned {type(model).__name__}, not a torch.nn.Module", file=path)
    return model


def _first_line(e):
    text = str(e).strip().splitlines()
    return text[0] if text else "(no message)"


def parse_inputs(items):
    """`name=8x128` or `name=8x16:int64` -> {name: (shape, dtype or None)} in the order given."""
    out = {}
    for item in items:
        name, sep, rest = str(item).partition("=")
        shape_text, _, dtype = rest.partition(":")
        if not sep or not name.isidentifier():
            raise ConfigError(f"--input {item!r}: use NAME=8x128 or NAME=8x16:int64")
        try:
            shape = tuple(int(d) for d in shape_text.lower().split("x")) if shape_text else ()
        except ValueError:
            raise ConfigError(f"--input {item!r}: the shape must be sizes joined by x, e.g. 8x128") from None
        if any(d <= 0 for d in shape):
            raise ConfigError(f"--input {item!r}: sizes must be positive")
        if dtype and dtype not in DTYPES:
            raise ConfigError(f"--input {item!r}: dtype must be one of {', '.join(DTYPES)}")
        out[name] = (shape, dtype or None)
    return out


def forward_arg_names(model):
    import inspect
    sig = inspect.signature(model.forward)
    return [p.name for p in sig.parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty]


def model_dtype(model):
    torch = torch_or_error()
    dts = {p.dtype for p in model.parameters()} | {b.dtype for b in model.buffers() if b.is_floating_point()}
    if not dts:
        return "float32"
    if len(dts) > 1:
        raise ConfigError(f"the module mixes dtypes ({', '.join(sorted(str(d) for d in dts))}): ckpt models have one")
    dt = dts.pop()
    names = {torch.float32: "float32", torch.float64: "float64"}
    if dt not in names:
        raise ConfigError(f"the module's dtype {dt} is not float32 or float64")
    return names[dt]


def example_inputs(model, inputs, seed=0):
    """Zero tensors for tracing, in the order of forward's arguments."""
    torch = torch_or_error()
    names = forward_arg_names(model)
    if set(names) != set(inputs):
        raise ConfigError(f"the module's forward takes ({', '.join(names)}); --input gave "
                          f"({', '.join(inputs) or 'nothing'}): give one --input per argument")
    fdt = getattr(torch, model_dtype(model))
    device = next((p.device for p in model.parameters()), torch.device("cpu"))  # meta for a meta model
    args = []
    for n in names:
        shape, dt = inputs[n]
        args.append(torch.zeros(shape, dtype=getattr(torch, dt) if dt else fdt, device=device))
    return names, tuple(args)


def export(model, args):
    torch = torch_or_error()
    import logging
    import warnings
    # torch logs a shape check that fails on fake tensors (a pooling's padding over half its
    # kernel, a dilation of 0) with its whole traceback before raising it: ckpt's answer is one line
    fake = logging.getLogger("torch._subclasses.fake_tensor")
    level = fake.level
    fake.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():  # torch's notes on the user's module: ckpt's answer is one line
            warnings.simplefilter("ignore")
            return torch.export.export(model, args, strict=False)
    except Exception as e:  # noqa: BLE001 -- a shape mismatch, an untraceable forward: one line
        raise ConfigError(f"tracing the module failed ({e.__class__.__name__}): {_first_line(e)}") from None
    finally:
        fake.setLevel(level)


def functional(ep):
    """The exported program without in-place ops that ckpt cannot read as their functional forms.
    torch.export keeps `relu_` (ReLU(inplace=True)), `out += identity` and batch norm's step
    counter as mutations. Where the mutated tensor is read by nothing after the mutation and
    shares no storage with another value (no view of it, not itself a view), the in-place op is
    read as its functional form (later readers already read its result) and the counter update,
    read by nothing, is dropped. Anything else (a write into a slice, say) is functionalized by
    run_decompositions with an empty table: correct in every case, but a second trace, seconds
    on a small model."""
    if all(_in_place_alone(n) for n in ep.graph.nodes
           if n.op == "call_function" and getattr(getattr(n.target, "_schema", None), "is_mutable", False)):
        return ep
    import warnings
    try:
        with warnings.catch_warnings():  # torch's own deprecation notices, not the user's to act on
            warnings.simplefilter("ignore", FutureWarning)
            return ep.run_decompositions({})
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"removing the in-place ops of the trace failed ({e.__class__.__name__}): "
                          f"{_first_line(e)}") from None


def _is_view(node):
    schema = getattr(node.target, "_schema", None) if node.op == "call_function" else None
    if schema is None:
        return node.op == "call_function"  # getitem of a split, a Python function: taken as a view
    return not schema.is_mutable and any(r.alias_info is not None for r in schema.returns)


def _in_place_alone(node):
    """An in-place aten op `x.op_(...)` whose x is read by nothing after it and aliases nothing."""
    name = node.target._schema.name
    if not name.endswith("_") or name.endswith("__") or not node.args or not hasattr(node.args[0], "users"):
        return False
    x = node.args[0]
    if _is_view(x):
        return False
    after = False
    for n in node.graph.nodes:  # in order: readers of x after the mutation, or views of x at all
        if n is node:
            after = True
        elif x in n.all_input_nodes and (after or _is_view(n)):
            return False
    return True


# ---- aten -> ckpt ---------------------------------------------------------------------------------
def _module_path(node):
    stack = node.meta.get("nn_module_stack") or {}
    return list(stack.values())[-1][0] if stack else ""


def _source_line(node):
    """`file.py:LINE` of the user's code that made the node: the innermost frame of its stack trace
    outside torch itself (nn.MultiheadAttention's own lines say less than the line that called it)."""
    frames = re.findall(r'File "([^"]+)", line (\d+)', node.meta.get("stack_trace") or "")
    if not frames:
        return ""
    torch_dir = os.sep + "torch" + os.sep
    user = [f for f in frames if torch_dir not in f[0]] or frames
    return f"{os.path.basename(user[-1][0])}:{user[-1][1]}"


_RANDOM = ("rand", "normal", "bernoulli", "multinomial", "dropout", "uniform", "poisson", "exponential")


class _Lazy:
    """A constant known at import (a buffer, or an op on constants only, folded by torch): it
    becomes a ckpt input leaf only where an op ckpt records reads it."""

    __slots__ = ("fx",)

    def __init__(self, fx):
        self.fx = fx


class _Recorder:
    """Walks the exported graph and records ckpt nodes; `env` maps fx names to ckpt values."""

    def __init__(self, ep, model, input_names, dtype):
        self.ep, self.model, self.dtype = ep, model, dtype
        self.nodes, self.inputs, self.params, self.arrays = [], {}, {}, {}
        self.env, self.where, self.transposed, self.consts = {}, {}, [], 0
        self.const_cache = {}
        self.high = {}  # int input -> exclusive upper bound of its values (rows, classes)
        self.float_of = {}  # integer value -> its label_float node
        self.distinct = set()  # (indices, axis): no index repeats along the axis (topk's, sort's)
        self.whole = set()  # float values standing for PyTorch's integers (a count, position ids)
        self.labels_of = {}  # such a value -> its float_labels node, where it indexes
        self.label_src = {}  # a labels_view/slice/expand node -> the integers it rearranges
        self.input_names = input_names
        self.cur = None
        self.values = {}  # fx name -> torch tensor of a constant (buffers, folded ops); see _Lazy

    # values
    def shape(self, v):
        return tuple(self.info[v][0])

    def emit(self, op, inputs, attrs=None, name=None):
        from ..ops import REGISTRY
        inputs = [self.as_float(v) if k not in REGISTRY[op].int_inputs and self.info[v][1].startswith("int") else v
                  for k, v in enumerate(inputs)]
        if any(not self.info[inputs[k]][1].startswith("int") for k in REGISTRY[op].int_inputs if k < len(inputs)):
            bound = REGISTRY[op].labels_below([self.shape(v) for v in inputs])
            ignore = (attrs or {}).get("ignore_index")
            inputs = [self.as_labels(v, bound, ignore) if k in REGISTRY[op].int_inputs else v
                      for k, v in enumerate(inputs)]
        # The fx node's own name for its first ckpt node; a decomposition's others add their op.
        base = name or (self.cur.name if self.cur is not None else op)
        if base in self.info:
            base = f"{base}_{op}"
        name, k = base, 1
        while name in self.info:
            name, k = f"{base}_{k}", k + 1
        node = {"name": name, "op": op, "inputs": list(inputs)}
        if attrs:
            node["attrs"] = attrs
        self.nodes.append(node)
        from ..ops import REGISTRY
        shape = REGISTRY[op].shape([self.shape(i) for i in inputs], {**_defaults(op), **(attrs or {})})
        self.info[name] = (tuple(shape), REGISTRY[op].dtype or self.dtype)
        self.where[name] = {"module": _module_path(self.cur) if self.cur is not None else "",
                            "aten": str(self.cur.target) if self.cur is not None else "", "fx": self.cur.name
                            if self.cur is not None else ""}
        return name

    def as_float(self, x):
        """Integers read as data where an op takes floats (a padding mask `idx != pad`, `idx.float()`,
        `idx + 1`): one label_float node per integer value, computed in the forward, taking no
        gradient. What PyTorch computes from them in integers, ckpt computes in floats (whole)."""
        if x not in self.float_of:
            self.float_of[x] = self.emit("label_float", [x, self.const(0.0)], name=f"{x}_float")
        return self.float_of[x]

    def as_labels(self, x, high, ignore=None):
        """A float value where an op takes integer labels below `high`: one PyTorch computes in
        integers (RoBERTa's position ids `cumsum(mask) * mask + pad`, labels masked with -100),
        read back by float_labels, which checks the range as it runs."""
        if x in self.info and self.info[x][1].startswith("int"):
            return x
        if x not in self.whole:
            self.unsupported("indices computed by the model from floats other than by topk, sort or argmax")
        key = (x, int(high), ignore)
        if key not in self.labels_of:
            attrs = {"high": int(high)} if ignore is None else {"high": int(high), "ignore_index": int(ignore)}
            self.labels_of[key] = self.emit("float_labels", [x], attrs, name=f"{x}_labels")
        return self.labels_of[key]

    def mark_whole(self, node):
        """A PyTorch integer result (not a boolean mask) that ckpt holds as floats."""
        val, out = node.meta.get("val"), self.env.get(node.name)
        if isinstance(out, str) and out in self.info and not self.info[out][1].startswith("int") \
                and getattr(val, "dtype", None) is not None and not val.is_floating_point() \
                and str(val.dtype) != "torch.bool":
            if any(w in str(node.target) for w in ("bitwise", "logical", "div", "remainder", "floor", "shift")):
                self.unsupported("integer arithmetic other than +, -, *, sums and comparisons")
            self.whole.add(out)

    def const(self, value, dtype=None):
        """A scalar or small constant as an input leaf (grad: false) whose value lives in the npz."""
        arr = np.asarray(value, dtype=dtype or self.dtype)
        key = (arr.shape, str(arr.dtype), arr.tobytes())
        if key in self.const_cache:  # one causal mask for every layer, not one each
            return self.const_cache[key]
        name = f"const{self.consts}"
        self.const_cache[key] = name
        self.consts += 1
        self.inputs[name] = {"shape": list(arr.shape), "dtype": str(arr.dtype)}
        self.arrays[name] = arr
        self.info[name] = (arr.shape, str(arr.dtype))
        return name

    def int_view(self, x, shape, how=None, tag=""):
        """A view of a constant's integers (reshaped, or sliced: `how` maps its array to the
        view's): a constant of its own."""
        if not self.constant(x):  # inputs and computed indices: views are ops (int_rearranged, ...)
            self.unsupported("this view of integers (slices, permutes, reshapes and expands import)")
        name = f"{x}_{tag}{'x'.join(map(str, shape))}"
        if name not in self.info:
            self.inputs[name] = {"shape": list(shape), "dtype": self.info[x][1]}
            self.info[name] = (tuple(shape), self.info[x][1])
            how = how or (lambda a, _s=tuple(shape): a.reshape(_s))
            self.arrays[name] = np.ascontiguousarray(how(self.arrays[x]))
        return name

    def constant(self, x):
        """Whether x is a constant leaf (a buffer, a folded value): its views are constants too."""
        return x in self.inputs and x not in self.input_names

    def label_op(self, op, x, attrs):
        """A view of integers that an op computes in the forward (of an input, or of indices the
        model computed): changing the input changes it; its labels are checked as the input's."""
        y = self.emit(op, [x], attrs)
        self.label_src[y] = self.source(x)
        return y

    def int_rearranged(self, x, shape, perm=None, tag=""):
        """Integers with axes permuted (perm), then reshaped: a constant of a constant, else a
        labels_view node."""
        nd = len(self.shape(x))
        if self.constant(x):
            how = (lambda a, _p=tuple(perm), _s=tuple(shape): a.transpose(_p).reshape(_s)) if perm else None
            return self.int_view(x, shape, how, tag=tag)
        return self.label_op("labels_view", x, {"axes": list(perm or range(nd)), "shape": list(shape)})

    def int_broadcast(self, x, shape):
        """Integers broadcast to `shape` (axes of size 1 repeated): a constant, or labels_expand."""
        shape = tuple(shape)
        if shape == self.shape(x):
            return x
        if self.constant(x):
            return self.int_view(x, shape, lambda a, _s=shape: np.broadcast_to(a, _s), tag="b")
        return self.label_op("labels_expand", x, {"shape": list(shape)})

    def source(self, x):
        """The input whose values a view of integers holds (for the range its readers index)."""
        while x in self.label_src:
            x = self.label_src[x]
        return x

    def run(self):
        import torch
        sig = self.ep.graph_signature
        # A parameter shared between modules (tied embeddings) has several names; torch.export
        # may trace it under any of them, ckpt names it as model.named_parameters() lists it.
        state = dict(self.model.named_parameters(remove_duplicate=False))
        state.update(dict(self.model.named_buffers(remove_duplicate=False)))
        canonical = {id(p): k for k, p in self.model.named_parameters()}
        self.info = {}
        params = {}
        for spec in sig.input_specs:
            ph = spec.arg.name
            if spec.kind.name == "PARAMETER":
                params[ph] = canonical.get(id(state.get(spec.target)), spec.target)
            elif spec.kind.name in ("BUFFER", "CONSTANT_TENSOR"):
                tensor = state.get(spec.target)
                if tensor is None:
                    tensor = self.ep.constants[spec.target]
                self.values[ph] = tensor.detach()
                self.env[ph] = _Lazy(ph)
            elif spec.kind.name == "USER_INPUT":
                pass
            else:
                raise UnsupportedOp(f"unsupported input kind {spec.kind.name} ({spec.target})")
        uses = self._weight_uses(params)
        g = self.ep.graph_module.graph
        for node in g.nodes:
            self.cur = node
            if node.op == "placeholder":
                val = node.meta["val"]
                if node.name in params:
                    target = params[node.name]
                    tensor = dict(self.model.named_parameters())[target]
                    shape = tuple(tensor.shape)
                    if uses.get(node.name) == "linear-only":
                        shape = shape[::-1]
                        self.transposed.append(target)
                    if not tensor.is_meta:  # a model built on the meta device has shapes, no values
                        arr = tensor.detach().cpu().numpy().astype(self.dtype)
                        self.arrays[target] = np.ascontiguousarray(arr.T) if target in self.transposed else arr
                    self.params[target] = {"shape": list(shape), "grad": bool(tensor.requires_grad)}
                    self.info[target] = (shape, self.dtype)
                    self.env[node.name] = target
                elif node.name not in self.env:
                    dt = str(val.dtype).replace("torch.", "")
                    if dt not in DTYPES:
                        raise ConfigError(f"input {node.name}: dtype {dt} is not float32, float64, int32 or int64")
                    if not dt.startswith("int"):
                        dt = self.dtype
                    self.inputs[node.name] = {"shape": list(val.shape), "dtype": dt}
                    self.info[node.name] = (tuple(val.shape), dt)
                    self.env[node.name] = node.name
            elif node.op == "call_function":
                try:
                    self.env[node.name] = self.fold(node)
                    if self.env[node.name] is None:
                        self.env[node.name] = self.call(node)
                        self.mark_whole(node)
                except UnsupportedOp:
                    raise
                except Exception as e:  # noqa: BLE001 -- arguments ckpt did not foresee, a shape it refuses
                    self.unsupported(f"{e.__class__.__name__}: {_first_line(e)}")
            elif node.op == "output":
                outs = [a for a in torch.utils._pytree.tree_leaves(node.args[0])]
                kinds = [s.kind.name for s in sig.output_specs]
                if len(kinds) == len(outs):  # batch norm's new running statistics are not the loss
                    outs = [a for a, k in zip(outs, kinds) if k == "USER_OUTPUT"]
                # the loss: the one float scalar returned (beside it, logits and the like are dropped)
                vals = [self.env.get(getattr(a, "name", None)) for a in outs]
                scalars = [v for v in vals if isinstance(v, str) and self.shape(v) == ()
                           and not self.info[v][1].startswith("int")]
                if len(scalars) != 1:
                    raise ConfigError(f"the module's forward must return one scalar (the loss) for ckpt to "
                                      f"differentiate; it returns {len(outs)} value(s), {len(scalars)} of them "
                                      f"float scalars")
                self.output = scalars[0]
            elif node.op == "get_attr":  # a traced sub-graph (a no_grad block's): named by its caller
                self.env[node.name] = None
            else:
                raise UnsupportedOp(f"unsupported graph node {node.op} {node.target} (node {node.name})")
        self.prune()
        return self

    def prune(self):
        """Drop what the loss does not read: ops on batch norm's step counter, unused constants."""
        live, need = set(), [self.output]
        made = {n["name"]: n for n in self.nodes}
        while need:
            v = need.pop()
            if v in live:
                continue
            live.add(v)
            if v in made:
                need.extend(made[v]["inputs"])
        self.nodes = [n for n in self.nodes if n["name"] in live]
        for k in [k for k in self.where if k not in live]:
            del self.where[k]
        for k in [k for k in self.inputs if k not in live and k not in self.input_names]:
            del self.inputs[k]
            self.arrays.pop(k, None)

    def fold(self, node):
        """An op whose tensor arguments are all constants runs in torch now (masks built from a
        buffer, zeros_like, arange); its result is a constant. None: the op is recorded."""
        import operator

        import torch
        if node.target is operator.getitem and isinstance(self.env.get(getattr(node.args[0], "name", None)), list):
            return self.env[node.args[0].name][node.args[1]]
        tensors = [a for a in torch.utils._pytree.tree_leaves((node.args, node.kwargs)) if hasattr(a, "op")]
        val = node.meta.get("val")
        # arange off the meta device is a constant like any other (positions, then `>= t // 2`,
        # `.long()`: a segment id); on the meta device it has no values, and its handler makes them
        on_meta = str(node.kwargs.get("device")) == "meta"
        creation = not tensors and isinstance(val, torch.Tensor) and (
            _op_key(node.target) not in HANDLERS or (str(node.target).startswith("aten.arange") and not on_meta))
        if not creation and (not tensors or any(a.name not in self.values for a in tensors)):
            return None
        if any(w in str(node.target) for w in _RANDOM):  # a new draw each step: not a constant
            return None
        args, kwargs = torch.fx.node.map_arg((node.args, node.kwargs), lambda a: self.values[a.name])
        out = node.target(*args, **kwargs)
        if "empty" in str(node.target) and isinstance(out, torch.Tensor):  # its values are whatever was there
            out = torch.zeros_like(out)
        if isinstance(out, torch.Tensor):
            self.values[node.name] = out
            return _Lazy(node.name)
        if isinstance(out, (tuple, list)) and all(isinstance(o, torch.Tensor) for o in out):
            for k, o in enumerate(out):
                self.values[f"{node.name}#{k}"] = o
            return [_Lazy(f"{node.name}#{k}") for k in range(len(out))]
        return None

    def lazy_const(self, fx):
        t = self.values[fx]
        # On the meta device a buffer (and what is folded from it) has a shape and no values: zeros
        # stand in, enough to plan (running such a model runs made-up weights anyway).
        arr = np.zeros(tuple(t.shape), dtype=str(t.dtype)[6:]) if t.is_meta else t.detach().cpu().numpy()
        if t.dtype.is_floating_point or arr.dtype == bool:  # a bool mask is read as 0/1 by `where`
            return self.const(arr, dtype=self.dtype)
        return self.const(arr, dtype=str(arr.dtype))

    def _weight_uses(self, params):
        """Parameters used only as the weight of aten.linear are stored transposed (W as (in, out));
        any other use keeps torch's layout and a transpose node feeds the linears."""
        import torch
        out = {}
        for node in self.ep.graph_module.graph.nodes:
            if node.op != "call_function":
                continue
            for k, a in enumerate(node.args):
                if getattr(a, "name", None) in params:
                    lin = node.target == torch.ops.aten.linear.default and k == 1
                    prev = out.get(a.name)
                    out[a.name] = "linear-only" if lin and prev in (None, "linear-only") else "other"
        return out

    def arg(self, a):
        if hasattr(a, "name") and hasattr(a, "op"):
            if a.name not in self.env or self.env[a.name] is None:
                self.unsupported(f"it reads {a.name}, a value ckpt does not hold")
            v = self.env[a.name]
            if isinstance(v, _Lazy):
                v = self.env[a.name] = self.lazy_const(v.fx)
            elif isinstance(v, list):
                v = [self.lazy_const(x.fx) if isinstance(x, _Lazy) else x for x in v]
            return v
        return a

    def value(self, name):
        """The numpy value of a constant leaf, or None for a value computed from the inputs."""
        return self.arrays.get(name) if name in self.inputs and name not in self.input_names else None

    def unsupported(self, why=""):
        node = self.cur
        where = _module_path(node) or "the top-level module"
        line = _source_line(node)
        for a in node.args if not line else ():  # a traced sub-graph's call: the line of its first op
            if getattr(a, "op", None) == "get_attr":
                inner = getattr(self.ep.graph_module, a.target, None)
                line = next((_source_line(n) for n in getattr(getattr(inner, "graph", None), "nodes", ())
                             if _source_line(n)), "")
                break
        raise UnsupportedOp(f"unsupported op {node.target} in {where} (node {node.name}"
                            + (f", {line}" if line else "") + ")" + (f": {why}" if why else "")
                            + "; `ckpt import ... -o graph.json` writes a cost graph that `ckpt plan` accepts")

    def call(self, node):
        key = _op_key(node.target)
        if key not in HANDLERS and getattr(getattr(node.target, "_schema", None), "is_mutable", False):
            # x.op_(...): alone (see functional), its result is the functional op's
            head, _, overload = key.rpartition(".")
            key = f"{head[:-1]}.{overload}" if head.endswith("_") else key
        handler = HANDLERS.get(key)
        if handler is None and "set_grad_enabled" in key:
            self.unsupported("a torch.no_grad() or set_grad_enabled block inside forward (spectral norm's "
                             "power iteration in training mode, say)")
        if handler is None:
            self.unsupported()
        args = [self.arg(a) if not isinstance(a, (list, tuple)) else [self.arg(x) for x in a] for a in node.args]
        kwargs = {k: (self.arg(v) if not isinstance(v, (list, tuple)) else [self.arg(x) for x in v])
                  for k, v in node.kwargs.items()}
        return handler(self, node, *args, **kwargs)


def _defaults(op):
    from ..ops import REGISTRY, REQUIRED
    return {k: v for k, v in REGISTRY[op].attrs.items() if v is not REQUIRED}


def _op_key(target):
    return str(target)


def _out_shape(node):
    return tuple(int(d) for d in node.meta["val"].shape)


def _is_tensor(r, x):
    return isinstance(x, str) and x in r.info


# ---- handlers, one per aten op ---------------------------------------------------------------------
HANDLERS = {}


def handles(*names):
    def deco(f):
        for n in names:
            HANDLERS[n] = f
        return f
    return deco


@handles("aten.linear.default")
def _linear(r, node, x, w, b=None):
    if w not in r.transposed:
        w = r.emit("transpose", [w], {"axes": [1, 0]})
    return r.emit("linear", [x, w] + ([b] if b is not None else []))


@handles("aten.t.default")
def _t(r, node, x):
    return x if len(r.shape(x)) < 2 else r.emit("transpose", [x], {"axes": [1, 0]})


@handles("aten.matmul.default", "aten.bmm.default", "aten.mm.default")
def _matmul(r, node, a, b):
    """A vector operand is a matrix of one row (left) or one column (right), dropped after, as
    torch.matmul does."""
    sa, sb = r.shape(a), r.shape(b)
    if len(sa) == 1:
        a = r.emit("reshape", [a], {"shape": [1, sa[0]]})
    if len(sb) == 1:
        b = r.emit("reshape", [b], {"shape": [sb[0], 1]})
    y = r.emit("matmul", [a, b])
    return y if r.shape(y) == _out_shape(node) else r.emit("reshape", [y], {"shape": list(_out_shape(node))})


@handles("aten.mv.default")
def _mv(r, node, a, v):
    """A matrix times a vector (spectral norm's W v): the vector as one column."""
    col = r.emit("reshape", [v], {"shape": [r.shape(v)[0], 1]})
    return r.emit("reshape", [r.emit("matmul", [a, col])], {"shape": [r.shape(a)[0]]})


@handles("aten.dot.default", "aten.vdot.default")
def _dot(r, node, a, b):
    """The dot product of two vectors (spectral norm's u . W v)."""
    return r.emit("sum", [r.emit("mul", [a, b])], {"axis": None, "keepdims": False})


@handles("aten.addmm.default")
def _addmm(r, node, bias, a, b, beta=1, alpha=1):
    if beta != 1 or alpha != 1:
        r.unsupported("beta and alpha other than 1")
    return r.emit("add", [r.emit("matmul", [a, b]), bias])


def _binary(op, scalar_op):
    def rule(r, node, a, b, alpha=1):
        if alpha != 1:
            b = r.emit("scale", [b], {"factor": float(alpha)}) if _is_tensor(r, b) else b * alpha
        if _is_tensor(r, a) and _is_tensor(r, b):
            return r.emit(op, [a, b])
        if _is_tensor(r, a):
            return scalar_op(r, a, float(b)) if scalar_op else r.emit(op, [a, r.const(b)])
        return r.emit(op, [r.const(a), b])
    return rule


handles("aten.add.Tensor", "aten.add.Scalar")(_binary("add", None))
handles("aten.sub.Tensor", "aten.sub.Scalar")(_binary("sub", None))
handles("aten.mul.Tensor", "aten.mul.Scalar")(_binary("mul", lambda r, a, s: r.emit("scale", [a], {"factor": s})))
handles("aten.div.Tensor", "aten.div.Scalar")(_binary("div", lambda r, a, s: r.emit("scale", [a], {"factor": 1.0 / s})))


# comparisons make float masks (1 where true), as ckpt's comparison ops do; a mask is read by
# where(), mul() and the like, and takes no gradient
def _compare(rel):
    def rule(r, node, a, b):
        a = a if _is_tensor(r, a) else r.const(float(a))
        b = b if _is_tensor(r, b) else r.const(float(b))
        if rel == "eq":
            return r.emit("mul", [r.emit("greater_equal", [a, b]), r.emit("less_equal", [a, b])])
        if rel == "ne":
            return r.emit("sub", [r.const(1.0), _compare("eq")(r, node, a, b)])
        return r.emit(rel, [a, b])
    return rule


for _aten, _rel in (("gt", "greater"), ("ge", "greater_equal"), ("lt", "less"), ("le", "less_equal"),
                    ("eq", "eq"), ("ne", "ne")):
    handles(f"aten.{_aten}.Tensor", f"aten.{_aten}.Scalar")(_compare(_rel))


@handles("aten.logical_not.default", "aten.bitwise_not.default")
def _not(r, node, m):
    _booleans(r, node)
    return r.emit("sub", [r.const(1.0), m])


def _booleans(r, node):
    """~ and & of masks are 1 - m and a * b; of integers they are bitwise, which ckpt does not do."""
    if any(str(getattr(a, "meta", {}).get("val", torch_or_error().zeros(0, dtype=bool)).dtype) != "torch.bool"
           for a in node.args if hasattr(a, "meta")):
        r.unsupported("bitwise operations on integers")


@handles("aten.logical_and.default", "aten.bitwise_and.Tensor")
def _and(r, node, a, b):
    _booleans(r, node)
    return r.emit("mul", [a, b])


@handles("aten.reciprocal.default")
def _reciprocal(r, node, x):
    return r.emit("pow", [x], {"exponent": -1.0})


@handles("aten.log1p.default")
def _log1p(r, node, x):
    return r.emit("log", [r.emit("add", [x, r.const(1.0)])])


def _softplus_of(r, x):
    """log(1 + e^x) as relu(x) + log(1 + e^-|x|): no overflow, and the gradient sigmoid(x)."""
    neg_abs = r.emit("neg", [_abs(r, None, x)])
    return r.emit("add", [r.emit("relu", [x]), r.emit("log", [r.emit("add", [r.emit("exp", [neg_abs]),
                                                                            r.const(1.0)])])])


@handles("aten.softplus.default")
def _softplus(r, node, x, beta=1, threshold=20):
    # torch returns x itself past the threshold; log(1 + e^-|x|) is below 2e-9 there
    if beta == 1:
        return _softplus_of(r, x)
    return r.emit("scale", [_softplus_of(r, r.emit("scale", [x], {"factor": float(beta)}))], {"factor": 1.0 / beta})


@handles("aten.log_sigmoid.default")
def _log_sigmoid(r, node, x):
    return r.emit("neg", [_softplus_of(r, r.emit("neg", [x]))])


@handles("aten.log_sigmoid_forward.default")
def _log_sigmoid_forward(r, node, x):
    return [_log_sigmoid(r, node, x), None]


@handles("aten.mish.default")
def _mish(r, node, x):
    return r.emit("mul", [x, r.emit("tanh", [_softplus_of(r, x)])])


@handles("aten.elu.default")
def _elu(r, node, x, alpha=1.0, scale=1.0, input_scale=1.0):
    """x > 0: scale x; else scale alpha (e^(input_scale x) - 1), the exponential of min(x, 0) (no
    overflow in the branch not taken). SELU and CELU are this with other constants."""
    pos = r.emit("greater", [x, r.const(0.0)])
    neg = r.emit("where", [pos, r.const(0.0), x])
    em1 = r.emit("sub", [r.emit("exp", [r.emit("scale", [neg], {"factor": float(input_scale)})]), r.const(1.0)])
    y = r.emit("where", [pos, x, r.emit("scale", [em1], {"factor": float(alpha)})])
    return r.emit("scale", [y], {"factor": float(scale)}) if scale != 1 else y


@handles("aten.selu.default")
def _selu(r, node, x):
    return _elu(r, node, x, 1.6732632423543772848170429916717, 1.0507009873554804934193349852946)


@handles("aten.celu.default")
def _celu(r, node, x, alpha=1.0):
    return _elu(r, node, x, alpha, 1.0, 1.0 / alpha)


@handles("aten.hardsigmoid.default", "aten.hardswish.default")
def _hard(r, node, x):
    hs = r.emit("scale", [_clamp(r, r.emit("add", [x, r.const(3.0)]), 0.0, 6.0)], {"factor": 1.0 / 6.0})
    return hs if "sigmoid" in str(node.target) else r.emit("mul", [x, hs])


@handles("aten.logsumexp.default")
def _logsumexp(r, node, x, dims, keepdim=False):
    """x - log_softmax(x) is log-sum-exp at every element of the axis: their mean, exactly so."""
    nd = len(r.shape(x))
    if len(dims) != 1:
        r.unsupported("logsumexp over more than one axis")
    ax = int(dims[0]) % nd
    lse = r.emit("sub", [x, r.emit("log_softmax", [x], {"axis": ax})])
    return r.emit("mean", [lse], {"axis": [ax], "keepdims": bool(keepdim)})


@handles("aten.rsub.Scalar")
def _rsub(r, node, a, b, alpha=1):
    return r.emit("sub", [r.const(b), r.emit("scale", [a], {"factor": float(alpha)}) if alpha != 1 else a])


for _name in ("neg", "exp", "log", "sin", "cos", "tanh", "sigmoid", "relu"):
    handles(f"aten.{_name}.default")(lambda r, node, x, _op=_name: r.emit(_op, [x]))


@handles("aten.gelu.default")
def _gelu(r, node, x, approximate="none"):
    return r.emit("gelu" if approximate == "tanh" else "gelu_erf", [x])


@handles("aten.silu.default")
def _silu(r, node, x):
    return r.emit("mul", [x, r.emit("sigmoid", [x])])


@handles("aten.layer_norm.default")
def _layer_norm(r, node, x, normalized_shape, w=None, b=None, eps=1e-5, cudnn_enable=True):
    """ckpt's layernorm is over the last axis: over several (LayerNorm([C, H, W])) they are joined
    into one, the affine parameters flattened alike."""
    shape, k = r.shape(x), len(normalized_shape)
    d = size_of(normalized_shape)
    if k > 1:
        x = r.emit("reshape", [x], {"shape": list(shape[:-k]) + [d]})
        w = r.emit("reshape", [w], {"shape": [d]}) if w is not None else None
        b = r.emit("reshape", [b], {"shape": [d]}) if b is not None else None
    w = w if w is not None else r.const(np.ones(d))
    b = b if b is not None else r.const(np.zeros(d))
    y = r.emit("layernorm", [x, w, b], {"eps": float(eps)})
    return r.emit("reshape", [y], {"shape": list(shape)}) if k > 1 else y


@handles("aten.instance_norm.default")
def _instance_norm(r, node, x, w, b, rm, rv, use_input_stats, momentum, eps, cudnn_enabled=False):
    nd = len(r.shape(x))
    if not use_input_stats:
        r.unsupported("instance norm with running statistics in eval mode")
    return _affine(r, _normalize(r, x, list(range(2, nd)), eps), w, b, nd)


@handles("aten.softmax.int", "aten._softmax.default")
def _softmax(r, node, x, dim, *rest):
    return r.emit("softmax", [x], {"axis": int(dim)})


@handles("aten.log_softmax.int", "aten._log_softmax.default")
def _log_softmax(r, node, x, dim, *rest):
    return r.emit("log_softmax", [x], {"axis": int(dim)})


@handles("aten.scaled_dot_product_attention.default")
def _sdpa(r, node, q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    """softmax(q k^T * scale + mask) v, in ckpt's ops; a causal mask is an additive constant input."""
    nd = len(r.shape(q))
    if enable_gqa or r.shape(q)[:-2] != r.shape(k)[:-2]:
        r.unsupported("grouped-query attention")
    axes = list(range(nd - 2)) + [nd - 1, nd - 2]
    s = r.emit("matmul", [q, r.emit("transpose", [k], {"axes": axes})])
    factor = float(scale) if scale is not None else 1.0 / float(np.sqrt(r.shape(q)[-1]))
    s = r.emit("scale", [s], {"factor": factor})
    lq, lk = r.shape(q)[-2], r.shape(k)[-2]
    if is_causal:
        # -inf above the diagonal, as torch's math kernel; exp(-inf) is exactly 0 in both.
        s = r.emit("add", [s, r.const(np.triu(np.full((lq, lk), -np.inf), k=1))])
    alive = None  # a boolean mask's rows that attend to some key (0 where it hides every key)
    if attn_mask is not None:
        fx_mask = node.kwargs.get("attn_mask", node.args[3] if len(node.args) > 3 else None)
        if str(fx_mask.meta["val"].dtype) == "torch.bool":  # True: attend; read here as 0/1 floats
            keep = attn_mask
            if r.value(attn_mask) is None:  # from the inputs (a padding mask): 0 or -inf, in the forward
                attn_mask = r.emit("where", [attn_mask, r.const(0.0), r.const(-np.inf)])
                alive = r.emit("amax", [keep], {"axis": -1, "keepdims": True})
            else:
                if not r.value(attn_mask).any(axis=-1).all():
                    alive = r.const(r.value(attn_mask).any(axis=-1, keepdims=True).astype(float))
                attn_mask = r.const(np.where(r.value(attn_mask) != 0, 0.0, -np.inf))
        elif r.info[attn_mask][1].startswith("int"):
            r.unsupported("an integer attention mask")
        s = r.emit("add", [s, attn_mask])
    if alive is not None:
        # PyTorch's kernels give a row whose keys are all hidden zeros, not softmax's 0/0: its scores
        # are made 0 (finite, so that no NaN reaches the gradients) and its weights 0
        s = r.emit("where", [alive, s, r.const(0.0)])
        p = r.emit("where", [alive, r.emit("softmax", [s], {"axis": -1}), r.const(0.0)])
    else:
        p = r.emit("softmax", [s], {"axis": -1})
    if dropout_p:
        p = r.emit("dropout", [p], {"p": float(dropout_p)})
    return r.emit("matmul", [p, v])


@handles("aten.embedding.default")
def _embedding(r, node, w, idx, padding_idx=-1, scale_grad_by_freq=False, sparse=False):
    if scale_grad_by_freq:
        r.unsupported("scale_grad_by_freq")
    src = r.source(idx)
    rows = r.shape(w)[0]
    r.high[src] = min(r.high.get(src, 1 << 62), rows)
    if padding_idx in (-1, None):
        return r.emit("embedding", [w, idx])
    # The padding row takes no gradient in torch, so it never changes from its value now: rows of
    # W with that row zeroed (its gradient is then zero), plus a constant table holding only it.
    pad = int(padding_idx) % rows
    keep = np.ones((rows, 1))
    keep[pad] = 0.0
    fixed = np.zeros(r.shape(w))
    if w in r.arrays:  # a parameter's current values (none on the meta device: nn.Embedding zeroes it)
        fixed[pad] = r.arrays[w][pad]
    y = r.emit("embedding", [r.emit("mul", [w, r.const(keep)]), idx])
    return r.emit("add", [y, r.emit("embedding", [r.const(fixed), idx])]) if fixed.any() else y


def _gather_along(r, x, idx, dim):
    """x and integer positions idx of the same rank and the same sizes off `dim`, gathered along
    dim: ckpt's gather along the last axis, with dim moved there (and back)."""
    idx = r.as_labels(idx, r.shape(x)[dim]) if idx in r.whole else idx
    if not r.info[idx][1].startswith("int"):
        r.unsupported("indices computed by the model from floats (ckpt gathers by integers: inputs, "
                      "constants, topk's, argmax's, and integer arithmetic on them)")
    nd = len(r.shape(x))
    src = r.source(idx)
    r.high[src] = min(r.high.get(src, 1 << 62), r.shape(x)[dim])
    if dim == nd - 1:
        return r.emit("gather", [x, idx])
    perm = [d for d in range(nd) if d != dim] + [dim]
    inv = [perm.index(d) for d in range(nd)]
    shape = tuple(r.shape(idx)[p] for p in perm)
    idx = r.int_rearranged(idx, shape, perm, tag=f"last{dim}_")
    y = r.emit("gather", [r.emit("transpose", [x], {"axes": perm}), idx])
    return r.emit("transpose", [y], {"axes": inv})


@handles("aten.gather.default")
def _gather(r, node, x, dim, index, sparse_grad=False):
    """torch.gather: out[i][j] = x[i][index[i][j]] along dim; off dim, index may be shorter than x,
    and torch reads x's first entries there."""
    xs, ids = r.shape(x), r.shape(index)
    if not xs or len(ids) != len(xs):
        r.unsupported("gather of a 0-d tensor or with an index of another rank")
    dim = int(dim) % len(xs)
    for d in range(len(xs)):
        if d != dim and ids[d] < xs[d]:
            x = _slice(r, x, d, 0, ids[d])
    return _gather_along(r, x, index, dim)


@handles("aten.take_along_dim.default")
def _take_along_dim(r, node, x, index, dim=None):
    """torch.take_along_dim: gather whose index broadcasts against x off dim (dim None: of the
    flattened x)."""
    if dim is None:
        n = size_of(r.shape(x))
        flat = r.int_rearranged(index, (size_of(r.shape(index)),)) if len(r.shape(index)) != 1 else index
        return _gather_along(r, r.emit("reshape", [x], {"shape": [n]}) if len(r.shape(x)) != 1 else x, flat, 0)
    xs, ids = r.shape(x), r.shape(index)
    if not xs or len(ids) != len(xs):
        r.unsupported("take_along_dim with an index of another rank")
    dim = int(dim) % len(xs)
    if any(xs[d] == 1 and ids[d] > 1 for d in range(len(xs)) if d != dim):
        r.unsupported("take_along_dim broadcasting the tensor (only the index broadcasts here)")
    shape = tuple(ids[d] if d == dim else xs[d] for d in range(len(xs)))
    if shape != ids:
        index = r.int_broadcast(index, shape)
    return _gather_along(r, x, index, dim)


@handles("aten.arange.default", "aten.arange.start", "aten.arange.start_step")
def _arange(r, node, *args, **kw):
    val = node.meta["val"]
    if val.is_floating_point():
        return r.const(np.arange(*args), dtype=r.dtype)
    return r.const(np.arange(*args), dtype="int64")


@handles("aten.dropout.default")
def _dropout(r, node, x, p, train):
    if not train or p == 0:
        return x
    return r.emit("dropout", [x], {"p": float(p)})


@handles("aten.view.default", "aten.reshape.default", "aten._unsafe_view.default", "aten.flatten.using_ints",
         "aten.unflatten.int", "aten.squeeze.dim", "aten.squeeze.dims", "aten.unsqueeze.default",
         "aten.squeeze.default")
def _reshape(r, node, x, *rest):
    shape = _out_shape(node)
    if shape == r.shape(x):
        return x
    if r.info[x][1].startswith("int"):
        return r.int_rearranged(x, shape)
    return r.emit("reshape", [x], {"shape": list(shape)})


@handles("aten.transpose.int", "aten.swapaxes.default")
def _transpose(r, node, x, d0, d1):
    nd = len(r.shape(x))
    axes = list(range(nd))
    axes[d0 % nd], axes[d1 % nd] = axes[d1 % nd], axes[d0 % nd]
    return r.emit("transpose", [x], {"axes": axes})


@handles("aten.permute.default")
def _permute(r, node, x, dims):
    nd = len(r.shape(x))
    return r.emit("transpose", [x], {"axes": [d % nd for d in dims]})


@handles("aten.contiguous.default", "aten.clone.default", "aten.alias.default", "aten.lift_fresh_copy.default")
def _identity(r, node, x, *rest, **kw):
    return x


@handles("aten.detach.default")
def _detach(r, node, x):
    """x.detach(): the value, with no gradient back through it (a constant or integers take none)."""
    return x if r.info[x][1].startswith("int") else r.emit("stop_gradient", [x])


@handles("aten.cat.default")
def _cat(r, node, xs, dim=0):
    return r.emit("concat", list(xs), {"axis": int(dim)})


def _reduce(op):
    def rule(r, node, x, dims=None, keepdim=False, dtype=None):
        axis = None if dims in (None, []) else [int(d) for d in dims]
        return r.emit(op, [x], {"axis": axis, "keepdims": bool(keepdim)})
    return rule


handles("aten.sum.dim_IntList", "aten.sum.default")(_reduce("sum"))
handles("aten.mean.dim", "aten.mean.default")(_reduce("mean"))


def _class_rows(r, logits, target):
    """Logits (N, C, d1, ...) and labels (N, d1, ...) as ckpt's (rows, C) and (rows,): the class
    axis moved last (torch's layout for images and sequences)."""
    shape = r.shape(logits)
    if r.info[target][1] not in ("int64", "int32") and target not in r.whole \
            or len(r.shape(target)) != len(shape) - 1:
        r.unsupported("a loss against class probabilities (ckpt's take integer class indices)")
    if len(shape) > 2:
        logits = r.emit("transpose", [logits], {"axes": [0] + list(range(2, len(shape))) + [1]})
        logits = r.emit("reshape", [logits], {"shape": [-1, shape[1]]})
        target = _labels_reshaped(r, target, (size_of(r.shape(target)),))
    src = r.source(target)
    r.high[src] = min(r.high.get(src, 1 << 62), shape[1])
    return logits, target


def _labels_reshaped(r, x, shape):
    """Labels reshaped: integers as their views, whole floats (labels the model computed) as floats."""
    if x not in r.whole:
        return r.int_rearranged(x, tuple(shape))
    y = _reshape_to(r, x, list(shape))
    r.whole.add(y)
    return y


def size_of(shape):
    return int(np.prod(shape, dtype=np.int64)) if shape else 1


def _reduced(r, per, reduction):
    """An elementwise loss reduced as PyTorch's `reduction`: none (0) the tensor, mean (1), sum (2)."""
    if reduction == 0:
        return per
    return r.emit("mean" if reduction == 1 else "sum", [per], {"axis": None, "keepdims": False})


def _nll_loss(r, logp, target, weight, reduction, ignore_index, node, shape):
    """PyTorch's nll_loss of rows (rows, C): class weights (a constant, or a value passed through
    stop_gradient: PyTorch gives them no gradient), the rows labelled ignore_index skipped (the
    default -100, or a padding id). Their weighted mean or sum is one nll node; reduction='none'
    is each row's -w[t] logp[t] (0 where ignored), in the labels' `shape` (a focal loss, a loss
    masked by padding)."""
    if reduction in (1, 2):
        return r.emit("nll", [logp, target] + ([weight] if weight is not None else []),
                      {"ignore_index": int(ignore_index), "average": reduction == 1})
    rows, classes = r.shape(logp)
    keep = _compare("ne")(r, node, target, float(ignore_index))
    tf = r.as_float(target) if r.info[target][1].startswith("int") else target
    safe = r.emit("where", [keep, tf, r.const(0.0)])  # an ignored row reads class 0, then counts 0
    r.whole.add(safe)
    col = _labels_reshaped(r, safe, (rows, 1))
    per = r.emit("reshape", [_gather_along(r, logp, col, 1)], {"shape": [rows]})
    if weight is not None:
        per = r.emit("mul", [per, r.emit("reshape", [r.emit("embedding", [r.emit("reshape", [weight], {
            "shape": [classes, 1]}), safe]), ], {"shape": [rows]})])
    per = r.emit("neg", [r.emit("mul", [per, keep])])
    return per if tuple(shape) == (rows,) else r.emit("reshape", [per], {"shape": list(shape)})


def _class_weight(r, weight):
    return weight if weight is None or r.value(weight) is not None else r.emit("stop_gradient", [weight])


@handles("aten.cross_entropy_loss.default")
def _cross_entropy(r, node, logits, target, weight=None, reduction=1, ignore_index=-100, label_smoothing=0.0):
    """log_softmax, then nll (class weights, ignore_index, mean, sum or none). Label smoothing, as
    PyTorch adds it: eps / C times each kept row's -sum_c w_c logp[r, c], summed over the rows and
    divided as the nll is (by the kept rows' weights, or the kept rows) for mean."""
    shape = r.shape(target)
    logits, target = _class_rows(r, logits, target)
    weight = _class_weight(r, weight)
    logp = r.emit("log_softmax", [logits], {"axis": -1})
    loss = _nll_loss(r, logp, target, weight, reduction, ignore_index, node, shape)
    if not label_smoothing:
        return loss
    eps, rows, classes = float(label_smoothing), *r.shape(logits)
    weighted = r.emit("mul", [logp, weight]) if weight is not None else logp
    per = r.emit("sum", [weighted], {"axis": [-1], "keepdims": False})
    keep = _compare("ne")(r, node, target, float(ignore_index))
    smooth = r.emit("neg", [r.emit("mul", [per, keep])])
    if reduction == 0:
        smooth = smooth if tuple(shape) == (rows,) else r.emit("reshape", [smooth], {"shape": list(shape)})
    else:
        smooth = r.emit("sum", [smooth], {"axis": None, "keepdims": False})
    if reduction == 1:
        if weight is None:
            total = r.emit("sum", [keep], {"axis": None, "keepdims": False})
        else:  # the kept rows' weights: each row's one-hot (none for an ignored row) times the weights
            onehot = _compare("eq")(r, node, _labels_reshaped(r, target, (rows, 1)),
                                    r.const(np.arange(classes, dtype=float)))
            total = r.emit("sum", [r.emit("mul", [onehot, weight])], {"axis": None, "keepdims": False})
        smooth = r.emit("div", [smooth, total])
    return r.emit("add", [r.emit("scale", [loss], {"factor": 1.0 - eps}),
                          r.emit("scale", [smooth], {"factor": eps / classes})])


@handles("aten.nll_loss_nd.default", "aten.nll_loss.default", "aten.nll_loss2d.default")
def _nll(r, node, logp, target, weight=None, reduction=1, ignore_index=-100):
    shape = r.shape(target)
    logp, target = _class_rows(r, logp, target)
    return _nll_loss(r, logp, target, _class_weight(r, weight), reduction, ignore_index, node, shape)


@handles("aten.mse_loss.default")
def _mse(r, node, a, b, reduction=1):
    if r.shape(a) != r.shape(b):
        r.unsupported("mse of tensors of different shapes")
    if reduction == 1:
        return r.emit("mse", [a, b])
    d = r.emit("sub", [a, b])
    return _reduced(r, r.emit("mul", [d, d]), reduction)


@handles("aten.binary_cross_entropy_with_logits.default")
def _bce_logits(r, node, x, y, weight=None, pos_weight=None, reduction=1):
    """mean(softplus(x) - x y), written stably: relu(x) - x y + log(1 + e^-|x|). With pos_weight p
    (per class) and weight w, PyTorch's w ((1 - y) x + (1 + (p - 1) y) softplus(-x))."""
    if pos_weight is None:
        per = r.emit("sub", [_softplus_of(r, x), r.emit("mul", [x, y])])
    else:
        one = r.const(1.0)
        lw = r.emit("add", [r.emit("mul", [r.emit("sub", [pos_weight, one]), y]), one])
        per = r.emit("add", [r.emit("mul", [r.emit("sub", [one, y]), x]),
                             r.emit("mul", [lw, _softplus_of(r, r.emit("neg", [x]))])])
    if weight is not None:
        per = r.emit("mul", [per, weight])
    return _reduced(r, per, reduction)


@handles("aten.binary_cross_entropy.default")
def _bce(r, node, p, y, weight=None, reduction=1):
    """-mean(w (y log p + (1 - y) log(1 - p))) (torch also clamps each log at -100: p of 0 or 1 only)."""
    one = r.const(1.0)
    ll = r.emit("add", [r.emit("mul", [y, r.emit("log", [p])]),
                        r.emit("mul", [r.emit("sub", [one, y]), r.emit("log", [r.emit("sub", [one, p])])])])
    if weight is not None:
        ll = r.emit("mul", [ll, weight])
    if reduction == 0:
        return r.emit("neg", [ll])
    return r.emit("neg", [_reduced(r, ll, reduction)])


@handles("aten.smooth_l1_loss.default", "aten.huber_loss.default")
def _smooth_l1(r, node, a, b, reduction=1, beta=1.0):
    """|d| < beta: d^2 / (2 beta), else |d| - beta / 2 (Huber: delta times the same, at beta = delta)."""
    huber = "huber" in str(node.target)
    d = r.emit("sub", [a, b])
    ad = _abs(r, None, d)
    quad = r.emit("scale", [r.emit("mul", [d, d])], {"factor": 0.5 / beta if not huber else 0.5})
    lin = r.emit("sub", [ad if not huber else r.emit("scale", [ad], {"factor": float(beta)}),
                         r.const(0.5 * beta if not huber else 0.5 * beta * beta)])
    per = r.emit("where", [r.emit("less", [ad, r.const(float(beta))]), quad, lin])
    return _reduced(r, per, reduction)


@handles("aten.l1_loss.default")
def _l1(r, node, a, b, reduction=1):
    d = r.emit("sub", [a, b])
    # |d| = d * sign(d), with sign = 2 [d > 0] - 1 (a comparison: no gradient through it)
    sign = r.emit("sub", [r.emit("scale", [r.emit("greater", [d, r.const(0.0)])], {"factor": 2.0}), r.const(1.0)])
    return _reduced(r, r.emit("mul", [d, sign]), reduction)


def _pair(v):
    v = list(v) if isinstance(v, (list, tuple)) else [v, v]
    return v * 2 if len(v) == 1 else v


def _pad_axis(r, x, axis, left, right, value=0.0):
    """x with `left` and `right` entries of a constant joined on either side of an axis."""
    if not left and not right:
        return x
    shape = list(r.shape(x))
    parts = []
    for n in (left, right):
        shape[axis] = n
        parts.append([r.const(np.full(shape, float(value)))] if n else [])
    return r.emit("concat", parts[0] + [x] + parts[1], {"axis": axis})


def _pad_from(r, x, axis, left, right, mode):
    """x with entries of itself joined on either side of an axis: reflected about the edge
    (ReflectionPad, CycleGAN's and pix2pix's generators), the edge repeated (ReplicationPad), or
    the other end (circular): slices of one entry, or of the wrapped end, joined. The gradient
    flows back through each slice, so an entry read twice takes both gradients, as in PyTorch."""
    n = r.shape(x)[axis]
    if mode == "reflect":
        if max(left, right) >= n:
            r.unsupported(f"reflect padding of {max(left, right)} on an axis of {n} (it must be less)")
        lo, hi = list(range(left, 0, -1)), list(range(n - 2, n - 2 - right, -1))
    elif mode == "replicate":
        lo, hi = [0] * left, [n - 1] * right
    else:  # circular
        if max(left, right) > n:
            r.unsupported(f"circular padding of {max(left, right)} on an axis of {n} (at most its size)")
        lo, hi = list(range(n - left, n)), list(range(right))
    parts = [_slice(r, x, axis, i, i + 1) for i in lo] + [x] + [_slice(r, x, axis, i, i + 1) for i in hi]
    return x if len(parts) == 1 else r.emit("concat", parts, {"axis": axis})


@handles("aten.constant_pad_nd.default", "aten.pad.default")
def _constant_pad(r, node, x, pad, mode="constant", value=None):
    if mode not in ("constant", "reflect", "replicate", "circular"):
        r.unsupported(f"{mode} padding")
    nd = len(r.shape(x))
    if any(int(v) < 0 for v in pad):
        r.unsupported("negative padding (cropping)")
    for k in range(len(pad) // 2):  # torch's order: the last axis first, (left, right) each
        left, right = int(pad[2 * k]), int(pad[2 * k + 1])
        if mode == "constant":
            x = _pad_axis(r, x, nd - 1 - k, left, right, value or 0.0)
        else:
            x = _pad_from(r, x, nd - 1 - k, left, right, mode)
    return x


def _conv_padding(padding, k, d):
    """(left, right) per spatial axis: torch's ints, or 'same' / 'valid'."""
    if padding == "valid":
        return [(0, 0)] * len(k)
    if padding == "same":
        return [(d_ * (k_ - 1) // 2, d_ * (k_ - 1) - d_ * (k_ - 1) // 2) for k_, d_ in zip(k, d)]
    p = list(padding) if isinstance(padding, (list, tuple)) else [padding] * len(k)
    p = p * len(k) if len(p) == 1 else p
    return [(int(v), int(v)) for v in p]


def _dilations(r, w, d):
    """(w, dilation) for ckpt's conv2d, which dilates both axes alike: a dilation along an axis of
    kernel size 1 spaces nothing; unequal ones (2, 1) are the kernel itself with d - 1 zeros
    between its taps along each axis, at dilation 1."""
    kh, kw = r.shape(w)[2:]
    dil = {v for v, k in zip(d, (kh, kw)) if k > 1} or {1}
    if len(dil) == 1:
        return w, dil.pop()
    for axis, (k, da) in enumerate(zip((kh, kw), d), start=2):
        if k > 1 and da > 1:
            w = _slice(r, _stuff(r, w, axis, da), axis, 0, da * (k - 1) + 1)
    return w, 1


def _conv(r, x, w, b, stride, pads, groups, dilation=1):
    """ckpt's conv2d (one square stride, one padding and one dilation for both axes) for torch's:
    unequal or one-sided padding is joined as zeros first; groups are convolutions of channel
    slices, joined."""
    (ph, ph2), (pw, pw2) = pads
    if ph == ph2 == pw == pw2:
        pad = ph
    else:
        x = _pad_axis(r, _pad_axis(r, x, 2, ph, ph2), 3, pw, pw2)
        pad = 0
    attrs = {"stride": stride, "padding": pad}
    if dilation != 1:
        attrs["dilation"] = dilation
    if groups == 1:
        return r.emit("conv2d", [x, w] + ([b] if b is not None else []), attrs)
    cin, cout = r.shape(x)[1] // groups, r.shape(w)[0] // groups
    outs = []
    for g in range(groups):
        xg = _slice(r, x, 1, g * cin, (g + 1) * cin)
        wg = _slice(r, w, 0, g * cout, (g + 1) * cout)
        bg = [_slice(r, b, 0, g * cout, (g + 1) * cout)] if b is not None else []
        outs.append(r.emit("conv2d", [xg, wg] + bg, dict(attrs)))
    return r.emit("concat", outs, {"axis": 1})


@handles("aten.conv2d.default", "aten.conv2d.padding")
def _conv2d(r, node, x, w, b=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1):
    s, d = [int(v) for v in _pair(stride)], [int(v) for v in _pair(dilation)]
    kh, kw = r.shape(w)[2:]
    if min(d) < 1:
        r.unsupported(f"conv2d with dilation {tuple(d)} (each must be at least 1)")
    if min(s) < 1:
        r.unsupported(f"conv2d with stride {tuple(s)} (each must be at least 1)")
    if r.shape(x)[2] == 1 and kh == 1:  # one row: the row stride moves nothing
        s[0] = s[1]
    w, dil = _dilations(r, w, d)
    # Unequal strides (2, 1): ckpt's conv2d at their common divisor, then every (s / g)-th output
    # row or column (exact; the skipped outputs cost their FLOPs and their bytes)
    g = math.gcd(*s)
    y = _conv(r, x, w, b, g, _conv_padding(padding, r.shape(w)[2:], d), int(groups), dil)
    for axis, sa in ((2, s[0]), (3, s[1])):
        if sa != g:
            y = _slice(r, y, axis, 0, None, sa // g)
    return y


@handles("aten.conv1d.default", "aten.conv1d.padding")
def _conv1d(r, node, x, w, b=None, stride=(1,), padding=(0,), dilation=(1,), groups=1):
    """(N, C, L) as an image of height 1: ckpt's conv2d with a (1, k) kernel."""
    s = stride[0] if isinstance(stride, (list, tuple)) else stride
    d = int(dilation[0] if isinstance(dilation, (list, tuple)) else dilation)
    if len(r.shape(x)) != 3:
        r.unsupported("conv1d of other than (N, C, L)")
    if d < 1:
        r.unsupported(f"conv1d with dilation {d} (it must be at least 1)")
    (pl, pr), = _conv_padding(padding, r.shape(w)[2:], [d])
    n, c, length = r.shape(x)
    x4 = r.emit("reshape", [x], {"shape": [n, c, 1, length]})
    w4 = r.emit("reshape", [w], {"shape": [r.shape(w)[0], r.shape(w)[1], 1, r.shape(w)[2]]})
    y = _conv(r, x4, w4, b, int(s), [(0, 0), (pl, pr)] if (pl, pr) != (0, 0) else [(0, 0), (0, 0)], int(groups),
              d if r.shape(w)[2] > 1 else 1)
    return r.emit("reshape", [y], {"shape": list(_out_shape(node))})


def _ints(v, n):
    """torch's int or list of ints for n spatial axes, as n ints (one int is every axis's)."""
    v = list(v) if isinstance(v, (list, tuple)) else [v]
    return [int(x) for x in (v * n if len(v) == 1 else v)]


def _pool_extent(r, what, n, k, s, p, d, ceil):
    """Windows along one axis, by PyTorch's rule: with ceil_mode the last window may run past the
    padded input, but it must start inside the input or its left padding."""
    if k < 1 or s < 1 or d < 1 or p < 0:
        r.unsupported(f"{what} with kernel {k}, stride {s}, padding {p} and dilation {d}")
    if 2 * p > k:
        r.unsupported(f"{what} with padding {p}, more than half the kernel {k}")
    span = d * (k - 1) + 1
    o = (n + 2 * p - span + (s - 1 if ceil else 0)) // s + 1
    if ceil and (o - 1) * s >= n + p:
        o -= 1
    if o < 1:
        r.unsupported(f"{what}: the window ({span}) is larger than the padded input ({n + 2 * p})")
    return o


def _avg_divisors(n, o, k, s, p, count_pad):
    """What PyTorch divides each window's sum by along one axis: the window's length within the
    padded input (count_include_pad) or within the input alone; a ceil_mode window's part past
    the padding never counts."""
    out = []
    for i in range(o):
        start = i * s - p
        end = min(start + k, n + p)
        out.append(end - start if count_pad else min(end, n) - max(start, 0))
    return np.array(out, dtype=float)


def _window_pool(r, x, op, k, s, p, d=(1, 1), ceil=False, count_pad=True, divisor=None):
    """Pooling of (N, C, H, W) over windows of any kernel, stride, padding and dilation, floor or
    ceil mode. Windows that tile the image are ckpt's pooling op; others (ResNet's 3 x 3 max pool of
    stride 2, padding 1; GoogLeNet's ceil-mode pools) are strided slices, one per offset in the
    window, of the input padded (-inf for max, zeros for the average) far enough that every window
    fits: max by a chain of where(greater) (the first maximum in the window wins, as in torch),
    average as their sum times 1/divisor, PyTorch's divisor per window."""
    n, c, h, w = r.shape(x)
    what = "max pooling" if op == "maxpool2d" else "average pooling"
    k, s, p, d = list(k), list(s), list(p), list(d)
    oh, ow = (_pool_extent(r, what, *a, ceil) for a in zip((h, w), k, s, p, d))
    if k[0] == k[1] and s == k and p == [0, 0] and d == [1, 1] and (oh * k[0], ow * k[1]) == (h, w) \
            and divisor is None:
        return r.emit(op, [x], {"kernel": k[0]})
    fill = -np.inf if op == "maxpool2d" else 0.0
    for axis, length, o, k_, s_, p_, d_ in ((2, h, oh, k[0], s[0], p[0], d[0]), (3, w, ow, k[1], s[1], p[1], d[1])):
        end = (o - 1) * s_ + d_ * (k_ - 1) + 1  # the last window's end, in the padded input
        x = _pad_axis(r, x, axis, p_, max(0, end - length - p_), fill)
    out = None
    for a in range(k[0]):
        rows = _slice(r, x, 2, a * d[0], a * d[0] + (oh - 1) * s[0] + 1, s[0])
        for b in range(k[1]):
            win = _slice(r, rows, 3, b * d[1], b * d[1] + (ow - 1) * s[1] + 1, s[1])
            if out is None:
                out = win
            elif op == "maxpool2d":
                out = r.emit("where", [r.emit("greater", [win, out]), win, out])
            else:
                out = r.emit("add", [out, win])
    if op == "maxpool2d":
        return out
    if divisor:
        return r.emit("scale", [out], {"factor": 1.0 / int(divisor)})
    per = np.outer(_avg_divisors(h, oh, k[0], s[0], p[0], count_pad), _avg_divisors(w, ow, k[1], s[1], p[1], count_pad))
    if (per == per.flat[0]).all():
        return r.emit("scale", [out], {"factor": 1.0 / per.flat[0]})
    return r.emit("mul", [out, r.const(1.0 / per)])  # (OH, OW), broadcast over the batch and channels


def _image(r, x, what):
    if len(r.shape(x)) != 4:
        r.unsupported(f"{what} of other than (N, C, H, W)")


@handles("aten.max_pool2d.default")
def _max_pool2d(r, node, x, kernel_size, stride=(), padding=0, dilation=1, ceil_mode=False):
    _image(r, x, "max pooling")
    k = _ints(kernel_size, 2)
    s = _ints(stride, 2) if stride not in ((), [], None) else k
    return _window_pool(r, x, "maxpool2d", k, s, _ints(padding, 2), _ints(dilation, 2), bool(ceil_mode))


@handles("aten.avg_pool2d.default")
def _avg_pool2d(r, node, x, kernel_size, stride=(), padding=0, ceil_mode=False, count_include_pad=True,
                divisor_override=None):
    _image(r, x, "average pooling")
    k = _ints(kernel_size, 2)
    s = _ints(stride, 2) if stride not in ((), [], None) else k
    if divisor_override is not None and int(divisor_override) < 1:
        r.unsupported(f"average pooling with divisor_override {divisor_override}")
    return _window_pool(r, x, "avgpool2d", k, s, _ints(padding, 2), (1, 1), bool(ceil_mode),
                        bool(count_include_pad), divisor_override)


def _as_image(r, node, x, what, pool):
    """(N, C, L) as an image of height 1: `pool` of it, back to (N, C, L')."""
    if len(r.shape(x)) != 3:
        r.unsupported(f"{what} of other than (N, C, L)")
    n, c, length = r.shape(x)
    y = pool(r.emit("reshape", [x], {"shape": [n, c, 1, length]}))
    val = node.meta["val"]
    val = val[0] if isinstance(val, (tuple, list)) else val  # (values, indices) of return_indices
    return r.emit("reshape", [y], {"shape": [int(d) for d in val.shape]})


@handles("aten.max_pool1d.default")
def _max_pool1d(r, node, x, kernel_size, stride=(), padding=0, dilation=1, ceil_mode=False):
    k = _ints(kernel_size, 1)[0]
    s = _ints(stride, 1)[0] if stride not in ((), [], None) else k
    return _as_image(r, node, x, "max pooling", lambda x4: _window_pool(
        r, x4, "maxpool2d", [1, k], [1, s], [0, _ints(padding, 1)[0]], [1, _ints(dilation, 1)[0]], bool(ceil_mode)))


@handles("aten.avg_pool1d.default")
def _avg_pool1d(r, node, x, kernel_size, stride=(), padding=0, ceil_mode=False, count_include_pad=True):
    k = _ints(kernel_size, 1)[0]
    s = _ints(stride, 1)[0] if stride not in ((), [], None) else k
    return _as_image(r, node, x, "average pooling", lambda x4: _window_pool(
        r, x4, "avgpool2d", [1, k], [1, s], [0, _ints(padding, 1)[0]], [1, 1], bool(ceil_mode), bool(count_include_pad)))


@handles("aten.max_pool2d_with_indices.default", "aten.max_pool1d_with_indices.default")
def _max_pool_with_indices(r, node, x, *args, **kw):
    """nn.MaxPool(return_indices=True): (values, indices). The values are max pooling's; the indices
    are no ckpt value (a model that reads them, as max_unpool does, is refused where it does)."""
    pool = _max_pool2d if "2d" in str(node.target) else _max_pool1d
    return [pool(r, node, x, *args, **kw), None]


# ---- max and min over axes; adaptive max pooling -------------------------------------------------------
def _extreme_op(node):
    return "amax" if "max" in str(node.target) else "amin"


@handles("aten.amax.default", "aten.amin.default")
def _amax(r, node, x, dim=(), keepdim=False):
    """torch.amax / amin: ties share the gradient equally."""
    dims = _ints(dim, 1) if dim not in ((), [], None) else None
    return r.emit(_extreme_op(node), [x], {"axis": dims, "keepdims": bool(keepdim)})


@handles("aten.max.default", "aten.min.default")
def _max_all(r, node, x):
    """torch.max(x) over every element: ties share the gradient equally, as for amax."""
    return r.emit(_extreme_op(node), [x], {"axis": None, "keepdims": False})


@handles("aten.max.dim", "aten.min.dim")
def _max_dim(r, node, x, dim, keepdim=False):
    """torch.max(x, dim): (values, indices); the first extremum along the axis takes the gradient,
    the element whose index torch returns; the indices, that element's position (a node only where
    the model reads them)."""
    values = r.emit(_extreme_op(node), [x], {"axis": int(dim), "keepdims": bool(keepdim), "first": True})
    return [values, _arg_extreme(r, node, x, dim, keepdim, "max" in str(node.target))]


def _arg_extreme(r, node, x, dim, keepdim, largest):
    """The index of the first maximum (minimum) along dim, as torch.argmax and torch.max(x, dim)
    return it: topk's first position (ties by position), without the axis unless keepdim."""
    if dim is None:
        x, dim = _reshape_to(r, x, [size_of(r.shape(x))]), 0
    _, idx = _topk_along(r, x, 1, dim, largest)
    val = node.meta["val"]
    val = val[1] if isinstance(val, (tuple, list)) else val
    shape = tuple(int(d) for d in val.shape)
    return idx if shape == r.shape(idx) else r.int_rearranged(idx, shape)


def _adaptive_max(r, x, oh, ow):
    """Adaptive max pooling of (N, C, H, W) to (OH, OW): torch's bins (as for the average), each bin's
    first maximum in row-major order taking the gradient, as torch's kernel picks it."""
    n, c, h, w = r.shape(x)
    if (oh, ow) == (h, w):
        return x
    if h % oh == 0 and w % ow == 0:  # equal bins that tile the image: windows of one stride
        return _window_pool(r, x, "maxpool2d", [h // oh, w // ow], [h // oh, w // ow], [0, 0])
    bins = []
    for i in range(oh):
        rows = _slice(r, x, 2, (i * h) // oh, -((-(i + 1) * h) // oh))
        for j in range(ow):
            part = _slice(r, rows, 3, (j * w) // ow, -((-(j + 1) * w) // ow))
            bh, bw = r.shape(part)[2:]
            flat = r.emit("reshape", [part], {"shape": [n, c, bh * bw]})
            bins.append(r.emit("amax", [flat], {"axis": -1, "keepdims": True, "first": True}))
    out = r.emit("concat", bins, {"axis": 2}) if len(bins) > 1 else bins[0]
    return r.emit("reshape", [out], {"shape": [n, c, oh, ow]})


@handles("aten.adaptive_max_pool2d.default")
def _adaptive_max2d(r, node, x, output_size):
    _image(r, x, "adaptive max pooling")
    oh, ow = tuple(node.meta["val"][0].shape)[-2:]  # (values, indices)
    return [_adaptive_max(r, x, int(oh), int(ow)), None]


@handles("aten.adaptive_max_pool1d.default")
def _adaptive_max1d(r, node, x, output_size):
    if len(r.shape(x)) != 3:
        r.unsupported("adaptive max pooling of other than (N, C, L)")
    n, c, length = r.shape(x)
    o = int(node.meta["val"][0].shape[-1])
    y = _adaptive_max(r, r.emit("reshape", [x], {"shape": [n, c, 1, length]}), 1, o)
    return [r.emit("reshape", [y], {"shape": [n, c, o]}), None]


def _bins(n_in, n_out):
    """torch's adaptive bins, [floor(i n / o), ceil((i + 1) n / o)), as an averaging matrix (o, n)."""
    a = np.zeros((n_out, n_in))
    for i in range(n_out):
        lo, hi = (i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)
        a[i, lo:hi] = 1.0 / (hi - lo)
    return a


@handles("aten.adaptive_avg_pool1d.default")
def _adaptive_avg1d(r, node, x, size_):
    n_out, n_in = _out_shape(node)[-1], r.shape(x)[-1]
    if n_out == n_in:
        return x
    if n_out == 1:
        return r.emit("mean", [x], {"axis": [-1], "keepdims": True})
    return r.emit("matmul", [x, r.const(np.ascontiguousarray(_bins(n_in, n_out).T))])


@handles("aten.adaptive_avg_pool2d.default")
def _adaptive_avg(r, node, x, size_):
    if list(size_) == [1, 1]:
        return r.emit("mean", [x], {"axis": [2, 3], "keepdims": True})
    h, w = r.shape(x)[-2:]
    oh, ow = _out_shape(node)[-2:]
    if (oh, ow) == (h, w):
        return x

    # y = A_h x A_w^T: two matrix products with constant averaging matrices
    return r.emit("matmul", [r.emit("matmul", [r.const(_bins(h, oh)), x]), r.const(np.ascontiguousarray(_bins(w, ow).T))])


@handles("aten.broadcast_tensors.default")
def _broadcast_tensors(r, node, xs):
    shapes = {r.shape(x) for x in xs}
    if len(shapes) != 1:
        r.unsupported("broadcasting tensors of different shapes (ckpt's ops broadcast by themselves)")
    return list(xs)


@handles("<built-in function getitem>")
def _getitem(r, node, xs, i):
    if not isinstance(xs, list):
        r.unsupported("indexing a tensor")
    return xs[i]


# ---- constants shaped like a traced value ---------------------------------------------------------
def _filled(fill_arg):
    def rule(r, node, *args, **kw):
        val = node.meta["val"]
        fill = kw.get("fill_value", args[fill_arg] if isinstance(fill_arg, int) and len(args) > fill_arg else 0)
        fill = 1 if fill_arg == "one" else fill
        dt = r.dtype if val.is_floating_point() or str(val.dtype) == "torch.bool" else str(val.dtype)[6:]
        return r.const(np.full(tuple(val.shape), float(fill)), dtype=dt)
    return rule


handles("aten.new_zeros.default", "aten.zeros_like.default", "aten.new_empty.default",
        "aten.empty_like.default")(_filled(None))
handles("aten.new_ones.default", "aten.ones_like.default")(_filled("one"))
handles("aten.new_full.default")(_filled(2))
handles("aten.full_like.default")(_filled(1))


@handles("aten._to_copy.default", "aten.to.dtype", "aten.to.dtype_layout", "aten.type_as.default")
def _to(r, node, x, *rest, **kw):
    if str(node.meta["val"].dtype) == "torch.bool":  # x.bool(): nonzero is true, a 0/1 mask
        src = getattr(node.args[0], "meta", {}).get("val")
        return x if str(getattr(src, "dtype", "")) == "torch.bool" else _compare("ne")(r, node, x, 0.0)
    if not node.meta["val"].is_floating_point():
        src = getattr(node.args[0], "meta", {}).get("val")
        if r.info[x][1].startswith("int") or str(getattr(src, "dtype", "")) == "torch.bool" or x in r.whole:
            # integers as another integer dtype; a mask's 0/1 (`mask.long()`) or whole floats as
            # integers: the same values (whole floats read back as labels where they index)
            return x
        r.unsupported("a cast of floats to integers (other than of a mask or of integers ckpt holds as floats)")
    if r.info[x][1].startswith("int"):
        return r.as_float(x)
    return x  # one float dtype per ckpt model: a cast between float dtypes is the model's dtype


# ---- batch and group normalization, from ckpt's elementwise ops and reductions --------------------
def _channel(r, v, nd):
    """A per-channel (C,) vector shaped to broadcast over (N, C, ...)."""
    return r.emit("reshape", [v], {"shape": [-1] + [1] * (nd - 2)}) if nd > 2 else v


def _normalize(r, x, axes, eps):
    """(x - mean) / sqrt(var + eps) over `axes`, the biased variance, as torch normalizes."""
    mean = r.emit("mean", [x], {"axis": axes, "keepdims": True})
    xc = r.emit("sub", [x, mean])
    var = r.emit("mean", [r.emit("mul", [xc, xc])], {"axis": axes, "keepdims": True})
    return r.emit("mul", [xc, r.emit("pow", [r.emit("add", [var, r.const(float(eps))])], {"exponent": -0.5})])


def _affine(r, y, w, b, nd):
    if w is not None:
        y = r.emit("mul", [y, _channel(r, w, nd)])
    if b is not None:
        y = r.emit("add", [y, _channel(r, b, nd)])
    return y


def _bn(r, x, w, b, rm, rv, training, eps):
    nd = len(r.shape(x))
    if nd < 2:
        r.unsupported("batch norm of a tensor of fewer than 2 dimensions")
    if training or rm is None:  # batch statistics; the running ones are updated outside the loss
        y = _normalize(r, x, [0] + list(range(2, nd)), eps)
    elif r.value(rm) is not None and r.value(rv) is not None:
        y = r.emit("mul", [r.emit("sub", [x, _channel(r, rm, nd)]),
                           r.const((1.0 / np.sqrt(r.value(rv) + eps)).reshape([-1] + [1] * (nd - 2)))])
    else:  # running statistics without values (a model on the meta device)
        rstd = r.emit("pow", [r.emit("add", [rv, r.const(float(eps))])], {"exponent": -0.5})
        y = r.emit("mul", [r.emit("sub", [x, _channel(r, rm, nd)]), _channel(r, rstd, nd)])
    return _affine(r, y, w, b, nd)


@handles("aten.batch_norm.default")
def _batch_norm(r, node, x, w, b, rm, rv, training, momentum, eps, *rest):
    return _bn(r, x, w, b, rm, rv, training, eps)


@handles("aten._native_batch_norm_legit_functional.default", "aten._native_batch_norm_legit.default")
def _batch_norm_functional(r, node, x, w, b, rm, rv, training, momentum, eps):
    return [_bn(r, x, w, b, rm, rv, training, eps), None, None, None, None]


@handles("aten._native_batch_norm_legit.no_stats")
def _batch_norm_no_stats(r, node, x, w, b, training, momentum, eps):
    return [_bn(r, x, w, b, None, None, True, eps), None, None]


@handles("aten._native_batch_norm_legit_no_training.default")
def _batch_norm_eval(r, node, x, w, b, rm, rv, momentum, eps):
    return [_bn(r, x, w, b, rm, rv, False, eps), None, None]


@handles("aten.group_norm.default")
def _group_norm(r, node, x, groups, w=None, b=None, eps=1e-5, cudnn_enabled=True):
    shape = r.shape(x)
    g = r.emit("reshape", [x], {"shape": [shape[0], int(groups), -1]})
    y = r.emit("reshape", [_normalize(r, g, [2], eps)], {"shape": list(shape)})
    return _affine(r, y, w, b, len(shape))


@handles("aten.native_dropout.default")
def _native_dropout(r, node, x, p, train):
    return [_dropout(r, node, x, p, train if train is not None else True), None]


# ---- slices: split, chunk, unbind, select, narrow --------------------------------------------------
def _slice(r, x, dim, start, stop, step=1):
    shape = r.shape(x)
    dim = int(dim) % len(shape)
    st, sp, stp = slice(start, stop, step).indices(shape[dim])
    n = len(range(st, sp, stp))
    if n == shape[dim]:
        return x
    if n == 0:
        r.unsupported("an empty slice")
    sp = st + (n - 1) * stp + 1
    if r.info[x][1].startswith("int"):
        index = (slice(None),) * dim + (slice(st, sp, stp),)
        if not r.constant(x):  # of an input, or of indices an op computed (topk's first choice)
            return r.label_op("labels_slice", x, {"axis": dim, "start": st, "stop": sp, "step": stp})
        return r.int_view(x, shape[:dim] + (n,) + shape[dim + 1:], lambda a, _i=index: a[_i], tag=f"s{dim}_{st}_{stp}_")
    return r.emit("slice", [x], {"axis": dim, "start": st, "stop": sp, "step": stp})


def _select(r, x, dim, index):
    shape = r.shape(x)
    dim = int(dim) % len(shape)
    index = int(index) % shape[dim]
    part = _slice(r, x, dim, index, index + 1)
    out = shape[:dim] + shape[dim + 1:]
    if r.info[x][1].startswith("int"):
        if not r.constant(x):
            return r.int_rearranged(part, out)
        return r.int_view(x, out, lambda a, _d=dim, _i=index: np.take(a, _i, axis=_d), tag=f"i{dim}_{index}_")
    return r.emit("reshape", [part], {"shape": list(out)})


@handles("aten.slice.Tensor")
def _slice_rule(r, node, x, dim=0, start=None, end=None, step=1):
    return _slice(r, x, dim, start, end, step)


@handles("aten.narrow.default")
def _narrow(r, node, x, dim, start, length):
    return _slice(r, x, dim, start, start + length)


@handles("aten.select.int")
def _select_rule(r, node, x, dim, index):
    return _select(r, x, dim, index)


def _pieces(r, x, sizes, dim):
    out, start = [], 0
    for n in sizes:
        out.append(_slice(r, x, dim, start, start + n))
        start += n
    return out


@handles("aten.split.Tensor", "aten.split_with_sizes.default")
def _split(r, node, x, size_, dim=0):
    total = r.shape(x)[int(dim)]
    sizes = list(size_) if isinstance(size_, (list, tuple)) else \
        [min(int(size_), total - k) for k in range(0, total, int(size_))]
    return _pieces(r, x, sizes, dim)


@handles("aten.chunk.default")
def _chunk(r, node, x, chunks, dim=0):
    return _pieces(r, x, [int(v.shape[int(dim)]) for v in node.meta["val"]], dim)


@handles("aten.unbind.int")
def _unbind(r, node, x, dim=0):
    return [_select(r, x, dim, k) for k in range(r.shape(x)[int(dim)])]


def _scatter(r, base, src, dim, start, stop):
    """base with base[start:stop] along dim replaced by src: the pieces either side, joined."""
    n = r.shape(base)[dim]
    parts = ([_slice(r, base, dim, 0, start)] if start > 0 else []) + [src] + \
        ([_slice(r, base, dim, stop, n)] if stop < n else [])
    return parts[0] if len(parts) == 1 else r.emit("concat", parts, {"axis": dim})


@handles("aten.slice_scatter.default")
def _slice_scatter(r, node, base, src, dim=0, start=None, end=None, step=1):
    """What a functionalized write into a slice (`h[:, :2] *= 2`) becomes."""
    dim = int(dim) % len(r.shape(base))
    st, sp, stp = slice(start, end, step).indices(r.shape(base)[dim])
    if stp != 1:
        r.unsupported("a write into a strided slice")
    return _scatter(r, base, src, dim, st, max(sp, st))


@handles("aten.select_scatter.default")
def _select_scatter(r, node, base, src, dim, index):
    shape = list(r.shape(base))
    dim = int(dim) % len(shape)
    index = int(index) % shape[dim]
    return _scatter(r, base, r.emit("reshape", [src], {"shape": shape[:dim] + [1] + shape[dim + 1:]}),
                    dim, index, index + 1)


@handles("aten.copy.default")
def _copy(r, node, dst, src, non_blocking=False):
    return src if r.shape(src) == r.shape(dst) else r.emit("add", [src, r.const(np.zeros(r.shape(dst)))])


@handles("aten.stack.default")
def _stack(r, node, xs, dim=0):
    shape = r.shape(xs[0])
    dim = int(dim) % (len(shape) + 1)
    new = list(shape[:dim]) + [1] + list(shape[dim:])
    return r.emit("concat", [r.emit("reshape", [x], {"shape": new}) for x in xs], {"axis": dim})


@handles("aten.masked_fill.Scalar", "aten.masked_fill.Tensor")
def _masked_fill(r, node, x, mask, value):
    if not _is_tensor(r, value):
        value = r.const(float(value))
    return r.emit("where", [mask, value, x])


@handles("aten.where.self")
def _where(r, node, c, a, b):
    a = a if _is_tensor(r, a) else r.const(float(a))
    b = b if _is_tensor(r, b) else r.const(float(b))
    return r.emit("where", [c, a, b])


@handles("aten.pow.Tensor_Scalar")
def _pow(r, node, x, exponent):
    return r.emit("pow", [x], {"exponent": float(exponent)})


@handles("aten.sqrt.default")
def _sqrt(r, node, x):
    return r.emit("pow", [x], {"exponent": 0.5})


@handles("aten.rsqrt.default")
def _rsqrt(r, node, x):
    return r.emit("pow", [x], {"exponent": -0.5})


@handles("aten.square.default")
def _square(r, node, x):
    return r.emit("mul", [x, x])


@handles("aten.expand.default", "aten.expand_as.default")
def _expand(r, node, x, *rest):
    shape = _out_shape(node)
    if shape == r.shape(x):
        return x
    if r.info[x][1].startswith("int"):  # indices expanded over a feature axis, to gather whole rows
        if len(shape) != len(r.shape(x)):
            x = r.int_rearranged(x, (1,) * (len(shape) - len(r.shape(x))) + r.shape(x))
        return r.int_broadcast(x, shape)
    # ckpt's elementwise ops broadcast by themselves; an explicit expand adds zeros of its shape
    return r.emit("add", [x, r.const(np.zeros(shape))])


# ---- clamps and their kin, from where() and comparisons (no gradient through the comparison) -----
def _clamp(r, x, lo, hi):
    if lo is not None:
        lo = lo if _is_tensor(r, lo) else r.const(float(lo))
        x = r.emit("where", [r.emit("less", [x, lo]), lo, x])
    if hi is not None:
        hi = hi if _is_tensor(r, hi) else r.const(float(hi))
        x = r.emit("where", [r.emit("greater", [x, hi]), hi, x])
    return x


@handles("aten.clamp.default", "aten.clamp.Tensor", "aten.clip.default")
def _clamp_rule(r, node, x, lo=None, hi=None):
    return _clamp(r, x, lo, hi)


@handles("aten.clamp_min.default")
def _clamp_min(r, node, x, lo):
    return _clamp(r, x, lo, None)


@handles("aten.clamp_max.default")
def _clamp_max(r, node, x, hi):
    return _clamp(r, x, None, hi)


@handles("aten.hardtanh.default")
def _hardtanh(r, node, x, lo=-1.0, hi=1.0):  # nn.ReLU6 is hardtanh(0, 6)
    return _clamp(r, x, lo, hi)


@handles("aten.leaky_relu.default")
def _leaky_relu(r, node, x, slope=0.01):
    return r.emit("where", [r.emit("greater", [x, r.const(0.0)]), x, r.emit("scale", [x], {"factor": float(slope)})])


@handles("aten.maximum.default", "aten.minimum.default")
def _extremum(r, node, a, b):
    rel = "greater" if "maximum" in str(node.target) else "less"
    return r.emit("where", [r.emit(rel, [a, b]), a, b])


@handles("aten.abs.default")
def _abs(r, node, x):
    sign = r.emit("sub", [r.emit("scale", [r.emit("greater", [x, r.const(0.0)])], {"factor": 2.0}), r.const(1.0)])
    return r.emit("mul", [x, sign])


@handles("aten.tril.default", "aten.triu.default")
def _tri(r, node, x, diagonal=0):
    rows, cols = r.shape(x)[-2:]
    keep = (np.tril if "tril" in str(node.target) else np.triu)(np.ones((rows, cols)), int(diagonal))
    return r.emit("mul", [x, r.const(keep)])


@handles("aten.rms_norm.default")
def _rms_norm(r, node, x, normalized_shape, w=None, eps=None):
    """nn.RMSNorm: x / sqrt(mean(x^2) + eps) * w over the normalized (last) axes."""
    nd, k = len(r.shape(x)), len(normalized_shape)
    if eps is None:
        eps = float(np.finfo(r.dtype).eps)
    ms = r.emit("mean", [r.emit("mul", [x, x])], {"axis": list(range(nd - k, nd)), "keepdims": True})
    y = r.emit("mul", [x, r.emit("pow", [r.emit("add", [ms, r.const(float(eps))])], {"exponent": -0.5})])
    return r.emit("mul", [y, w]) if w is not None else y


@handles("aten.var.correction", "aten.std.correction", "aten.var.dim", "aten.std.dim")
def _var(r, node, x, dims=None, *rest, correction=None, keepdim=False, unbiased=None):
    if rest and isinstance(rest[0], bool):  # var.dim(x, dims, unbiased, keepdim)
        unbiased, keepdim = rest[0], (rest[1] if len(rest) > 1 else keepdim)
    corr = correction if correction is not None else (1 if unbiased in (None, True) else 0)
    nd = len(r.shape(x))
    axes = list(range(nd)) if dims in (None, []) else [int(d) % nd for d in dims]
    n = size_of([r.shape(x)[a] for a in axes])
    xc = r.emit("sub", [x, r.emit("mean", [x], {"axis": axes, "keepdims": True})])
    var = r.emit("mean", [r.emit("mul", [xc, xc])], {"axis": axes, "keepdims": bool(keepdim)})
    var = r.emit("scale", [var], {"factor": n / (n - float(corr))}) if corr else var
    return r.emit("pow", [var], {"exponent": 0.5}) if "std" in str(node.target) else var


@handles("aten.linalg_vector_norm.default")
def _vector_norm(r, node, x, ord=2, dims=None, keepdim=False, dtype=None):
    if ord != 2:
        r.unsupported("a vector norm other than the 2-norm")
    nd = len(r.shape(x))
    axis = None if dims in (None, []) else [int(d) % nd for d in dims]
    ss = r.emit("sum", [r.emit("mul", [x, x])], {"axis": axis, "keepdims": bool(keepdim)})
    return r.emit("pow", [ss], {"exponent": 0.5})


# ---- einsum, repeat -------------------------------------------------------------------------------
def _permute_to(r, x, letters, order):
    perm = [letters.index(c) for c in order]
    return x if perm == sorted(perm) else r.emit("transpose", [x], {"axes": perm})


def _reshape_to(r, x, shape):
    return x if tuple(shape) == r.shape(x) else r.emit("reshape", [x], {"shape": list(shape)})


@handles("aten.einsum.default")
def _einsum(r, node, equation, operands, path=None):
    """One or two operands, each index once per operand: a sum over the indices that only one
    operand has, then a batched matrix product (batch: indices of both operands and the output;
    contracted: of both and not the output), then the output's order."""
    eq = equation.replace(" ", "")
    lhs, arrow, out = eq.partition("->")
    ins = lhs.split(",")
    if "." in eq or len(ins) != len(operands) or len(ins) > 2 or any(len(set(t)) != len(t) for t in ins):
        r.unsupported("einsum with an ellipsis, a repeated index or more than two operands")
    if not arrow:  # implicit output: the indices seen once, in alphabetical order
        out = "".join(sorted(c for c in set(lhs) if lhs.count(c) == 1))
    size = {c: n for t, x in zip(ins, operands) for c, n in zip(t, r.shape(x))}
    xs, ts = list(operands), list(ins)
    for k, (t, x) in enumerate(zip(ts, xs)):  # indices no other operand and not the output has
        others = "".join(ts[:k] + ts[k + 1:]) + out
        lone = [i for i, c in enumerate(t) if c not in others]
        if lone:
            xs[k] = r.emit("sum", [x], {"axis": lone, "keepdims": False})
            ts[k] = "".join(c for c in t if c in others)
    if len(xs) == 1:
        return _permute_to(r, xs[0], ts[0], out)
    (a, b), (ta, tb) = xs, ts
    if any(r.shape(a)[ta.index(c)] != r.shape(b)[tb.index(c)] for c in set(ta) & set(tb)):
        r.unsupported("einsum over broadcast sizes")
    batch = [c for c in out if c in ta and c in tb]
    left = [c for c in ta if c not in tb]
    right = [c for c in tb if c not in ta]
    contract = [c for c in ta if c in tb and c not in out]
    nb = [size[c] for c in batch]
    nl, nr, nk = (size_of([size[c] for c in group]) for group in (left, right, contract))
    a = _reshape_to(r, _permute_to(r, a, ta, batch + left + contract), nb + [nl, nk])
    b = _reshape_to(r, _permute_to(r, b, tb, batch + contract + right), nb + [nk, nr])
    y = r.emit("matmul", [a, b])
    y = _reshape_to(r, y, nb + [size[c] for c in left] + [size[c] for c in right])
    return _permute_to(r, y, "".join(batch + left + right), out)


@handles("aten.repeat_interleave.self_int")
def _repeat_interleave(r, node, x, repeats, dim=None, output_size=None):
    if dim is None:
        x, dim = _reshape_to(r, x, [size_of(r.shape(x))]), 0
    shape = list(r.shape(x))
    dim = int(dim) % len(shape)
    up = shape[:dim + 1] + [1] + shape[dim + 1:]
    wide = shape[:dim + 1] + [int(repeats)] + shape[dim + 1:]
    y = r.emit("add", [_reshape_to(r, x, up), r.const(np.zeros(wide))])  # broadcast: each entry repeated
    return _reshape_to(r, y, shape[:dim] + [shape[dim] * int(repeats)] + shape[dim + 1:])


@handles("aten.repeat.default")
def _repeat(r, node, x, sizes):
    shape = list(r.shape(x))
    x = _reshape_to(r, x, [1] * (len(sizes) - len(shape)) + shape)
    for axis, n in enumerate(sizes):
        if int(n) > 1:
            x = r.emit("concat", [x] * int(n), {"axis": axis})
    return x


# ---- nn.LSTM and nn.GRU, unrolled over time into ckpt's ops -----------------------------------------
def _rnn(r, node, kind, x, hx, params, has_biases, num_layers, dropout, train, bidirectional, batch_first):
    """One linear for the input projections of every step, then per step the hidden projection
    and the gates (torch's order: LSTM i, f, g, o; GRU r, z, n); layers stacked, directions joined.
    Returns [output, h_n] (+ [c_n] for an LSTM)."""
    gates = 4 if kind == "lstm" else 3
    dirs = 2 if bidirectional else 1
    per = 4 if has_biases else 2
    if len(params) != num_layers * dirs * per:
        r.unsupported(f"nn.{kind.upper()} with proj_size")
    h0 = hx[0] if kind == "lstm" else hx
    c0 = hx[1] if kind == "lstm" else None
    t_axis = 1 if batch_first else 0
    steps = r.shape(x)[t_axis]
    hidden = r.shape(h0)[-1]
    layer_in, h_n, c_n = x, [], []
    for layer in range(num_layers):
        outs = []
        for d in range(dirs):
            k = (layer * dirs + d) * per
            w_ih, w_hh = params[k], params[k + 1]
            b_ih, b_hh = (params[k + 2], params[k + 3]) if has_biases else (None, None)
            w_ihT = r.emit("transpose", [w_ih], {"axes": [1, 0]})
            w_hhT = r.emit("transpose", [w_hh], {"axes": [1, 0]})
            xs = r.emit("linear", [layer_in, w_ihT] + ([b_ih] if b_ih is not None else []))
            h = _select(r, h0, 0, layer * dirs + d)
            c = _select(r, c0, 0, layer * dirs + d) if c0 is not None else None
            seq = [None] * steps
            for t in (range(steps) if d == 0 else reversed(range(steps))):
                gx = _select(r, xs, t_axis, t)
                gh = r.emit("linear", [h, w_hhT] + ([b_hh] if b_hh is not None else []))
                if kind == "lstm":
                    g = r.emit("add", [gx, gh])
                    i_, f_, g_, o_ = (_slice(r, g, -1, j * hidden, (j + 1) * hidden) for j in range(gates))
                    c = r.emit("add", [r.emit("mul", [r.emit("sigmoid", [f_]), c]),
                                       r.emit("mul", [r.emit("sigmoid", [i_]), r.emit("tanh", [g_])])])
                    h = r.emit("mul", [r.emit("sigmoid", [o_]), r.emit("tanh", [c])])
                else:
                    xr, xz, xn = (_slice(r, gx, -1, j * hidden, (j + 1) * hidden) for j in range(gates))
                    hr, hz, hn = (_slice(r, gh, -1, j * hidden, (j + 1) * hidden) for j in range(gates))
                    rg = r.emit("sigmoid", [r.emit("add", [xr, hr])])
                    z = r.emit("sigmoid", [r.emit("add", [xz, hz])])
                    n = r.emit("tanh", [r.emit("add", [xn, r.emit("mul", [rg, hn])])])
                    h = r.emit("add", [n, r.emit("mul", [z, r.emit("sub", [h, n])])])  # (1 - z) n + z h
                seq[t] = h
            h_n.append(h)
            c_n.append(c)
            b = r.shape(h)[0]
            up = [b, 1, hidden] if batch_first else [1, b, hidden]
            outs.append(r.emit("concat", [_reshape_to(r, v, up) for v in seq], {"axis": t_axis}))
        layer_in = outs[0] if dirs == 1 else r.emit("concat", outs, {"axis": -1})
        if dropout and train and layer < num_layers - 1:
            layer_in = r.emit("dropout", [layer_in], {"p": float(dropout)})
    stacked = [r.emit("concat", [_reshape_to(r, v, [1] + list(r.shape(v))) for v in vs], {"axis": 0})
               for vs in ([h_n, c_n] if kind == "lstm" else [h_n])]
    return [layer_in] + stacked


@handles("aten.lstm.input")
def _lstm(r, node, x, hx, params, has_biases, num_layers, dropout, train, bidirectional, batch_first):
    return _rnn(r, node, "lstm", x, hx, params, has_biases, num_layers, dropout, train, bidirectional, batch_first)


@handles("aten.gru.input")
def _gru(r, node, x, hx, params, has_biases, num_layers, dropout, train, bidirectional, batch_first):
    return _rnn(r, node, "gru", x, hx, params, has_biases, num_layers, dropout, train, bidirectional, batch_first)


# ---- along one axis by a constant matrix: cumsum, flip; rows by integer indices ----------------------
def _along(r, x, dim, matrix):
    """x's axis `dim` times a constant (n, n) matrix: the axis moved last, multiplied, moved back."""
    nd = len(r.shape(x))
    dim = int(dim) % nd
    perm = list(range(nd))
    perm[dim], perm[-1] = perm[-1], perm[dim]
    y = r.emit("matmul", [_permute_to(r, x, list(range(nd)), perm), r.const(matrix)])
    return _permute_to(r, y, list(range(nd)), perm)


@handles("aten.cumsum.default")
def _cumsum(r, node, x, dim, dtype=None):
    n = r.shape(x)[int(dim)]
    return _along(r, x, dim, np.triu(np.ones((n, n))))  # y_j = sum over i <= j of x_i


@handles("aten.flip.default")
def _flip(r, node, x, dims):
    for d in dims:
        n = r.shape(x)[int(d)]
        if n == 1:
            continue
        x = _along(r, x, d, np.eye(n)[::-1].copy())
    return x


@handles("aten.index.Tensor")
def _index(r, node, x, indices):
    """x[idx] with one integer index tensor on the first axis: rows gathered, as an embedding."""
    indices = [r.as_labels(i, r.shape(x)[0]) if k == 0 and i in r.whole else i for k, i in enumerate(indices)]
    if len(indices) != 1 or indices[0] is None or not _is_tensor(r, indices[0]) \
            or not r.info[indices[0]][1].startswith("int") or len(r.shape(x)) < 2 or r.info[x][1].startswith("int"):
        r.unsupported("indexing other than rows of a float tensor by one integer tensor (x[idx])")
    idx, shape = indices[0], r.shape(x)
    src = r.source(idx)
    r.high[src] = min(r.high.get(src, 1 << 62), shape[0])
    rows = _reshape_to(r, x, [shape[0], size_of(shape[1:])])
    return _reshape_to(r, r.emit("embedding", [rows, idx]), list(_out_shape(node)))


# ---- topk, sort, argmax: indices the model computes; one_hot; scatter ------------------------------
def _topk_along(r, x, k, dim, largest):
    """(values, indices) of the k largest (smallest) along dim, in order: topk_indices along the
    last axis (dim moved there), the values gathered by them (their gradient is gather's: to the
    picked elements, as torch.topk's), both moved back."""
    nd = len(r.shape(x))
    dim = int(dim) % nd
    perm = [d for d in range(nd) if d != dim] + [dim]
    xt = _permute_to(r, x, list(range(nd)), perm)
    idx = r.emit("topk_indices", [xt], {"k": int(k), "largest": bool(largest)})
    vals = r.emit("gather", [xt, idx])
    if dim != nd - 1:
        inv = [perm.index(d) for d in range(nd)]
        vals = r.emit("transpose", [vals], {"axes": inv})
        idx = r.int_rearranged(idx, tuple(r.shape(idx)[p] for p in inv), inv)
    r.distinct.add((idx, dim))
    return vals, idx


@handles("aten.topk.default")
def _topk(r, node, x, k, dim=-1, largest=True, sorted=True):
    return list(_topk_along(r, x, k, dim, largest))


@handles("aten.sort.default")
def _sort(r, node, x, dim=-1, descending=False):
    return list(_topk_along(r, x, r.shape(x)[int(dim)], dim, bool(descending)))


@handles("aten.sort.stable")
def _sort_stable(r, node, x, stable=None, dim=-1, descending=False):
    return _sort(r, node, x, dim, descending)


@handles("aten.argmax.default", "aten.argmin.default")
def _argmax(r, node, x, dim=None, keepdim=False):
    return _arg_extreme(r, node, x, dim, keepdim, "argmax" in str(node.target))


@handles("aten.one_hot.default")
def _one_hot(r, node, idx, num_classes=-1):
    """F.one_hot: each index compared with 0..C-1, as floats (1 at the index): a mask like any
    other, computed in the forward."""
    classes = _out_shape(node)[-1]
    f = r.as_float(idx) if r.info[idx][1].startswith("int") else idx
    f = r.emit("reshape", [f], {"shape": list(r.shape(f)) + [1]})
    return _compare("eq")(r, node, f, r.const(np.arange(classes, dtype=float)))


def _scatter_last(r, base, dim, index, src):
    """base + src added at index along dim, by scatter_add along the last axis (dim moved there)."""
    nd = len(r.shape(base))
    dim = int(dim) % nd
    if len(r.shape(index)) != nd or r.shape(index) != r.shape(src) or \
            any(r.shape(index)[d] != r.shape(base)[d] for d in range(nd) if d != dim):
        r.unsupported("scatter with an index of other than src's shape, or shorter than the tensor off dim")
    index = r.as_labels(index, r.shape(base)[dim]) if index in r.whole else index
    if not r.info[index][1].startswith("int"):
        r.unsupported("scatter by float indices")
    perm = [d for d in range(nd) if d != dim] + [dim]
    inv = [perm.index(d) for d in range(nd)]
    idx = index if dim == nd - 1 else r.int_rearranged(index, tuple(r.shape(index)[p] for p in perm), perm,
                                                         tag=f"last{dim}_")
    src_ = r.source(idx)
    r.high[src_] = min(r.high.get(src_, 1 << 62), r.shape(base)[dim])
    out = r.emit("scatter_add", [_permute_to(r, base, list(range(nd)), perm), idx,
                                 _permute_to(r, src, list(range(nd)), perm)])
    return _permute_to(r, out, list(range(nd)), inv)


@handles("aten.scatter_add.default")
def _scatter_add(r, node, base, dim, index, src):
    return _scatter_last(r, base, dim, index, src)


@handles("aten.scatter.src", "aten.scatter.value")
def _scatter_rule(r, node, base, dim, index, src):
    """x.scatter(dim, index, src): src written at index. By indices that repeat nowhere along dim
    (topk's), a write is an add into zeros: where the written positions, the added values, else
    the base (a base of zeros is the sum alone)."""
    dim = int(dim) % len(r.shape(base))
    if (index, dim) not in r.distinct:
        r.unsupported("scatter (overwrite) by indices that may repeat (torch keeps one of the values; use "
                      "scatter_add, or indices from topk)")
    if not _is_tensor(r, src):
        src = r.const(np.full(r.shape(index), float(src)))
    zeros = r.value(base) is not None and not r.value(base).any()
    added = _scatter_last(r, base if zeros else r.const(np.zeros(r.shape(base))), dim, index, src)
    if zeros:
        return added
    hit = _scatter_last(r, r.const(np.zeros(r.shape(base))), dim, index, r.const(np.ones(r.shape(index))))
    return r.emit("where", [hit, added, base])


@handles("aten.index_add.default")
def _index_add(r, node, base, dim, index, src, alpha=1):
    """x.index_add(dim, index, src): src's slices added at index along dim (a graph network's
    messages summed at their nodes): scatter_add with the index repeated across src's other axes."""
    nd = len(r.shape(base))
    dim = int(dim) % nd
    if len(r.shape(index)) != 1:
        r.unsupported("index_add with an index of other than one axis")
    shape = r.shape(src)
    pos = [1] * nd
    pos[dim] = shape[dim]
    index = r.int_broadcast(r.int_rearranged(index, tuple(pos)), shape)
    if alpha != 1:
        src = r.emit("scale", [src], {"factor": float(alpha)})
    return _scatter_last(r, base, dim, index, src)


@handles("aten.index_select.default")
def _index_select(r, node, x, dim, index):
    """x.index_select(dim, index): gather with the index repeated across x's other axes."""
    nd = len(r.shape(x))
    dim = int(dim) % nd
    shape = tuple(r.shape(index)[0] if d == dim else n for d, n in enumerate(r.shape(x)))
    pos = [1] * nd
    pos[dim] = shape[dim]
    index = r.int_broadcast(r.int_rearranged(index, tuple(pos)), shape)
    return _gather_along(r, x, index, dim)


# ---- up-sampling and transposed convolution --------------------------------------------------------
def _interp_matrix(n_in, n_out, mode, align_corners, scale):
    """The (n_out, n_in) matrix of torch's 1-D interpolation along one axis: nearest, or linear
    (bilinear is one per axis). `scale` is torch's input/output ratio."""
    a = np.zeros((n_out, n_in))
    dst = np.arange(n_out)
    if mode == "nearest":
        a[dst, np.minimum(np.floor(dst * scale).astype(int), n_in - 1)] = 1.0
        return a
    if align_corners:
        src = dst * ((n_in - 1) / (n_out - 1) if n_out > 1 else 0.0)
    else:
        src = np.maximum((dst + 0.5) * scale - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(int), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    lam = src - i0
    np.add.at(a, (dst, i0), 1.0 - lam)
    np.add.at(a, (dst, i1), lam)
    return a


def _upsample(r, node, x, mode, align_corners, scales):
    n, c, h, w = r.shape(x)
    oh, ow = _out_shape(node)[2:]
    if scales and len(scales) == 2 and all(s is not None for s in scales):
        sh, sw = 1.0 / float(scales[0]), 1.0 / float(scales[1])
    else:
        sh, sw = h / oh, w / ow
    if mode == "nearest" and oh == ow and h == w and oh % h == 0 and sh == sw == h / oh:
        return r.emit("upsample2d", [x], {"scale": oh // h})
    if mode != "nearest" and align_corners:
        sh = sw = None
    ah = _interp_matrix(h, oh, mode, align_corners, sh)
    aw = _interp_matrix(w, ow, mode, align_corners, sw)
    # y = A_h x A_w^T over the last two axes: two matrix products with constant matrices
    return r.emit("matmul", [r.emit("matmul", [r.const(ah), x]), r.const(np.ascontiguousarray(aw.T))])


@handles("aten.upsample_nearest2d.vec")
def _up_nearest(r, node, x, output_size=None, scales=None):
    return _upsample(r, node, x, "nearest", False, scales)


@handles("aten.upsample_bilinear2d.vec")
def _up_bilinear(r, node, x, output_size=None, align_corners=False, scales=None):
    return _upsample(r, node, x, "bilinear", align_corners, scales)


def _stuff(r, x, axis, s):
    """x with s - 1 zeros after each entry along `axis` (the last entry's trailing zeros kept):
    a transposed convolution's input as the equivalent ordinary convolution reads it."""
    if s == 1:
        return x
    shape = list(r.shape(x))
    col = r.emit("reshape", [x], {"shape": shape[:axis + 1] + [1] + shape[axis + 1:]})
    zeros = r.const(np.zeros(shape[:axis + 1] + [s - 1] + shape[axis + 1:]))
    both = r.emit("concat", [col, zeros], {"axis": axis + 1})
    return r.emit("reshape", [both], {"shape": shape[:axis] + [shape[axis] * s] + shape[axis + 1:]})


def _pad_or_crop(r, x, axis, left, right):
    """Zeros joined on either side of an axis where the count is positive; entries cut where negative."""
    n = r.shape(x)[axis]
    x = _slice(r, x, axis, max(0, -left), n - max(0, -right))
    return _pad_axis(r, x, axis, max(0, left), max(0, right))


def _phase_plan(n, k, s, p, o):
    """Along one axis of a transposed convolution (input n, kernel k, stride s, padding p, output
    o; no dilation), the outputs o' = j, j + s, ... (phase j < s) read the taps k' = r, r + s, ...
    with r = (j + p) mod s, each an ordinary convolution of the input: per phase, (taps, first tap
    r, outputs, left and right padding of the input, negative to cut)."""
    out = []
    for j in range(s):
        r_ = (j + p) % s
        taps, count = len(range(r_, k, s)), len(range(j, o, s))
        q0 = (j + p - r_) // s  # the first output's position in the phase's own sequence
        out.append((taps, r_, count, taps - 1 - q0, q0 + count - n))
    return out


def _conv_transpose_phases(r, x, w, b, s, p, o, groups):
    """A transposed convolution without dilation as s_h s_w ordinary convolutions, one per output
    phase (sub-pixel convolution): phase (j, i) holds the outputs y[j::s_h, i::s_w], a stride-1
    convolution of the input (padded or cut) by the kernel's taps that land there, flipped, with
    in/out channels swapped per group. The phases are interleaved (stacked on new axes, reshaped)
    and cut to the output's size. As many FLOPs as the direct kernel, and no zeros in the input."""
    n, cin, h, wd = r.shape(x)
    _, cout_g, kh, kw = r.shape(w)
    g, cin_g = int(groups), cin // int(groups)
    wf = _flip(r, None, w, [2, 3])  # the flipped kernel: a phase's taps, flipped, are a strided slice of it
    wf = r.emit("reshape", [wf], {"shape": [g, cin_g, cout_g, kh, kw]})
    wf = r.emit("transpose", [wf], {"axes": [0, 2, 1, 3, 4]})
    wf = r.emit("reshape", [wf], {"shape": [g * cout_g, cin_g, kh, kw]})
    rows, cols = _phase_plan(h, kh, s[0], p[0], o[0]), _phase_plan(wd, kw, s[1], p[1], o[1])
    mh, mw = -(-o[0] // s[0]), -(-o[1] // s[1])
    out_rows = []
    for th, rh, nh, lh, rrh in rows:
        phases = []
        for tw, rw, nw, lw, rrw in cols:
            if th == 0 or tw == 0 or nh == 0 or nw == 0:  # no tap lands here: zeros (the bias is added after)
                phases.append(r.const(np.zeros((n, g * cout_g, mh, mw, 1))))
                continue
            # taps rh, rh + s, ... flipped: from kh - 1 - rh - s (th - 1), every s-th of the flipped kernel
            sub = _slice(r, wf, 2, kh - 1 - rh - s[0] * (th - 1), kh - rh, s[0])
            sub = _slice(r, sub, 3, kw - 1 - rw - s[1] * (tw - 1), kw - rw, s[1])
            xc = _slice(r, _slice(r, x, 2, max(0, -lh), h - max(0, -rrh)), 3, max(0, -lw), wd - max(0, -rrw))
            y = _conv(r, xc, sub, None, 1, [(max(0, lh), max(0, rrh)), (max(0, lw), max(0, rrw))], g)
            y = _pad_axis(r, _pad_axis(r, y, 2, 0, mh - nh), 3, 0, mw - nw)
            phases.append(r.emit("reshape", [y], {"shape": [n, g * cout_g, mh, mw, 1]}))
        row = r.emit("concat", phases, {"axis": 4}) if len(phases) > 1 else phases[0]
        out_rows.append(r.emit("reshape", [row], {"shape": [n, g * cout_g, mh, 1, mw * s[1]]}))
    y = r.emit("concat", out_rows, {"axis": 3}) if len(out_rows) > 1 else out_rows[0]
    y = r.emit("reshape", [y], {"shape": [n, g * cout_g, mh * s[0], mw * s[1]]})
    y = _slice(r, _slice(r, y, 2, 0, o[0]), 3, 0, o[1])
    return _affine(r, y, None, b, 4)


def _conv_transpose_general(r, x, w, b, s, p, op, d, groups):
    """A transposed convolution of (N, Cin, H, W) by w (Cin, Cout/groups, kh, kw), any stride,
    padding, output padding, dilation and groups, as the ordinary convolution it is the gradient
    of: the input with s - 1 zeros between entries, padded by d (k - 1) - p on the left and
    d (k - 1) - p + output_padding on the right (cut where negative), convolved at stride 1 with
    the kernel flipped in both spatial axes and its in/out channels swapped per group. The zeros
    add nothing, so the sums are torch's up to round-off; the cost is the zeros' (s^2 more FLOPs
    than a direct kernel)."""
    cin, cout_g, kh, kw = r.shape(w)
    w, dil = _dilations(r, w, d)
    for axis, k in ((2, kh), (3, kw)):
        a = axis - 2
        x = _stuff(r, x, axis, s[a])
        span = d[a] * (k - 1)
        # the stuffed axis has s - 1 trailing zeros beyond the (H - 1) s + 1 the convolution reads
        x = _pad_or_crop(r, x, axis, span - p[a], span - p[a] + op[a] - (s[a] - 1))
    wf = _flip(r, None, w, [2, 3])
    kh, kw = r.shape(w)[2:]
    g, cin_g = int(groups), cin // int(groups)
    wf = r.emit("reshape", [wf], {"shape": [g, cin_g, cout_g, kh, kw]})
    wf = r.emit("transpose", [wf], {"axes": [0, 2, 1, 3, 4]})
    wf = r.emit("reshape", [wf], {"shape": [g * cout_g, cin_g, kh, kw]})
    return _conv(r, x, wf, b, 1, [(0, 0), (0, 0)], g, dil)


@handles("aten.conv_transpose2d.input")
def _conv_transpose2d(r, node, x, w, b=None, stride=(1, 1), padding=(0, 0), output_padding=(0, 0), groups=1,
                      dilation=(1, 1)):
    """With kernel == stride and no padding (UNet's up-convolution) each input pixel writes its own
    k x k block: y[n, o, i*k + a, j*k + b] = sum_c x[n, c, i, j] w[c, o, a, b], one matrix product.
    Any other geometry (DCGAN's kernel 4, stride 2, padding 1) is the equivalent convolution."""
    cin, cout, kh, kw = r.shape(w)
    s, p, op, d = (_ints(v, 2) for v in (stride, padding, output_padding, dilation))
    if len(r.shape(x)) != 4:
        r.unsupported("transposed convolution of other than (N, C, H, W)")
    if min(s) < 1 or min(d) < 1 or min(p) < 0 or min(op) < 0:
        r.unsupported(f"transposed convolution with stride {tuple(s)}, padding {tuple(p)}, output padding "
                      f"{tuple(op)} and dilation {tuple(d)}")
    if [kh, kw] != s or kh != kw or p != [0, 0] or op != [0, 0] or groups != 1 or d != [1, 1]:
        if d == [1, 1]:
            y = _conv_transpose_phases(r, x, w, b, s, p, list(_out_shape(node)[2:]), groups)
        else:
            y = _conv_transpose_general(r, x, w, b, s, p, op, d, groups)
        return y if r.shape(y) == _out_shape(node) else r.unsupported(
            f"transposed convolution made {r.shape(y)}, torch {_out_shape(node)}")
    n, _, h, wd = r.shape(x)
    k = kh
    xt = r.emit("transpose", [x], {"axes": [0, 2, 3, 1]})  # (N, H, W, Cin)
    y = r.emit("matmul", [xt, r.emit("reshape", [w], {"shape": [cin, cout * k * k]})])
    y = r.emit("reshape", [y], {"shape": [n, h, wd, cout, k, k]})
    y = r.emit("transpose", [y], {"axes": [0, 3, 1, 4, 2, 5]})  # (N, Cout, H, k, W, k)
    y = r.emit("reshape", [y], {"shape": [n, cout, h * k, wd * k]})
    return _affine(r, y, None, b, 4)


@handles("aten.conv_transpose1d.default")
def _conv_transpose1d(r, node, x, w, b=None, stride=(1,), padding=(0,), output_padding=(0,), groups=1,
                      dilation=(1,)):
    """(N, C, L) as an image of height 1, through the 2-D rule."""
    if len(r.shape(x)) != 3:
        r.unsupported("transposed convolution of other than (N, C, L)")
    n, c, length = r.shape(x)
    x4 = r.emit("reshape", [x], {"shape": [n, c, 1, length]})
    w4 = r.emit("reshape", [w], {"shape": list(r.shape(w)[:2]) + [1, r.shape(w)[2]]})
    s, p, op, d = (_ints(v, 1)[0] for v in (stride, padding, output_padding, dilation))
    if min(s, d) < 1 or min(p, op) < 0:
        r.unsupported(f"transposed convolution with stride {s}, padding {p}, output padding {op} and dilation {d}")
    if d == 1:
        y = _conv_transpose_phases(r, x4, w4, b, [1, s], [0, p], [1, _out_shape(node)[2]], groups)
    else:
        y = _conv_transpose_general(r, x4, w4, b, [1, s], [0, p], [0, op], [1, d], groups)
    return r.emit("reshape", [y], {"shape": list(_out_shape(node))})


for _name in ("aten._assert_tensor_metadata.default", "aten._assert_scalar.default"):
    HANDLERS[_name] = lambda r, node, *a, **k: None


# ---- writing ---------------------------------------------------------------------------------------
def _regions(where, module):
    """The blocks a PyTorch plan may wrap in a checkpoint: the root's children, and the items of a
    ModuleList/Sequential child (`layers.0`, `layers.1`, ...). Module path -> region path."""
    import torch
    containers = (torch.nn.ModuleList, torch.nn.Sequential, torch.nn.ModuleDict)
    out = {}
    # A module used in several places (the same layer twice) is one object under several names: it
    # cannot be wrapped for one use and not another, so its ops belong to no region of their own.
    seen, shared = {}, set()
    for name, m in module.named_modules(remove_duplicate=False):
        if id(m) in seen:
            shared.update({name, seen[id(m)]})
        seen.setdefault(id(m), name)
    for path in {w["module"] for w in where.values()}:
        if not path:
            out[path] = ""
            continue
        parts = path.split(".")
        region = parts[0]
        m = getattr(module, parts[0], None)
        if isinstance(module, containers) and not isinstance(m, containers):
            region = parts[0]
        elif isinstance(m, containers) and len(parts) > 1:
            region = ".".join(parts[:2])
        out[path] = "" if region in shared else region
    return out


def _fill_inputs(rec, arg_names, args, seed):
    """Example values for the user inputs (saved in the npz): normal floats; integers below the
    rows of the embedding / classes of the loss they feed."""
    rng = np.random.default_rng(seed)
    for name in arg_names:
        info = rec.inputs[name]
        if info["dtype"].startswith("int"):
            high = rec.high.get(name, 2)
            rec.arrays[name] = rng.integers(0, high, info["shape"]).astype(info["dtype"])
            info["high"] = int(high)
        else:
            rec.arrays[name] = rng.standard_normal(info["shape"]).astype(rec.dtype)


def _flow(d):
    return json.dumps(d, separators=(", ", ": "))


def config_text(rec, name, weights_file):
    lines = [f"# imported from PyTorch by `ckpt import`; weights and example inputs in {weights_file}",
             f"name: {json.dumps(name)}", f"dtype: {rec.dtype}", "seed: 0", f"weights: {json.dumps(weights_file)}",
             "inputs:"]
    for k, v in rec.inputs.items():
        leaf = {"shape": v["shape"], "dtype": v["dtype"], "grad": False}
        if "high" in v:
            leaf.update(init="randint", high=v["high"])
        lines.append(f"  {k}: {_flow(leaf)}")
    lines.append("params:" if rec.params else "params: {}")
    for k, v in rec.params.items():
        leaf = {"shape": v["shape"], "grad": v["grad"], "init": "zeros"}
        if k not in rec.arrays:  # meta weights: an init of the usual kind (the plan needs only shapes)
            leaf["init"] = "xavier" if len(v["shape"]) >= 2 else ("ones" if k.endswith("weight") else "zeros")
        lines.append(f"  {json.dumps(k)}: {_flow(leaf)}")
    lines.append("nodes:")
    for n in rec.nodes:
        lines.append(f"  - {_flow(n)}")
    lines.append(f"output: {rec.output}")
    return "\n".join(lines) + "\n"


def import_model(target, inputs, output, seed=0):
    """Trace `MODEL.py:FACTORY` and write OUTPUT (.yaml: a ckpt config, its .npz and .torch.json;
    .json: a cost graph). Returns a summary dict."""
    model = load_factory(target)
    shapes = parse_inputs(inputs)
    arg_names, args = example_inputs(model, shapes)
    ep = export(model, args)
    if str(output).lower().endswith(".json"):
        from .torch_costgraph import write_cost_graph
        return write_cost_graph(ep, model, output)
    dtype = model_dtype(model)
    rec = _Recorder(functional(ep), model, arg_names, dtype).run()
    for n in arg_names:
        if n not in rec.inputs:
            raise ConfigError(f"input {n} is not used by the traced forward")
    _fill_inputs(rec, arg_names, args, seed)
    stem = os.path.splitext(output)[0]
    weights_file = os.path.basename(stem) + ".npz"
    name = re.sub(r"\W", "_", os.path.splitext(os.path.basename(output))[0]) or "model"
    text = config_text(rec, name, weights_file)
    regions = _regions(rec.where, model)
    meta = {"source": str(target), "inputs": {k: {"shape": list(v[0]), "dtype": v[1] or dtype,
                                                  **({"high": rec.inputs[k]["high"]} if "high" in rec.inputs[k] else {})}
                                              for k, v in shapes.items()},
            "arg_order": arg_names, "dtype": dtype, "transposed": rec.transposed,
            "nodes": {k: {**w, "region": regions.get(w["module"], "")} for k, w in rec.where.items()},
            "regions": sorted({r_ for r_ in regions.values() if r_}, key=_natural),
            # regions inside an nn.Sequential may be checkpointed as one segment of consecutive items
            "sequential": sorted(k for k, m in model.named_modules() if k and isinstance(m, torch_or_error().nn.Sequential))}
    # What PyTorch holds for backward, op by op: one plain forward on the example inputs (the
    # planner for `--emit torch` reads it; nothing else in the import allocates activations).
    meta["profile"] = _fake_profile(model, [rec.arrays[n] for n in arg_names], meta["regions"])
    from ..jsonio import _json_writer, write_atomic_group
    # all three or none: a config without its weights, or beside another import's, is worse than
    # the old set or no set; the config, which names the others, goes into place last
    write_atomic_group([(stem + ".npz", lambda f: np.savez(f, **rec.arrays), True),
                        (stem + ".torch.json", _json_writer(meta), False),
                        (output, lambda f: f.write(text), False)])
    return {"config": output, "weights": stem + ".npz", "torch_meta": stem + ".torch.json", "nodes": len(rec.nodes),
            "params": len(rec.params), "inputs": list(rec.inputs), "transposed": len(rec.transposed),
            "regions": meta["regions"]}


def _fake_profile(model, arrays, regions):
    """The profile of what PyTorch holds for backward, run on fake tensors (shapes, dtypes and
    storages without data: nothing the size of an activation is allocated). The module's
    parameters are replaced by fake ones, so the module is spent afterwards."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode

    from ..backends.torch_apply import profile
    fm = FakeTensorMode(allow_non_fake_inputs=False)
    fakes = {}  # one fake per tensor: a parameter shared between modules (tied weights) stays shared
    for name, p in list(model.named_parameters(remove_duplicate=False)):
        owner, _, leaf = name.rpartition(".")
        if id(p) not in fakes:
            fakes[id(p)] = torch.nn.Parameter(fm.from_tensor(p.detach()), requires_grad=p.requires_grad)
        setattr(model.get_submodule(owner) if owner else model, leaf, fakes[id(p)])
    for name, b in list(model.named_buffers(remove_duplicate=False)):
        owner, _, leaf = name.rpartition(".")
        if id(b) not in fakes:
            fakes[id(b)] = fm.from_tensor(b)
        (model.get_submodule(owner) if owner else model).register_buffer(leaf, fakes[id(b)])
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    values = [fm.from_tensor(torch.from_numpy(a).to(device)) for a in arrays]
    forward = model.forward

    def loss_only(*args, **kwargs):  # a forward returning (loss, logits): the profile steps the loss
        out = forward(*args, **kwargs)
        if isinstance(out, torch.Tensor):
            return out
        return next(t for t in torch.utils._pytree.tree_leaves(out)
                    if isinstance(t, torch.Tensor) and t.dim() == 0 and t.is_floating_point())
    model.forward = loss_only
    with fm:
        return profile(model, values, regions)


def _natural(name):
    return [int(p) if p.isdigit() else p for p in name.split(".")]
