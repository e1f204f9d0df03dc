"""Plan within what PyTorch can execute, from the profile `ckpt import` recorded (no torch needed).

PyTorch's selective checkpointing has one level: a region (a submodule, or a segment of
consecutive nn.Sequential items) is either left alone or wrapped in a checkpoint that keeps a chosen
set of op outputs and recomputes every other value of the region at once in its backward. Per
region the planner chooses among:

  none         no checkpoint: the region's ops save what autograd saves;
  save-top-N   checkpoint keeping the outputs of the N ops that save the most recompute per byte
               kept (a greedy knapsack order; N runs from all of them down to one);
  save-matmul  checkpoint keeping the outputs of its matrix products and convolutions;
  full         checkpoint keeping nothing: only the region's inputs are held.

The bytes held at the end of the forward are predicted exactly from the profile: a storage is held
when a region that saves it runs unwrapped (or it is saved outside every region), when it is an
input of a wrapped region (the checkpoint keeps its arguments), or when a wrapped region's policy
saves the op that made it; the sum is over unique storages, as the census measures it. A greedy
pass moves, one region at a time, to the option that frees the most bytes per unit of added
recompute until the prediction fits the budget, then spends any slack back on cheaper options;
each way of cutting Sequential items into
segments is tried, and every uniform choice too, and the least recompute that fits wins.
"""

from ..errors import BudgetError, ConfigError
from ..jsonio import write_json_atomic
from ..sizes import fmt_bytes

_COSTLY = ("aten.mm.", "aten.addmm.", "aten.bmm.", "aten.baddbmm.", "aten.convolution.", "aten.conv2d.",
           "aten._scaled_dot_product")
_TOP_SIZES = 6  # save-top-N options per region, N spread from all candidates down to one


class _Profile:
    def __init__(self, prof, regions):
        self.p = prof
        self.regions = regions
        self.bytes = prof["storages"]
        self.alive = prof["alive"]
        self.holders = {int(k): set(v) for k, v in prof["holders"].items()}
        self.inputs = {r: set(prof["inputs"].get(r, [])) for r in regions}
        self.ops = {r: [o for o in prof["ops"] if o["region"] == r] for r in regions}
        self._ranked = {}

    def ranked(self, unit):
        """The unit's ops that make a storage, most recompute saved per byte kept first."""
        if unit not in self._ranked:
            ops = [o for m in unit for o in self.ops[m] if o["made"]]
            self._ranked[unit] = sorted(ops, key=lambda o: -_cost(o) / max(1, sum(self.bytes[s] for s in o["made"])))
        return self._ranked[unit]

    def options(self, unit):
        """The unit's options, from the most bytes held to the least (roughly)."""
        n = len(self.ranked(unit))
        tops = sorted({max(1, round(n * k / _TOP_SIZES)) for k in range(_TOP_SIZES, 0, -1)} if n else set(),
                      reverse=True)
        return ["none"] + [f"save-top-{k}" for k in tops] + ["save-matmul", "full"]

    def save_set(self, unit, option):
        if option in ("none", "full"):
            return []
        if option == "save-matmul":
            return [o for m in unit for o in self.ops[m] if o["made"] and o["op"].startswith(_COSTLY)]
        return self.ranked(unit)[:int(option.rsplit("-", 1)[1])]

    def held(self, units):
        """Storages held at the end of the forward under units [(members, option)]."""
        wrapped = {m for members, o in units if o != "none" for m in members}
        held = set()
        for s in self.alive:
            hs = self.holders.get(s)
            if not hs or any(h not in wrapped for h in hs):
                held.add(s)
        for members, o in units:
            if o == "none":
                continue
            held |= self.inputs[members[0]]  # the checkpoint keeps its arguments
            for op in self.save_set(members, o):
                held |= set(op["made"])
        return held

    def held_bytes(self, units):
        return sum(self.bytes[s] for s in self.held(units))

    def unit_cost(self, unit, option):
        """Recompute of a wrapped unit: every op of it whose output the policy does not keep."""
        if option == "none":
            return 0
        saved = {id(o) for o in self.save_set(unit, option)}
        return sum(_cost(o) for m in unit for o in self.ops[m] if id(o) not in saved)


def _cost(o):
    return o["flops"] + o["bytes"]  # FLOPs plus one unit per byte written, as ckpt's cost model


