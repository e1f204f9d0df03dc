"""Write a plan PyTorch executes (`plan --emit torch`): the region planner's choice
(ckpt/plan/torch_regions.py: which modules to wrap in a non-reentrant checkpoint, and per wrapped
module which op outputs its selective-checkpoint policy keeps) as plan.json for `ckpt.torch.apply`,
with the bytes held at the end of the forward predicted exactly from the profile `ckpt import`
recorded, and the recompute it costs.
"""

from ..errors import BudgetError, ConfigError
from ..jsonio import write_json_atomic
from ..plan.torch_regions import RegionProfile, cost as _cost, plan_regions  # noqa: F401 (RegionProfile: public)
from ..sizes import fmt_bytes


def emit_torch_plan(model, budget, output, time_limit=10.0, compare=True):
    """Write plan.json for `ckpt.torch.apply`; returns the document. `budget` bounds the predicted
    peak: resident bytes (parameters, their gradients, inputs) + bytes held at the end of forward."""
    from .torch_apply import read_meta
    meta = read_meta(model.path)
    prof_doc = meta.get("profile")
    if not prof_doc:
        raise ConfigError("the torch metadata has no profile: re-run `ckpt import`", file=model.path)
    regions = [r for r in meta["regions"] if r in prof_doc["inputs"]]
    resident = prof_doc["resident_bytes"]
    rp = RegionProfile(prof_doc, regions, meta.get("sequential", []))
    unplanned = rp.held_bytes({})
    if budget is not None and not isinstance(budget, int):
        from ..sizes import parse_budget
        # `0.5x` scales what a plan can change, the bytes held for backward: resident + 0.5 x held
        budget = resident + parse_budget(budget, unplanned) if budget.strip().lower().endswith("x") \
            else parse_budget(budget, resident + unplanned)
    limit = None if budget is None else budget - resident
    try:
        choice, least = plan_regions(rp, limit)
    except BudgetError as e:
        raise BudgetError(f"no PyTorch checkpoint plan fits {fmt_bytes(budget)}: the least is "
                          f"{fmt_bytes(resident + e.min_peak)} ({resident + e.min_peak} bytes)",
                          min_peak=resident + e.min_peak) from None
    held = rp.held_bytes(choice)
    fwd_cost = sum(_cost(o) for o in prof_doc["ops"])
    recompute = rp.recompute(choice)
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
                         "recompute_flops": sum(rp.unit_flops(u, kept) for u, kept in choice.items()),
                         "overhead": recompute / (3 * fwd_cost) if fwd_cost else 0.0},
           "regions": _regions_doc(rp, choice),
           "cost_units": "FLOPs (torch.utils.flop_counter) plus one per byte written; step = 3 x forward"}
    doc["planner"] = {"units": len(rp.units), "early_stop_modelled": rp.last_pack is not None}
    doc["ckpt_plan"] = _ckpt_own(model, budget, time_limit) if compare else {"feasible": None, "error": "not compared"}
    try:
        write_json_atomic(output, doc)
    except OSError as e:
        raise ConfigError(f"cannot write: {e.strerror}", file=output) from None
    return doc


def _regions_doc(rp, choice):
    """The wrapped units, and every top-level region no wrapped unit covers (left alone), in
    forward order."""
    covered = set().union(*(u.scope for u in choice)) if choice else set()
    rows = []
    for u, kept in choice.items():
        first = u.ops[0]["i"] if u.ops else -1
        rows.append((first, {"name": u.name, "members": list(u.members), "option": "selective" if kept else "full",
                             "checkpoint": True,
                             "save": [dict(zip(("region", "op", "k"), u.keyed[o["i"]]),
                                           bytes=sum(rp.bytes[x] for x in o["made"])) for o in kept],
                             "recompute_cost": rp.unit_cost(u, kept), "recompute_flops": rp.unit_flops(u, kept)}))
    for r in rp.top:
        if r not in covered:
            u = rp.unit((r,))
            rows.append((u.ops[0]["i"] if u.ops else -1, {"name": r, "members": [r], "option": "none",
                                                           "checkpoint": False, "save": [], "recompute_cost": 0,
                                                           "recompute_flops": 0}))
    return [d for _, d in sorted(rows, key=lambda x: x[0])]


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
