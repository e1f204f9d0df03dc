"""Apply a ckpt plan to a PyTorch module, and count what PyTorch holds for backward.

`apply(model, "plan.json")` wraps each region the plan checkpoints (a submodule: `layers.3`) in
non-reentrant torch.utils.checkpoint with a selective-checkpoint policy: the outputs of the ops the
plan names are saved (MUST_SAVE), everything else in the region is recomputed at its backward
(PREFER_RECOMPUTE). Nothing else in the training loop changes. A back end only reads the plan.

Ops are named as the policy sees them: the aten overload (`aten.addmm.default`) and its occurrence
within the region's forward, counted separately in the forward and in the recompute.

`Census` counts bytes held for backward by unique storage: every storage an op creates during the
forward is tracked by a weak reference, so at the end of the forward the live ones are exactly what
autograd (or a checkpoint's cache) holds. Outer saved_tensors_hooks cannot see inside a checkpoint
(it installs its own), so planned and unplanned runs are both counted this way; `profile` also
records, through saved_tensors_hooks, which region saves each storage.
"""

import os

from ..errors import ConfigError

_META_SUFFIX = ".torch.json"


def meta_path(config):
    return os.path.splitext(str(config))[0] + _META_SUFFIX


def read_meta(config, required=True):
    """The sidecar `ckpt import` writes beside a config; None (or an error) where there is none."""
    path = meta_path(config)
    if not os.path.exists(path):
        if required:
            raise ConfigError(f"no {os.path.basename(path)} beside it: --emit torch needs a model imported by "
                              "`ckpt import`", file=config)
        return None
    from ..jsonio import read_json
    return read_json(path, "torch metadata")


def _torch():
    from ..frontends.torch_import import torch_or_error
    return torch_or_error()


def _ignored():
    from torch.utils.checkpoint import SAC_IGNORED_OPS
    return SAC_IGNORED_OPS


def _region_modules(model, regions):
    mods = dict(model.named_modules())
    missing = [r for r in regions if r not in mods]
    if missing:
        raise ConfigError(f"the module has no submodule {missing[0]!r}: the plan was made for another model")
    return {r: mods[r] for r in regions}


class Census:
    """A dispatch mode that records, for every storage an op creates, its bytes, the op (region,
    aten overload, occurrence) and a weak reference; `held()` sums the live ones."""

    def __init__(self, known=()):
        torch = _torch()
        from torch.multiprocessing.reductions import StorageWeakRef
        from torch.utils._python_dispatch import TorchDispatchMode
        self._ref = StorageWeakRef
        self.known = {StorageWeakRef(t.untyped_storage()).cdata for t in known}
        # every storage an op made, by a number of its own: a storage's address (cdata) is reused
        # once it is freed, so the address alone would merge two storages into one
        self.storages = {}  # id -> (weakref, nbytes, creator key, op position)
        self._ids = {}  # cdata -> id of the storage made last at that address
        self.region = [""]
        self.counts = {}
        self.ops = []  # (region, op, k, [storage ids...], flops, bytes)
        self.mutated = {}  # op position -> storages (ids) it wrote in place that an earlier op made
        self.live_peak = 0
        census = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                census.record(func, args, kwargs or {}, out)
                return out
        self.mode = Mode()
        self.torch = torch

    skip = staticmethod(lambda: False)  # measure_step skips the backward's own ops

    def sid(self, t):
        """The id of the live storage under tensor `t` that an op made; None for any other."""
        i = self._ids.get(self._ref(t.untyped_storage()).cdata)
        return i if i is not None and not self.storages[i][0].expired() else None

    def record(self, func, args, kwargs, out):
        torch = self.torch
        if func in _ignored() or self.skip():
            return
        region = self.region[-1]
        key = (region, str(func))
        k = self.counts.get(key, 0)
        self.counts[key] = k + 1
        made, nbytes = [], 0
        for t in torch.utils._pytree.tree_leaves(out):
            if not isinstance(t, torch.Tensor):
                continue
            st = t.untyped_storage()
            ref = self._ref(st)
            if ref.cdata in self.known or self.sid(t) is not None:
                continue
            i = self._ids[ref.cdata] = len(self.storages)
            self.storages[i] = (ref, st.nbytes(), (region, str(func), k), len(self.ops))
            made.append(i)
            nbytes += st.nbytes()
        written = {self.sid(t) for t in _written(func, args, kwargs)} - {None} - set(made)
        if written:
            self.mutated[len(self.ops)] = sorted(written)
        self.ops.append((region, str(func), k, made, _flops(func, args, kwargs, out), nbytes))
        if made:  # the live total only grows when something is made
            self.live_peak = max(self.live_peak, self.live())

    def live(self):
        return sum(n for ref, n, _, _ in self.storages.values() if not ref.expired())

    def held(self, exclude=()):
        ex = {self.sid(t) for t in exclude}
        return sum(n for i, (ref, n, _, _) in self.storages.items() if not ref.expired() and i not in ex)

    def enter(self, name):
        self.region.append(name)
        self.counts = {k: v for k, v in self.counts.items() if k[0] != name}  # occurrences restart per call

    def leave(self):
        self.region.pop()


