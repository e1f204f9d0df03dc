"""ckpt run and ckpt trace: execute a schedule, report memory and time, print the seed's traces."""

import re
import statistics

import click

from ..backend import get_backend
from ..errors import ConfigError
from ..model.joint import GRAD
from ..plan import STRATEGIES, plan as make_plan
from ..report import Progress, emit_json, fmt_bytes, fmt_pct, fmt_time, fmt_value, gradient_summary, table
from ..session import load_model, require_memory, require_model, run_plan, time_side_by_side
from .common import (budget_bytes, budget_opt, check_plot_file, config_arg, dtype_opt, json_opt, keep_heap, overrides,
                     require_within_budget, set_opt, step_count, time_limit_opt)


@click.command()
@config_arg
@click.option("--steps", default=5, show_default=True, type=step_count, help="Timed steps.")
@click.option("--strategy", default="store-all", show_default=True, type=click.Choice(STRATEGIES))
@budget_opt
@time_limit_opt
@click.option("--device", default="cpu", show_default=True, type=click.Choice(["cpu", "cuda"]))
@click.option("--trace", is_flag=True, help="Print the primal and adjoint traces in the seed's notation.")
@click.option("--plot-memory", "plot_file", type=click.Path(dir_okay=False),
              help="Draw the memory timeline, predicted and measured (PNG or SVG).")
@set_opt
@dtype_opt
@json_opt
def run(config, steps, strategy, budget, time_limit, device, trace, plot_file, sets, dtype, as_json):
    """Run forward+backward steps under a strategy; report loss, gradients, memory and time."""
    if trace and as_json:
        raise ConfigError("--trace prints the traces as text: use it without --json")
    heap_kept = keep_heap(device)
    model = load_model(config, overrides(sets), dtype)
    require_model(model, "run")
    budget_b = budget_bytes(budget, model)
    backend = get_backend(device)
    p, sim = make_plan(model.joint, strategy, budget_b, time_limit=time_limit, ix=model.index)
    require_within_budget(strategy, sim, budget_b)  # exit 3 before running, not a step run over it
    require_memory(model, sim.peak, backend)
    if plot_file:  # the figures' module (and matplotlib) only when a figure is asked for
        from .. import plots
        check_plot_file(plot_file)  # before the steps run, not after
    sa, sa_sim = make_plan(model.joint, "store-all", ix=model.index)
    with Progress(f"running {steps} steps", enabled=not as_json):
        if strategy == "store-all":
            r = run_plan(model, p.steps, backend, n_steps=steps)
            time_s, measured_overhead = r.time_s, None
        else:  # the plan's step times come from the side-by-side run with store-all
            r = run_plan(model, p.steps, backend, n_steps=0)
            t_plan, t_sa = time_side_by_side(model, [p.steps, sa.steps], backend, n_steps=steps)
            time_s = statistics.median(t_plan)
            # the median of per-round ratios: a round slowed by the machine's load slows both alike
            measured_overhead = statistics.median(a / b for a, b in zip(t_plan, t_sa)) - 1.0
    doc = {
        "model": model.graph.graph["name"], "config": config, "strategy": strategy, "device": device,
        "solver": p.solver, "dtype": model.graph.graph["dtype"],
        "budget_bytes": budget_b,
        "loss": r.loss,
        "gradients": {k: gradient_summary(v) for k, v in sorted(r.grads.items())},
        "peak_bytes": {"predicted": sim.peak, "measured": r.resident + r.measured_managed,
                       "allocator": r.allocator_peak, "predicted_with_workspace": sim.peak_ws},
        # the allocator's high-water mark over the budget (None without a budget): op temporaries
        # or interpreter objects beyond what the plan accounts for
        "allocator_over_budget": None if budget_b is None else r.allocator_peak > budget_b,
        "resident_bytes": {"predicted": sim.resident, "measured": r.resident},
        "managed_peak_bytes": {"predicted": sim.peak_managed, "measured": r.measured_managed},
        # the predicted step time's (cost and cache term), not the planner's recompute cost alone
        "overhead": {"predicted": sim.time / sa_sim.time - 1.0 if sa_sim.time else 0.0,
                     "measured": measured_overhead},
        "recomputes": sim.recomputes,
        "time_s": time_s, "steps": steps,
        # the C heap kept between steps (keep_heap), or glibc's default: step times depend on it
        "malloc": "kept" if heap_kept else "default",
    }
    if plot_file:
        plots.plot_memory(model, p.steps, sim, r, budget_b, plot_file, strategy)
    if as_json:
        emit_json(doc)
        return
    if trace:
        _print_trace(model, p.steps, backend)
    g = model.graph
    n_ops = len(g.graph["order"])
    n_params = sum(1 for _, d in g.nodes(data=True) if d["kind"] == "param")
    click.echo(f"model     {doc['model']} ({n_ops} ops, {n_params} parameters), {doc['dtype']}, {device}")
    click.echo(f"strategy  {strategy}" + (f" (solver: {p.solver})" if strategy == "budget" else ""))
    click.echo(f"loss      {r.loss:.6g}")
    click.echo("gradients")
    shown = sorted(r.grads.items(), key=lambda kv: _natural(kv[0]))  # body.2 before body.10
    for k, v in shown[:12]:
        click.echo(f"  {k}: {fmt_value(v)}")
    if len(shown) > 12:
        click.echo(f"  ... and {len(shown) - 12} more (--json lists every gradient)")
    rows = [
        ("resident", fmt_bytes(sim.resident), fmt_bytes(r.resident)),
        ("managed peak", fmt_bytes(sim.peak_managed), fmt_bytes(r.measured_managed)),
        ("peak (model)", fmt_bytes(sim.peak), fmt_bytes(r.resident + r.measured_managed)),
        ("peak with workspace / allocator", fmt_bytes(sim.peak_ws), fmt_bytes(r.allocator_peak)),
        ("compute overhead", fmt_pct(doc["overhead"]["predicted"]), fmt_pct(measured_overhead) if strategy != "store-all" else fmt_pct(0.0)),
        ("step time (median)", "-", fmt_time(time_s)),
    ]
    click.echo(table(rows, ["", "predicted", "measured"]))
    if budget_b is not None:
        # the budget bounds the peak with workspace; a plan over it was refused before running
        click.echo(f"budget    {fmt_bytes(budget_b)}: met (peak with workspace {fmt_bytes(sim.peak_ws)})")
        if doc["allocator_over_budget"]:
            click.echo(f"WARNING   the allocator's peak {fmt_bytes(r.allocator_peak)} is above the budget by "
                       f"{fmt_bytes(r.allocator_peak - budget_b)} (op temporaries the plan did not keep within it)")


