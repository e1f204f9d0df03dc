"""ModelSpec → networkx.DiGraph with shapes, dtypes, bytes, FLOPs and saved residuals per node.

Node attributes:
  leaves (inputs and parameters): kind ("input" | "param"), shape, dtype, bytes, grad (bool)
  op nodes: kind "op", op, inputs (ordered names; an edge u -> v for each distinct input), attrs,
            shape, dtype, bytes, flops, needs (per input: residual names its VJP reads), grad (bool:
            on a path from a leaf that takes a gradient, so its gradient is computed)
Graph attributes: name, output, seed, dtype, order (op nodes in topological order), file.
"""

import zlib

import networkx as nx
import numpy as np

from ..errors import ConfigError, ShapeError
from ..ops import OUT, REGISTRY, size
from ..sizes import MAX_BYTES, MAX_NODES, joint_nodes_error

ITEMSIZE = {"bool": 1, "float16": 2, "bfloat16": 2, "float32": 4, "float64": 8, "int32": 4, "int64": 8}


def nbytes(shape, dtype):
    return size(shape) * ITEMSIZE[dtype]


def _bytes(shape, dtype, file, line, name):
    n = nbytes(shape, dtype)
    if n > MAX_BYTES:
        raise ConfigError(f"shape {tuple(shape)} of {dtype} is {n} bytes, over the {MAX_BYTES} (2**62) ckpt handles",
                          file=file, line=line, key=name)
    return n


def node_seed(seed, name):
    """A per-node seed that is the same in every process (Python's hash() is salted)."""
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % 2**63


def build_graph(spec):
    g = nx.DiGraph(name=spec.name, output=spec.output, seed=spec.seed, dtype=spec.dtype, file=spec.file)
    for leaf in spec.leaves.values():
        g.add_node(leaf.name, kind=leaf.kind, shape=leaf.shape, dtype=leaf.dtype,
                   bytes=_bytes(leaf.shape, leaf.dtype, spec.file, leaf.line, leaf.name), grad=leaf.grad,
                   line=leaf.line, spec=leaf)
    position = {}
    for i, n in enumerate(spec.nodes):
        position[n.name] = i
        g.add_node(n.name, kind="op", op=n.op, inputs=list(n.inputs), attrs=dict(n.attrs), line=n.line)
        if n.op == "dropout":
            g.nodes[n.name]["attrs"]["_seed"] = node_seed(spec.seed, n.name)
    for n in spec.nodes:
        for u in n.inputs:
            g.add_edge(u, n.name)
    if not nx.is_directed_acyclic_graph(g):  # linear time; find_cycle only to name the cycle
        cycle = nx.find_cycle(g)
        names = " -> ".join([u for u, _ in cycle] + [cycle[0][0]])
        first = min((u for u, _ in cycle), key=lambda u: position.get(u, 0))
        raise ConfigError(f"cycle: {names}", file=spec.file, line=g.nodes[first].get("line"), key=first)
    order = [v for v in nx.lexicographical_topological_sort(g, key=lambda v: position.get(v, -1))
             if g.nodes[v]["kind"] == "op"]
    for v in order:
        _infer(g, v, spec.file)
    order = _residual_nodes(g, order, spec.file)
    out = g.nodes[spec.output]
    if out["shape"] != ():
        raise ConfigError(f"output {spec.output!r} must be a scalar to differentiate, but has shape {out['shape']}",
                          file=spec.file, line=out.get("line"), key="output")
    _mark_grad(g, order)
    g.graph["order"] = order
    _check_totals(g, spec)
    return g