def extra_flop_formulas():
    """FLOP formulas, on shapes, for ops torch.utils.flop_counter leaves out: CPU attention
    (`_scaled_dot_product_flash_attention_for_cpu` and its backward) counted as the CUDA flash
    kernels are. Without them a recomputed attention is free in the plan and in every measured
    recompute figure; pass as FlopCounterMode(custom_mapping=...)."""
    torch = _torch()
    from torch.utils.flop_counter import sdpa_backward_flop_count, sdpa_flop_count
    aten = torch.ops.aten
    out = {}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        out[aten._scaled_dot_product_flash_attention_for_cpu] = \
            lambda q, k, v, *a, out_shape=None, **kw: sdpa_flop_count(q, k, v)
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward"):
        out[aten._scaled_dot_product_flash_attention_for_cpu_backward] = \
            lambda g, q, k, v, *a, out_shape=None, **kw: sdpa_backward_flop_count(g, q, k, v)
    return out


def _flops(func, args, kwargs, out):
    from torch.utils.flop_counter import flop_registry
    f = flop_registry.get(func._overloadpacket)
    try:
        if f is None:
            extra = extra_flop_formulas().get(func._overloadpacket)
            if extra is None:
                return 0
            return int(extra(*[tuple(a.shape) if hasattr(a, "shape") else a for a in args]))
        return int(f(*args, **kwargs, out_val=out))
    except Exception:  # noqa: BLE001 -- an op the counter cannot size costs nothing in the plan
        return 0


def loss_of(out):
    """The loss in what a forward returns: the tensor itself, or (as `ckpt import` takes it) the
    first floating-point scalar of a tuple, list or dict such as (loss, logits)."""
    torch = _torch()
    if isinstance(out, torch.Tensor):
        return out
    loss = next((t for t in torch.utils._pytree.tree_leaves(out)
                 if isinstance(t, torch.Tensor) and t.dim() == 0 and t.is_floating_point()), None)
    if loss is None:
        raise ConfigError(f"the module's forward returns {type(out).__name__}, with no floating-point scalar "
                          "to take as the loss")
    return loss


def _written(func, args, kwargs):
    """The tensors an op writes in place (`relu_`, `add_`, an out= argument): its schema's
    arguments annotated `Tensor(a!)`."""
    out = []
    for i, a in enumerate(func._schema.arguments):
        if a.alias_info is not None and a.alias_info.is_write:
            out += _tensors(args[i] if i < len(args) else kwargs.get(a.name))
    return out


def _tensors(x):
    torch = _torch()
    return [t for t in torch.utils._pytree.tree_leaves(x) if isinstance(t, torch.Tensor)]