def segmentations(regions, sequential):
    """Ways to cut the regions into units: each region alone, and for each length L >= 2 the items
    of every nn.Sequential cut into runs of L consecutive items (Chen et al.'s segments)."""
    def parent(r):
        head, _, tail = r.rpartition(".")
        return head if tail.isdigit() and head in sequential else None
    yield [(r,) for r in regions]
    runs, cur = [], []
    for r in regions:
        if cur and parent(r) is not None and parent(r) == parent(cur[-1]) and \
                int(r.rpartition(".")[2]) == int(cur[-1].rpartition(".")[2]) + 1:
            cur.append(r)
        else:
            if cur:
                runs.append(cur)
            cur = [r]
    runs.append(cur)
    longest = max(len(x) for x in runs if parent(x[0]) is not None) if any(parent(x[0]) for x in runs) else 1
    for length in range(2, longest + 1):
        units = []
        for run in runs:
            step = length if parent(run[0]) is not None else 1
            units += [tuple(run[i:i + step]) for i in range(0, len(run), step)]
        yield units


def plan_units(prof, units, limit):
    """Greedy over units: [(members, option)] whose held bytes fit `limit` (None: no limit), or None."""
    choice = [(u, "none") for u in units]
    if limit is None:
        return choice
    held = prof.held_bytes(choice)
    while held > limit:
        best = None
        for i, (u, cur) in enumerate(choice):
            base = prof.unit_cost(u, cur)
            for o in prof.options(u):
                if o == cur:
                    continue
                trial = choice[:i] + [(u, o)] + choice[i + 1:]
                freed = held - prof.held_bytes(trial)
                if freed <= 0:
                    continue
                score = freed / max(prof.unit_cost(u, o) - base, 1)
                if best is None or score > best[0]:
                    best = (score, trial)
        if best is None:
            return None
        choice = best[1]
        held = prof.held_bytes(choice)
    return _refine(prof, choice, limit)


def _refine(prof, choice, limit):
    """The greedy can overshoot (a step frees more than was needed): spend the slack back, moving
    units to cheaper options while the prediction still fits, the largest saving first."""
    while True:
        best = None
        for i, (u, cur) in enumerate(choice):
            base = prof.unit_cost(u, cur)
            for o in prof.options(u):
                saving = base - prof.unit_cost(u, o)
                if saving <= 0 or (best is not None and saving <= best[0]):
                    continue
                trial = choice[:i] + [(u, o)] + choice[i + 1:]
                if prof.held_bytes(trial) <= limit:
                    best = (saving, trial)
        if best is None:
            return choice
        choice = best[1]


def best_plan(prof, regions, sequential, limit):
    """The least recompute over the segmentations that fits; (units, least held bytes of any)."""
    best, least = None, None
    for units in segmentations(regions, sequential):
        for o in ("none", "save-matmul", "full"):
            b = prof.held_bytes([(u, o) for u in units])
            least = b if least is None else min(least, b)
        # the greedy's answer, and each uniform choice (every unit alike) as a floor it must beat
        for c in [plan_units(prof, units, limit)] + [[(u, o) for u in units] for o in ("none", "save-matmul", "full")]:
            if c is None or (limit is not None and prof.held_bytes(c) > limit):
                continue
            cost = sum(prof.unit_cost(u, o) for u, o in c)
            if best is None or cost < best[0]:
                best = (cost, c)
    return (best[1] if best else None), least