def _check_totals(g, spec):
    """Refuse a model whose bytes in all, or whose joint forward+gradient graph, is past what ckpt
    handles (sizes.MAX_BYTES, sizes.MAX_NODES), before anything plans or allocates for it."""
    total = sum(d["bytes"] for _, d in g.nodes(data=True)) * 2  # every value, and a gradient of each at most
    if total > MAX_BYTES:
        raise ConfigError(f"the model's values and gradients total {total} bytes, over the {MAX_BYTES} "
                          "(2**62) ckpt handles", file=spec.file)
    # an op's temporaries (an im2col matrix can be far larger than its operands) count too: a
    # peak is values plus the workspace of the step, and must stay exact in a 64-bit integer
    ws, node = max(((_largest_workspace(g, v), v) for v in g.graph["order"]), default=(0, None))
    if total + ws > MAX_BYTES:
        raise ConfigError(f"the workspace of {g.nodes[node]['op']} node {node!r} is {ws} bytes; with the model's "
                          f"values and gradients that is over the {MAX_BYTES} (2**62) ckpt handles", file=spec.file,
                          line=g.nodes[node].get("line"), key=node)
    joint = joint_size(g)
    if joint > MAX_NODES:
        raise joint_nodes_error(joint, file=spec.file, limit=MAX_NODES)


def _largest_workspace(g, v):
    """The most bytes op node v's rules (forward, each VJP) hold beyond their results (Op.workspace)."""
    d = g.nodes[v]
    op = REGISTRY[d["op"]]
    if op.workspace is None:
        return 0
    shapes = [g.nodes[u]["shape"] for u in d["inputs"]]
    return max(int(op.workspace(which, shapes, d["shape"], d["attrs"], ITEMSIZE[d["dtype"]]))
               for which in ["forward", *range(len(shapes))])


def joint_size(g):
    """Nodes of the joint graph that `joint.lower` makes: each op feeding the output, and a gradient
    node for each value that takes a gradient."""
    out = g.graph["output"]
    fwd = len(nx.ancestors(g, out) & set(g.graph["order"])) + 1
    return fwd + sum(1 for _, d in g.nodes(data=True) if d["grad"])


def _infer(g, v, file):
    d = g.nodes[v]
    op = REGISTRY[d["op"]]
    ins = [g.nodes[u] for u in d["inputs"]]
    for i, u in enumerate(ins):
        is_int = u["dtype"].startswith("int")
        if is_int != (i in op.int_inputs):
            want = "integer labels" if i in op.int_inputs else "floating-point values"
            raise ConfigError(f"{d['op']} input {i + 1} ({d['inputs'][i]!r}) must hold {want}, not {u['dtype']}",
                              file=file, line=d.get("line"), key=v)
    if op.labels_below is not None:  # randint labels drawn past the classes (or rows) they index
        bound = op.labels_below([u["shape"] for u in ins])
        for i in op.int_inputs:
            spec = ins[i].get("spec")
            if spec is not None and spec.init == "randint" and spec.high > bound:
                raise ConfigError(f"{d['op']} reads labels below {bound}, but {d['inputs'][i]!r} draws them "
                                  f"below high {spec.high}", file=file, line=spec.line, key=d["inputs"][i])
    try:
        d["shape"] = tuple(int(s) for s in op.shape([u["shape"] for u in ins], d["attrs"]))
    except ShapeError as e:
        raise ConfigError(f"shape mismatch: {e.message}", file=file, line=d.get("line"), key=v) from None
    except (TypeError, ValueError, IndexError, KeyError, ZeroDivisionError, OverflowError) as e:
        # the config reader checks each attr's type; this catches a combination no rule foresaw
        raise ConfigError(f"{d['op']} cannot take these inputs and attrs ({e.__class__.__name__}: {e})",
                          file=file, line=d.get("line"), key=v) from None
    d["dtype"] = op.dtype or next(u["dtype"] for u in ins if not u["dtype"].startswith("int"))
    d["bytes"] = _bytes(d["shape"], d["dtype"], file, d.get("line"), v)
    d["flops"] = int(op.flops([u["shape"] for u in ins], d["shape"], d["attrs"]))
    d["needs"] = [tuple(r for r in op.needs(i) if r == OUT or r < len(ins)) for i in range(len(ins))]