def _natural(name):
    """A sort key that reads the numbers in a name as numbers: body.2.W before body.10.W."""
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", name)]


def _numbering(g):
    """The seed's numbering: inputs and parameters v-k..v0, op nodes v1..vn in topological order."""
    leaves = [v for v, d in g.nodes(data=True) if d["kind"] != "op"]
    num = {v: i - len(leaves) + 1 for i, v in enumerate(leaves)}
    num.update({v: i + 1 for i, v in enumerate(g.graph["order"])})
    return leaves, num


def _primal_rows(g, num, leaves, host, values):
    """The primal trace: (label, expression, value, node) per input, parameter and op computed."""
    rows = [(f"v{num[v]}", v, host[v], v) for v in leaves]
    for v in g.graph["order"]:
        if v in values:
            rows.append((f"v{num[v]}", f"{g.nodes[v]['op']}({', '.join(f'v{num[u]}' for u in g.nodes[v]['inputs'])})",
                         values[v], v))
    return rows


def _echo_rows(title, rows, width=5, tagged=False):
    click.echo(title)
    for label, expr, value, node in rows:
        tag = f"   [{node}]" if tagged and node not in (label, expr) else ""  # a leaf is named in its row
        click.echo(f"  {label:>{width}} = {expr:<24} = {fmt_value(value)}{tag}")


def _json_rows(rows):
    return [{"v": label, "expression": expr, "node": node, "value": gradient_summary(value)}
            for label, expr, value, node in rows]


def _reverse_trace(model, steps, backend):
    """The seed's §2.6 reverse-mode traces: the primal trace, then the adjoints v̄ in reverse."""
    from ..execute import Executor
    from ..session import device_leaves
    g = model.graph
    leaves, num = _numbering(g)
    seen = {}
    host = device_leaves(model, backend)
    Executor(g, model.joint, steps, backend).step(host, on_value=lambda x, a: seen.setdefault(x, backend.to_host(a)))
    primal = _primal_rows(g, num, leaves, {k: backend.to_host(v) for k, v in host.items()}, seen)
    adjoint = []
    for x in model.joint.graph["order"]:
        if not x.startswith(GRAD) or x not in seen:
            continue
        v = x[len(GRAD):]
        if v == g.graph["output"]:
            expr = "y\u0304 (seed)"
        else:
            terms = [f"v\u0304{num[w]}·∂v{num[w]}/∂v{num[v]}" for w in g.successors(v)
                     if g.nodes[w].get("grad") and g.nodes[w]["kind"] == "op"
                     for u in g.nodes[w]["inputs"] if u == v]
            expr = " + ".join(terms)
        adjoint.append((f"v\u0304{num[v]}", expr, seen[x], x))
    return {"mode": "reverse", "primal": primal, "output": f"v{num[g.graph['output']]}", "adjoint": adjoint}