def profile(model, args, regions):
    """One plain training forward under the census: per region, its ops in order (aten overload,
    occurrence, storages made, FLOPs), which storages each region saves for backward (through
    saved_tensors_hooks), each region's input storages, and every storage's bytes.

    The submodules inside each region are profiled as regions too (`nested`: a plan may wrap
    `layers.0.attn` alone); an op belongs to the innermost one. `last_pack` is, per region, the
    position in `ops` just past the last op that packed a tensor for backward there (an input is
    packed before its op runs, an output after): a checkpoint's recompute stops once every tensor
    it packed is back (non-reentrant early stop), so ops from there on are not recomputed. `calls`
    is the same per call of each region (a cell run once per time step is a checkpoint per call),
    and an op's `mutated` lists the storages it writes in place (`relu_`, `out += x`)."""
    torch = _torch()
    nested = [k for k, _ in model.named_modules() if any(k.startswith(r + ".") for r in regions)]
    mods = _region_modules(model, list(regions) + nested)
    resident = list(model.parameters()) + list(model.buffers()) + _tensors(args)
    c = Census(known=resident)
    holders, inputs, last_pack, calls = {}, {}, {}, {}
    handles = []
    for name, m in mods.items():
        def pre(mod, a, name=name):
            c.enter(name)
            # a module called more than once (an RNN cell) is a checkpoint per call: each holds its
            # own arguments, and each call's recompute stops at its own last pack
            inputs.setdefault(name, set()).update({c.sid(t) for t in _tensors(a)} - {None})
            calls.setdefault(name, []).append([len(c.ops), len(c.ops), len(c.ops)])

        def post(mod, a, out, name=name):
            calls[name][-1][2] = len(c.ops)
            c.leave()
        handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]

    def pack(t):
        i = c.sid(t)
        if i is not None:
            holders.setdefault(i, set()).add(c.region[-1])
        last_pack[c.region[-1]] = len(c.ops)
        for r in c.region[1:]:  # the call of every module around the op packs it
            calls[r][-1][1] = len(c.ops)
        return t
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), c.mode:
            loss = loss_of(model(*args))
    finally:
        for h in handles:
            h.remove()
    lost = c.sid(loss)
    out = {"storages": [n for _, n, _, _ in c.storages.values()],
           "alive": [i for i, (ref, *_rest) in c.storages.items() if not ref.expired() and i != lost],
           "holders": {str(i): sorted(h) for i, h in holders.items()},
           "ops": [{"region": r, "op": op, "k": k, "made": made, "flops": fl, "bytes": nb,
                    # the storages it writes in place: a policy must not keep what is written later
                    **({"mutated": c.mutated[i]} if i in c.mutated else {})}
                   for i, (r, op, k, made, fl, nb) in enumerate(c.ops)],
           "inputs": {r: sorted(v) for r, v in inputs.items()},
           # per region, per call: [first op, just past its last pack, just past its last op]
           "calls": calls,
           "nested": [r for r in nested if r in inputs], "last_pack": last_pack,
           # the loss: what a census leaves out, so a policy that keeps it holds nothing more
           "output": [lost] if lost is not None else [],
           "resident_bytes": sum(t.numel() * t.element_size() for t in resident)
           + sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)}
    if loss.requires_grad:  # a model with nothing to train has no backward graph to release
        loss.backward()
    model.zero_grad(set_to_none=True)
    return out


# ---- applying a plan -----------------------------------------------------------------------------
def load_plan(plan):
    if isinstance(plan, dict):
        return plan
    from ..jsonio import read_json
    doc = read_json(plan, "plan file")
    if not isinstance(doc, dict) or doc.get("format") != "ckpt-torch-plan" or "regions" not in doc:
        raise ConfigError("not a ckpt PyTorch plan (write one with `ckpt plan --emit torch -o FILE`)", file=plan)
    _check_plan_doc(doc, plan)
    return doc


_PLAN_DTYPES = ("float16", "bfloat16", "float32", "float64", "int32", "int64")