def _residual_nodes(g, order, file):
    """Each op that declares a residual (`Op.residual`) gets the node computing it as an extra last
    input, named `NODE:OP`, placed in the order just before its reader: the planner then sees it as
    a value it may keep or compute again, like any other. Returns the new order."""
    out = []
    for v in order:
        d = g.nodes[v]
        op = REGISTRY[d["op"]]
        if op.residual is not None:
            shapes = [g.nodes[u]["shape"] for u in d["inputs"]]
            rop, positions, attrs = op.residual(shapes, d["attrs"])
            r = f"{v}:{rop}"
            ins = [d["inputs"][k] for k in positions]
            g.add_node(r, kind="op", op=rop, inputs=ins, attrs=dict(REGISTRY[rop].attrs, **attrs), line=d.get("line"))
            for u in ins:
                g.add_edge(u, r)
            g.add_edge(r, v)
            _infer(g, r, file)
            d["inputs"] = d["inputs"] + [r]
            _infer(g, v, file)
            out.append(r)
        out.append(v)
    return out


def retarget(g, of=None, wrt=None):
    """A copy of the graph whose output is `of` (any node, of any shape) and whose gradients are
    taken with respect to the leaves `wrt` (default: those the config marks)."""
    h = g.copy()
    if of is not None:
        if of not in h or h.nodes[of]["kind"] != "op":
            near = [v for v in g.graph["order"] if v.endswith(str(of))][:1]
            raise ConfigError(f"--of {of!r} is not an op node" + (f" (did you mean {near[0]!r}?)" if near else ""),
                              file=g.graph.get("file"))
        if REGISTRY[h.nodes[of]["op"]].internal:  # a saved residual the graph adds: it takes no gradient
            reader = of.rpartition(":")[0]
            raise ConfigError(f"--of {of!r} is a residual ckpt saves for {reader!r}, not a node of the model "
                              f"(did you mean {reader!r}?)", file=g.graph.get("file"))
        h.graph["output"] = of
    for v, d in h.nodes(data=True):
        if d["kind"] != "op":
            d["grad"] = d["spec"].grad if wrt is None else v in wrt
    if wrt is not None:
        for v in wrt:
            if v not in h or h.nodes[v]["kind"] == "op":
                raise ConfigError(f"--wrt {v!r} is not an input or parameter", file=g.graph.get("file"))
            if h.nodes[v]["dtype"].startswith("int"):
                raise ConfigError(f"--wrt {v!r} holds integers and has no derivative", file=g.graph.get("file"))
    _mark_grad(h, h.graph["order"])
    return h


def _mark_grad(g, order):
    """A node takes a gradient when it depends on a leaf that does and the output's gradient reaches
    it: through differentiable ops only (stop_gradient passes none back, and what only feeds the
    output through it, a DQN's target network, takes none, as in PyTorch, whose .grad stays None)."""
    reach = {g.graph["output"]}
    for v in reversed(order):
        if v in reach and REGISTRY[g.nodes[v]["op"]].differentiable:
            reach.update(g.nodes[v]["inputs"])
    for v in g.nodes:
        if g.nodes[v]["kind"] != "op":
            g.nodes[v]["grad"] = g.nodes[v]["grad"] and v in reach
    for v in order:
        d = g.nodes[v]
        d["grad"] = v in reach and REGISTRY[d["op"]].differentiable and any(g.nodes[u]["grad"] for u in d["inputs"])


def residuals(g, w, i):
    """Names of the values that the VJP of op node w for its input i reads."""
    d = g.nodes[w]
    return [w if r == OUT else d["inputs"][r] for r in d["needs"][i]]


