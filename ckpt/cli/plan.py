"""ckpt plan and ckpt export: planning without running, and the joint graph as a cost graph."""

import click

from .. import plots
from ..backend import get_backend
from ..errors import BudgetError, ConfigError
from ..jsonio import write_json_atomic
from ..model.costgraph import cost_graph_doc
from ..plan import STRATEGIES, plan as make_plan, plan_table, smallest_peak
from ..report import Progress, emit_json, fmt_bytes, fmt_pct, fmt_time, table
from ..session import load_model, measure_costs, require_model, with_costs
from .common import budget_bytes, budget_opt, config_arg, dtype_opt, json_opt, overrides, set_opt, time_limit_opt


@click.command()
@config_arg
@budget_opt
@click.option("--strategy", default="all", show_default=True, type=click.Choice(STRATEGIES + ("all",)))
@click.option("--sweep", is_flag=True, help="Print the trade-off frontier over budgets from the smallest feasible to store-all's peak.")
@click.option("--points", default=8, show_default=True, type=click.IntRange(min=2), help="Budgets in --sweep.")
@click.option("--plot", "plot_file", type=click.Path(dir_okay=False),
              help="With --sweep: draw the frontier, peak against overhead (PNG or SVG).")
@time_limit_opt
@click.option("--device", type=click.Choice(["cpu", "cuda"]),
              help="Time every forward and gradient node on this device and plan with the measured costs "
                   "(the report then predicts step times). Default: FLOP costs, nothing is run.")
@set_opt
@dtype_opt
@json_opt
def plan(config, budget, strategy, sweep, points, plot_file, time_limit, device, sets, dtype, as_json):
    """Plan without running: predicted peak and compute overhead of each strategy."""
    model = load_model(config, overrides(sets), dtype)
    budget_b = budget_bytes(budget, model)
    if device is not None:
        require_model(model, "plan --device")
        model = with_costs(model, measure_costs(model, get_backend(device)))
    names = STRATEGIES if strategy == "all" else (strategy,)
    if budget_b is None and "budget" in names:
        if strategy == "budget":
            raise ConfigError("the budget strategy needs --memory-budget")
        names = tuple(n for n in names if n != "budget")
    rows = plan_table(model.joint, names, budget_b, time_limit=time_limit, ix=model.index,
                      strict=strategy == "budget")
    doc = {"model": model.joint.graph["name"], "config": config, "budget_bytes": budget_b, "strategies": rows,
           "costs": f"seconds measured on {device}" if device else "nanoseconds (the calibrated cost model)"}
    if plot_file and not sweep:
        raise ConfigError("--plot draws the --sweep frontier: add --sweep")
    if plot_file:
        plots.pyplot()  # say how to install matplotlib before the sweep, not after
    if sweep:
        with Progress(f"sweeping {points} budgets", enabled=not as_json):
            doc["sweep"] = _sweep(model, points, time_limit)
    if plot_file:
        plots.plot_frontier(doc, plot_file)
    # the budget strategy that cannot fit is exit 3 (after the report: --json still prints it)
    unfit = next((r for r in rows if r["name"] == "budget" and r.get("error")), None)
    if as_json:
        emit_json(doc)
        _raise_unfit(unfit)
        return
    click.echo(f"model {doc['model']}: {len(model.index.fwd)} forward and {len(model.index.bwd)} gradient nodes; "
               f"budget {fmt_bytes(budget_b) if budget_b else 'none'}")
    def b(n):
        return "-" if n is None else fmt_bytes(n)

    trows = [(r["name"], "yes" if r["feasible"] else "no", b(r["peak_bytes"]), b(r["resident_bytes"]),
              b(r["managed_bytes"]), fmt_pct(r["overhead"]), "-" if r["stored"] is None else r["stored"],
              "-" if r["recomputed"] is None else r["recomputed"], r["solver"], fmt_time(r["solve_time_s"]))
             + ((("-" if r["cost"] is None else fmt_time(r["cost"])),) if device else ())
             for r in rows]
    click.echo(table(trows, ["strategy", "fits", "peak", "resident", "managed", "overhead", "stored",
                             "recomputed", "solver", "solve time"] + (["step (predicted)"] if device else [])))
    if device:
        click.echo(f"costs: seconds per node measured on {device} (median of 3 profiled steps, synchronised "
                   "after every node); step (predicted) is their sum over the schedule")
    for r in rows:
        if r.get("error"):
            click.echo(f"{r['name']}: {r['error']}")
        if r.get("lower_bound_overhead") is not None and r["solver"] not in ("store-all fits", "chain-dp", "direct"):
            click.echo(f"{r['name']}: best known lower bound on overhead {fmt_pct(r['lower_bound_overhead'])}"
                       + (" (proved optimal)" if r["lower_bound_overhead"] >= r["overhead"] else ""))
        if r.get("planners"):
            click.echo(f"{r['name']}: each planner's plan: " + ", ".join(
                f"{k} {v if isinstance(v, str) else fmt_pct(v)}" for k, v in r["planners"].items()))
    if sweep:
        click.echo("\ntrade-off frontier (budget strategy)")
        srows = [(fmt_bytes(s["budget_bytes"]), fmt_bytes(s["peak_bytes"]) if s["feasible"] else "-",
                  fmt_pct(s["overhead"]) if s["feasible"] else "infeasible", s["solver"]) for s in doc["sweep"]]
        click.echo(table(srows, ["budget", "peak", "overhead", "solver"]))
    if plot_file:
        click.echo(f"wrote {plot_file}")
    _raise_unfit(unfit)


def _raise_unfit(row):
    if row is not None:
        raise BudgetError(row["error"], min_peak=row.get("min_peak_bytes"))


@click.command()
@config_arg
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Where to write the JSON.")
@set_opt
@dtype_opt
def export(config, output, sets, dtype):
    """Write the model's joint forward+backward graph as node-link JSON with costs and bytes."""
    model = load_model(config, overrides(sets), dtype)
    require_model(model, "export")
    write_json_atomic(output, cost_graph_doc(model.joint))  # `-o -`: standard output
    click.echo(f"wrote {'standard output' if output == '-' else output}: {len(model.index.order)} nodes ({len(model.index.fwd)} forward, "
               f"{len(model.index.bwd)} backward), {model.joint.number_of_edges()} edges", err=True)



def _sweep(model, points, time_limit):
    low, _ = smallest_peak(model.joint, model.index, time_limit=time_limit)
    _, sa_sim = make_plan(model.joint, "store-all", ix=model.index)
    high = sa_sim.peak
    budgets = sorted({int(low + (high - low) * k / (points - 1)) for k in range(points)})
    rows = plan_table(model.joint, ("budget",), None, time_limit=time_limit, ix=model.index, budgets=budgets)
    return rows