def _check_plan_doc(doc, file):
    """Every field that torch-check and apply read, of the type they read it as: a plan file edited
    by hand (or by another tool) is one line naming the field, not a TypeError inside PyTorch."""
    from ..sizes import MAX_BYTES, MAX_NDIM

    def bad(key, want):
        return ConfigError(f"{key} must be {want}", file=file, key=None)

    def count(v, lo=0):
        return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= MAX_BYTES

    def shape(key, v, lo):
        if not isinstance(v, list) or len(v) > MAX_NDIM or not all(count(d, lo) for d in v):
            raise bad(key, f"a list of at most {MAX_NDIM} sizes >= {lo}")

    if not isinstance(doc.get("model", ""), str):
        raise bad("model", "a name")
    inputs = doc.get("inputs", {})
    if not isinstance(inputs, dict):
        raise bad("inputs", "a mapping of input names")
    for k, v in inputs.items():
        if not isinstance(v, dict):
            raise bad(f"inputs.{k}", "a mapping with shape and dtype")
        shape(f"inputs.{k}.shape", v.get("shape"), 1)
        if v.get("dtype") not in _PLAN_DTYPES:
            raise bad(f"inputs.{k}.dtype", "one of " + ", ".join(_PLAN_DTYPES))
        if "high" in v and not count(v["high"], 1):
            raise bad(f"inputs.{k}.high", "a whole number >= 1")
    params = doc.get("parameters") or {}
    if not isinstance(params, dict):
        raise bad("parameters", "a mapping of parameter names to shapes")
    for k, v in params.items():
        shape(f"parameters.{k}", v, 0)
    predicted = doc.get("predicted")
    if not isinstance(predicted, dict):
        raise bad("predicted", "a mapping of figures")
    for k in ("unplanned_held_bytes", "held_end_forward_bytes", "resident_bytes"):
        if not count(predicted.get(k)):
            raise bad(f"predicted.{k}", "a whole number of bytes")
    if not isinstance(doc["regions"], list):
        raise bad("regions", "a list")
    for i, r in enumerate(doc["regions"]):
        key = f"regions[{i}]"
        if not isinstance(r, dict) or not isinstance(r.get("name"), str) or not isinstance(r.get("checkpoint"), bool):
            raise bad(key, "a mapping with a name and checkpoint: true or false")
        members = r.get("members", [r["name"]])
        if not isinstance(members, list) or not members or not all(isinstance(m, str) for m in members):
            raise bad(f"{key}.members", "a non-empty list of module names")
        save = r.get("save", None if r["checkpoint"] else [])
        if not isinstance(save, list):
            raise bad(f"{key}.save", "a list (of the ops whose outputs the region keeps)")
        for j, e in enumerate(save):
            if not (isinstance(e, dict) and isinstance(e.get("op"), str) and count(e.get("k"))
                    and isinstance(e.get("region", ""), str)):
                raise bad(f"{key}.save[{j}]", "a mapping with op (a name), k (a count) and region (a name)")


def check_plan(model, plan):
    """A plan names its model's parameters and shapes: refuse one made for another model."""
    doc = load_plan(plan)
    shapes = {k: list(p.shape) for k, p in model.named_parameters()}
    if doc.get("parameters") and doc["parameters"] != shapes:
        diff = sorted(set(doc["parameters"]) ^ set(shapes)) or \
            [k for k in shapes if doc["parameters"].get(k) != shapes[k]]
        raise ConfigError(f"the plan was made for another model (parameter {diff[0]!r} differs)",
                          file=plan if isinstance(plan, str) else None)
    return doc


def apply(model, plan):
    """Wrap the plan's checkpointed regions in non-reentrant checkpoints with its save policy;
    returns the same module. Idempotent per module: applying twice replaces the first plan."""
    torch = _torch()
    from torch.utils._python_dispatch import _disable_current_modes
    from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts
    doc = check_plan(model, plan)
    units = [r for r in doc["regions"] if r["checkpoint"]]
    mods = _region_modules(model, [m for r in units for m in r.get("members", [r["name"]])])
    _check_units(model, units, plan)
    for name, mod in dict(model.named_modules()).items():
        if hasattr(mod, "_ckpt_forward"):
            mod.forward = mod._ckpt_forward
            del mod._ckpt_forward
    ignored = _ignored()
    for unit in units:
        members = unit.get("members", [unit["name"]])
        save = {(s.get("region", unit["name"]), s["op"], s["k"]) for s in unit.get("save", [])}
        current = [members[0]]

        def context(save=save, current=current):
            counts = {False: {}, True: {}}

            def policy(ctx, op, *args, **kwargs):
                if op in ignored:
                    return CheckpointPolicy.PREFER_RECOMPUTE
                key = (current[0], str(op))
                c = counts[ctx.is_recompute]
                k = c.get(key, 0)
                c[key] = k + 1
                return CheckpointPolicy.MUST_SAVE if key + (k,) in save else CheckpointPolicy.PREFER_RECOMPUTE
            return create_selective_checkpoint_contexts(policy)

        origs = [mods[m].forward for m in members]

        def segment(*args, _origs=origs, _members=members, _current=current, **kwargs):
            # A segment of consecutive nn.Sequential items runs them in order inside one
            # checkpoint; the policy counts each item's ops apart, as the profile did.
            out = None
            again = torch._C._current_graph_task_id() != -1  # called again in the backward
            _RECOMPUTING[0] += again
            # The recompute must not update state twice: BatchNorm's running statistics (train
            # mode) are put back as the forward left them, as if it had run once.
            # (Outside the dispatch modes: the checkpoint's cache and the census see none of it.)
            state = []
            if again:
                with _disable_current_modes(), torch.no_grad():
                    state = [(b, b._version, b.clone()) for m in _members for b in mods[m].buffers()]
            try:
                for i, (m, f) in enumerate(zip(_members, _origs)):
                    _current[0] = m
                    out = f(*args, **kwargs) if i == 0 else f(out)
            finally:
                _RECOMPUTING[0] -= again
                with _disable_current_modes(), torch.no_grad():
                    for b, version, before in state:
                        if b._version != version or not torch.equal(b, before):  # batch norm: no version bump
                            b.copy_(before)
            return out

        def forward(*args, _segment=segment, _context=context, _plain=not save, **kwargs):
            if not torch.is_grad_enabled():
                return _segment(*args, **kwargs)
            if _plain:  # nothing to save: a plain checkpoint, without a policy call per op
                return checkpoint(_segment, *args, use_reentrant=False, **kwargs)
            return checkpoint(_segment, *args, use_reentrant=False, context_fn=_context, **kwargs)
        for m, f in zip(members, origs):
            mods[m]._ckpt_forward = f
        mods[members[0]].forward = forward
        for m in members[1:]:
            mods[m].forward = _identity  # the segment's first item ran it
    return model