def leaf_values(g, dtype_override=None):
    """Host (numpy) arrays for every input and parameter, reproducible from the config's seed."""
    if g.graph.get("dtype") == "bfloat16":  # numpy has no bfloat16: every command that makes arrays comes here
        raise ConfigError("this command computes, and numpy has no bfloat16: it is for planning only "
                          "(use --dtype float32)", file=g.graph.get("file"))
    seed = g.graph["seed"]
    values = {}
    for v, d in g.nodes(data=True):
        if d["kind"] == "op":
            continue
        values[v] = _init(v, d, seed, g.graph.get("file"))
    _check_labels(g, values)
    return values


# Ops that only rearrange integer labels (an imported model's `targets.view(-1)`): the labels they
# pass on are checked as the input's, rearranged.
LABEL_VIEWS = ("labels_view", "labels_slice", "labels_expand")


def _check_labels(g, values):
    """Every integer label in range of what its op indexes (Op.labels_below): numpy would index
    from the end with a negative one, silently, and fail deep inside the op past the end. Labels
    are leaves, their views (LABEL_VIEWS, rearranged here from the leaves' values) or computed by
    ops that check their own (float_labels) or cannot leave the range (topk_indices), so this is
    one pass before any step."""
    views = dict(values)
    for v in g.graph["order"]:
        d = g.nodes[v]
        if d["op"] in LABEL_VIEWS and all(u in views for u in d["inputs"]):
            views[v] = REGISTRY[d["op"]].forward(np, [views[u] for u in d["inputs"]], d["attrs"])
    for w, d in g.nodes(data=True):
        op = REGISTRY[d["op"]] if d["kind"] == "op" else None
        if op is None or op.labels_below is None:
            continue
        bound = op.labels_below([g.nodes[u]["shape"] for u in d["inputs"]])
        for i in op.int_inputs:
            u = d["inputs"][i]
            arr = views.get(u)
            if arr is not None and d["attrs"].get("ignore_index") is not None:  # a label the op skips (padding)
                arr = arr[arr != d["attrs"]["ignore_index"]]
            if arr is None or arr.size == 0:
                continue
            lo, hi = int(arr.min()), int(arr.max())
            if lo < 0 or hi >= bound:
                while g.nodes[u]["kind"] == "op":  # a view: the input it rearranges
                    u = g.nodes[u]["inputs"][0]
                raise ConfigError(f"label {lo if lo < 0 else hi} is outside 0..{bound - 1}, the range {d['op']} "
                                  f"node {w!r} indexes", file=g.graph.get("file"), line=g.nodes[u]["spec"].line, key=u)


def _init(name, d, seed, file):
    shape, spec = d["shape"], d["spec"]
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    np_dtype = np.dtype(d["dtype"])  # bfloat16 never gets here: leaf_values refuses it
    if spec.init == "value":
        try:
            arr = np.asarray(spec.value, dtype=np_dtype)
            return np.array(np.broadcast_to(arr, shape))
        except (ValueError, TypeError, OverflowError):
            raise ConfigError(f"value does not fit shape {shape}", file=file, line=spec.line, key=name) from None
    if spec.init == "normal":
        arr = rng.standard_normal(shape) * spec.scale
    elif spec.init == "uniform":
        arr = rng.uniform(-spec.scale, spec.scale, shape)
    elif spec.init == "xavier" and not shape:  # a 0-d value has no fans
        arr = rng.standard_normal() * spec.scale
    elif spec.init == "xavier":
        fan_in = shape[0] if len(shape) <= 2 else size(shape[1:])
        fan_out = shape[-1] if len(shape) <= 2 else shape[0] * size(shape[2:])
        arr = rng.standard_normal(shape) * spec.scale * np.sqrt(2.0 / (fan_in + fan_out))
    elif spec.init == "zeros":
        arr = np.zeros(shape)
    elif spec.init == "ones":
        arr = np.ones(shape) * spec.scale
    elif spec.init == "randint":
        arr = rng.integers(0, spec.high, shape)
    elif spec.init == "causal_mask":
        arr = np.triu(np.full(shape, -1e9), k=1)
    return np.asarray(arr, dtype=np_dtype)