def emit_torch_plan(model, budget, output, time_limit=10.0, compare=True):
    """Write plan.json for `ckpt.torch.apply`; returns the document. `budget` bounds the predicted
    peak: resident bytes (parameters, their gradients, inputs) + bytes held at the end of forward."""
    from .torch_apply import read_meta
    meta = read_meta(model.path)
    prof_doc = meta.get("profile")
    if not prof_doc:
        raise ConfigError("the torch metadata has no profile: re-run `ckpt import`", file=model.path)
    regions = [r for r in meta["regions"] if r in prof_doc["inputs"]]
    prof = _Profile(prof_doc, regions)
    resident = prof_doc["resident_bytes"]
    unplanned = prof.held_bytes([((r,), "none") for r in regions])
    if budget is not None and not isinstance(budget, int):
        from ..sizes import parse_budget
        # `0.5x` scales what a plan can change, the bytes held for backward: resident + 0.5 x held
        budget = resident + parse_budget(budget, unplanned) if budget.strip().lower().endswith("x") \
            else parse_budget(budget, resident + unplanned)
    limit = None if budget is None else budget - resident
    choice, least = best_plan(prof, regions, set(meta.get("sequential", [])), limit)
    if choice is None:
        raise BudgetError(f"no PyTorch checkpoint plan fits {fmt_bytes(budget)}: the least is "
                          f"{fmt_bytes(resident + least)}", min_peak=resident + least)
    held = prof.held_bytes(choice)
    fwd_cost = sum(_cost(o) for o in prof_doc["ops"])
    recompute = sum(prof.unit_cost(u, o) for u, o in choice)
    params = {}
    for leaf in model.spec.leaves.values():
        if leaf.kind == "param":
            shape = list(leaf.shape)
            params[leaf.name] = shape[::-1] if leaf.name in meta["transposed"] else shape
    doc = {"format": "ckpt-torch-plan", "model": model.spec.name, "source": meta["source"],
           "inputs": meta["inputs"], "parameters": params, "budget_bytes": budget,
           "predicted": {"resident_bytes": resident, "held_end_forward_bytes": held, "peak_bytes": resident + held,
                         "unplanned_held_bytes": unplanned, "unplanned_peak_bytes": resident + unplanned,
                         "least_peak_bytes": resident + least,
                         "recompute_cost": recompute, "step_cost": 3 * fwd_cost,
                         "overhead": recompute / (3 * fwd_cost) if fwd_cost else 0.0},
           "regions": [{"name": u[0], "members": list(u), "option": o, "checkpoint": o != "none",
                        "save": [{"region": op["region"], "op": op["op"], "k": op["k"],
                                  "bytes": sum(prof.bytes[x] for x in op["made"])}
                                 for op in prof.save_set(u, o)] if o != "none" else [],
                        "recompute_cost": prof.unit_cost(u, o)} for u, o in choice],
           "cost_units": "FLOPs (torch.utils.flop_counter) plus one per byte written; step = 3 x forward"}
    doc["ckpt_plan"] = _ckpt_own(model, budget, time_limit) if compare else {"feasible": None, "error": "not compared"}
    try:
        write_json_atomic(output, doc)
    except OSError as e:
        raise ConfigError(f"cannot write: {e.strerror}", file=output) from None
    return doc


def _ckpt_own(model, budget, time_limit):
    """ckpt's unrestricted plan at the same budget, for comparison (its peak counts what ckpt's
    executor holds: values, gradients and resident bytes)."""
    from ..plan import plan as make_plan
    try:
        if budget is None:
            p, sim = make_plan(model.joint, "store-all", ix=model.index)
            sa = sim
        else:
            sa = make_plan(model.joint, "store-all", ix=model.index)[1]
            p, sim = make_plan(model.joint, "budget", budget, time_limit=time_limit, ix=model.index)
    except BudgetError as e:
        return {"feasible": False, "error": str(e)}
    return {"feasible": True, "peak_bytes": sim.peak, "overhead": (sim.cost - sa.cost) / sa.cost if sa.cost else 0.0,
            "solver": p.solver}


def summary_lines(doc):
    p = doc["predicted"]
    lines = [f"PyTorch plan for {doc['model']}: budget {fmt_bytes(doc['budget_bytes']) if doc['budget_bytes'] else 'none'}",
             f"predicted: held for backward at the end of forward {fmt_bytes(p['held_end_forward_bytes'])} "
             f"(unplanned {fmt_bytes(p['unplanned_held_bytes'])}), resident {fmt_bytes(p['resident_bytes'])}, "
             f"peak {fmt_bytes(p['peak_bytes'])}; recompute overhead {100 * p['overhead']:.1f}%"]
    for r in doc["regions"]:
        saved = ", ".join(f"{s['op']}#{s['k']}" for s in r["save"]) or "-"
        name = r["name"] if len(r["members"]) == 1 else f"{r['members'][0]}..{r['members'][-1]}"
        lines.append(f"  {name:<16} {r['option']:<12} saves: {saved}")
    c = doc["ckpt_plan"]
    if c.get("feasible") is None:
        pass
    elif c.get("feasible"):
        lines.append(f"ckpt's own plan at this budget (its executor's peak {fmt_bytes(c['peak_bytes'])}): overhead "
                     f"{100 * c['overhead']:.1f}% ({c['solver']})")
    else:
        lines.append(f"ckpt's own plan at this budget: {c.get('error')}")
    return lines