def _check_units(model, units, plan):
    """What a plan checkpoints is what `ckpt plan` could have written for this model: a unit of
    several members runs them one after another as one function, so they must be consecutive items
    of one nn.Sequential in its own order (a plan edited to list them otherwise would compute
    something else, and gradients that differ); and no module is in two units, or inside another
    (a checkpoint in a checkpoint)."""
    torch = _torch()
    mods = dict(model.named_modules())
    file = plan if isinstance(plan, str) else None
    seen = []
    for unit in units:
        members = unit.get("members", [unit["name"]])
        if len(members) > 1:
            parents = {m.rpartition(".")[0] for m in members}
            parent = parents.pop() if len(parents) == 1 else None
            items = list(mods[parent]._modules) if isinstance(mods.get(parent), torch.nn.Sequential) else []
            names = [m.rpartition(".")[2] for m in members]
            first = items.index(names[0]) if names[0] in items else -1
            if first < 0 or items[first:first + len(names)] != names:
                raise ConfigError(f"region {unit['name']!r}: members {', '.join(members)} are not consecutive items "
                                  "of one nn.Sequential in its order: the plan was edited or made for another model",
                                  file=file)
        for m in members:
            clash = next((o for o in seen if o == m or not o or not m or m.startswith(o + ".")
                          or o.startswith(m + ".")), None)
            if clash is not None:
                raise ConfigError(f"region {unit['name']!r}: module {m or '(the model)'!r} is also in, or around, "
                                  f"{clash or '(the model)'!r}, checkpointed already: the plan was edited or made "
                                  "for another model", file=file)
        seen += members


_RECOMPUTING = [0]  # > 0 while a checkpoint recomputes its region inside the backward


def _identity(x):
    return x


# ---- measuring a step ----------------------------------------------------------------------------
def measure_step(model, args):
    """One training step under the census: bytes held for backward at the end of the forward (live
    storages the forward created, the loss excluded); the peak of live activation bytes in the
    forward and over the whole step (storages made by forward ops and by a checkpoint's recompute
    in the backward; the gradient computations' own buffers are not counted); the gradients."""
    torch = _torch()
    resident = list(model.parameters()) + list(model.buffers()) + _tensors(args)
    c = Census(known=resident)
    c.skip = lambda: torch._C._current_graph_task_id() != -1 and not _RECOMPUTING[0]
    with c.mode:
        loss = loss_of(model(*args))  # (loss, logits): the rest is dropped, as in the profile
        end = c.held(exclude=[loss])
        forward_peak = c.live_peak
        loss.backward()
    grads = {k: p.grad.detach().clone() for k, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return {"held_end_forward": int(end), "live_peak_forward": int(forward_peak), "live_peak_step": int(c.live_peak),
            "loss": float(loss.detach()), "grads": grads}