def _forward_trace(model, wrt, backend):
    """The seed's §2.6 forward-mode traces: each value with its tangent v̇ = dv/d(wrt[0])."""
    import numpy as np

    from ..autodiff import jvp
    from ..model import leaf_values
    from ..model.graph import retarget
    g = model.graph
    leaves, num = _numbering(g)
    names = [v for v in leaves if g.nodes[v]["grad"] and not g.nodes[v]["dtype"].startswith("int")]
    target = wrt or (names[0] if names else None)
    if target is None:
        raise ConfigError("no input or parameter takes a gradient: name one with --wrt", file=model.path)
    retarget(g, wrt=[target])  # validates the name
    host = leaf_values(g)
    t = np.zeros(host[target].shape, dtype=host[target].dtype)
    t.reshape(-1)[0] = 1.0
    device = {k: backend.asarray(v) for k, v in host.items()}
    r = jvp(g, device, {target: backend.asarray(t)}, backend, record=True)
    values = {v: backend.to_host(a) for v, a, _ in r.trace}
    what = f"{target}[0]" if host[target].ndim else target
    tangent = [("v" + chr(0x307) + str(num[v]), "", t if v == target else np.zeros(()), v) for v in leaves]
    for v, _, tan in r.trace:
        d = g.nodes[v]
        terms = [f"∂v{num[v]}/∂v{num[u]}·v\u0307{num[u]}" for u in d["inputs"]]
        tangent.append(("v" + chr(0x307) + str(num[v]), " + ".join(terms),
                        tan if tan is not None else np.zeros(d["shape"]), v))
    return {"mode": "forward", "primal": _primal_rows(g, num, leaves, host, values),
            "output": f"v{num[g.graph['output']]}", "wrt": what, "tangent": tangent, "derivative": r.tangent}


def _print_trace(model, steps, backend):
    _echo_traces(_reverse_trace(model, steps, backend))


def _echo_traces(tr):
    _echo_rows("forward primal trace", tr["primal"], tagged=True)
    click.echo(f"      y = {tr['output']}")
    if tr["mode"] == "reverse":
        _echo_rows("reverse adjoint trace", tr["adjoint"], width=6)
    else:
        _echo_rows(f"forward tangent trace (v\u0307 = dv/d{tr['wrt']})", tr["tangent"], width=6)
        click.echo(f"  dy/d{tr['wrt']} = {fmt_value(tr['derivative'])}")


def _traces_doc(model, tr):
    doc = {"model": model.graph.graph["name"], "config": model.path, "mode": tr["mode"],
           "primal": _json_rows(tr["primal"]), "output": tr["output"]}
    if tr["mode"] == "reverse":
        doc["adjoint"] = _json_rows(tr["adjoint"])
    else:
        doc.update(wrt=tr["wrt"], tangent=_json_rows(tr["tangent"]), derivative=gradient_summary(tr["derivative"]))
    return doc


@click.command()
@config_arg
@click.option("--mode", default="reverse", show_default=True, type=click.Choice(["forward", "reverse"]))
@click.option("--wrt", help="Forward mode: the input or parameter whose first element carries the tangent.")
@set_opt
@json_opt
def trace(config, mode, wrt, sets, as_json):
    """Print the primal, tangent (forward) or adjoint (reverse) traces in the seed's notation."""
    if wrt is not None and mode == "reverse":  # it would be dropped without a word
        raise ConfigError("--wrt picks the input the tangent is taken along, in forward mode (--mode forward); "
                          "reverse mode gives every adjoint at once")
    keep_heap()
    model = load_model(config, overrides(sets))
    require_model(model, "trace")
    backend = get_backend("cpu")
    p, sim = make_plan(model.joint, "store-all", ix=model.index)
    # every value and gradient is copied to the host to be printed
    copies = sum(d["ram"] for _, d in model.joint.nodes(data=True))
    require_memory(model, sim.peak + copies, backend, "tracing this model",
                   "a store-all step and a copy of every value and gradient")
    tr = _reverse_trace(model, p.steps, backend) if mode == "reverse" else _forward_trace(model, wrt, backend)
    if as_json:
        emit_json(_traces_doc(model, tr))
    else:
        _echo_traces(tr)
