"""ckpt plan and ckpt export: planning without running, and the joint graph as a cost graph."""

import click

from .. import plots
from ..backend import get_backend
from ..errors import BudgetError, ConfigError
from ..jsonio import check_writable, write_json_atomic
from ..model.costgraph import cost_graph_doc
from ..plan import STRATEGIES, plan as make_plan, plan_table, smallest_peak
from ..report import Progress, emit_json, fmt_bytes, fmt_pct, fmt_time, table
from ..session import load_model, measure_costs, require_model, with_costs
from .common import (budget_bytes, budget_opt, check_plot_file, config_arg, dtype_opt, json_opt, keep_heap,
                     over_budget_message, overrides, refuse_overwriting_input, refuse_unused, set_opt, time_limit_opt)


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
@click.option("--show-saved", is_flag=True,
              help="List, per block, the values each plan keeps for backward and those it recomputes "
                   "(with --json: those lists and the schedule's steps).")
@click.option("--emit", type=click.Choice(["torch"]),
              help="With -o: write the plan in the form PyTorch executes (regions checkpointed with a "
                   "selective-checkpoint policy); needs a model imported by `ckpt import`.")
@click.option("-o", "--output", "emit_file", type=click.Path(dir_okay=False), help="Where --emit writes.")
@click.option("--compare/--no-compare", default=True, show_default=True,
              help="With --emit torch: also plan with ckpt's own (unrestricted) strategies at the same budget.")
@set_opt
@dtype_opt
@json_opt
def plan(config, budget, strategy, sweep, points, plot_file, time_limit, device, show_saved, emit, emit_file, compare,
         sets, dtype, as_json):
    """Plan without running: predicted peak and compute overhead of each strategy."""
    refuse_unused(sweep, "used only by --sweep (the number of budgets): add --sweep", "points")
    refuse_unused(emit, "used only with --emit torch (whether ckpt's own plan is made beside it)", "compare")
    if emit or emit_file:
        _check_emit_flags(config, emit, emit_file, strategy, sweep, plot_file, show_saved, as_json)
    model = load_model(config, overrides(sets), dtype)
    budget_b = budget_bytes(budget, model)
    if device is not None:
        require_model(model, "plan --device")
        keep_heap(device)  # the measured costs are of steps as `ckpt run` runs them
        model = with_costs(model, measure_costs(model, get_backend(device)))
    if emit or emit_file:
        return _emit(model, config, budget, emit, emit_file, time_limit, as_json, compare)
    names = STRATEGIES if strategy == "all" else (strategy,)
    if budget_b is None and "budget" in names:
        if strategy == "budget":
            raise ConfigError("the budget strategy needs --memory-budget")
        names = tuple(n for n in names if n != "budget")
    rows = plan_table(model.joint, names, budget_b, time_limit=time_limit, ix=model.index)
    doc = {"model": model.joint.graph["name"], "config": config, "budget_bytes": budget_b, "strategies": rows,
           "costs": f"seconds measured on {device}" if device else "nanoseconds (the calibrated cost model)"
           if model.graph is not None else "the cost graph's own units"}
    if plot_file and not sweep:
        raise ConfigError("--plot draws the --sweep frontier: add --sweep")
    if plot_file:
        check_plot_file(plot_file)  # before the sweep, not after it
    if sweep:
        with Progress(f"sweeping {points} budgets", enabled=not as_json):
            doc["sweep"] = _sweep(model, points, time_limit)
    if plot_file:
        plots.plot_frontier(doc, plot_file)
    if show_saved:
        _attach_saved(model, rows, budget_b, time_limit)
    # exit 3 after the report (--json still prints it): the budget strategy found no plan, or the
    # one fixed strategy asked for misses the budget; a comparison of every strategy exits 3 only
    # when the budget strategy fails
    unfit = next((r for r in rows if r["name"] == "budget" and r.get("error")), None) or \
        next((r for r in rows if strategy != "all" and not r["feasible"]), None)
    if as_json:
        emit_json(doc)
        _raise_unfit(unfit)
        return
    click.echo(f"model {doc['model']}: {len(model.index.fwd)} forward and {len(model.index.bwd)} gradient nodes; "
               f"budget {fmt_bytes(budget_b) if budget_b else 'none'}")
    def b(n):
        return "-" if n is None else fmt_bytes(n)

    # the peak shown is the one the budget bounds: with each step's workspace
    trows = [(r["name"], "yes" if r["feasible"] else "no", b(r.get("peak_with_workspace_bytes")), b(r["resident_bytes"]),
              b(r["managed_bytes"]), fmt_pct(r["overhead"]), fmt_pct(r["time_overhead"]),
              "-" if r["stored"] is None else r["stored"],
              "-" if r["recomputed"] is None else r["recomputed"], r["solver"], fmt_time(r["solve_time_s"]))
             + ((("-" if r["cost"] is None else fmt_time(r["cost"])),) if device else ())
             for r in rows]
    click.echo(table(trows, ["strategy", "fits", "peak", "resident", "managed", "overhead", "step time", "stored",
                             "recomputed", "solver", "solve time"] + (["step (predicted)"] if device else [])))
    if device:
        click.echo(f"costs: seconds per node measured on {device} (median of 3 profiled steps, synchronised "
                   "after every node); step (predicted) is their sum over the schedule")
    elif any(r.get("time_overhead") != r["overhead"] for r in rows):
        click.echo("overhead: the recompute cost, which the planners minimise; step time: the predicted step "
                   "time over store-all's, reads from cache counted faster")
    for r in rows:
        if r.get("error"):
            click.echo(f"{r['name']}: {r['error']}")
        elif not r["feasible"]:  # a fixed strategy's plan over the budget: say by how much
            click.echo(over_budget_message(r["name"], r["peak_with_workspace_bytes"], r["budget_bytes"],
                                           r["peak_bytes"]))
        if r.get("lower_bound_overhead") is not None and r["solver"] not in ("store-all fits", "chain-dp", "direct"):
            lb, gap = r["lower_bound_overhead"], r["overhead"] - r["lower_bound_overhead"]
            click.echo(f"{r['name']}: proved optimal" if gap <= 0 else
                       f"{r['name']}: no schedule costs less than {fmt_pct(lb)} (a lower bound): this plan is at "
                       f"most {gap * 100:.2f} points of overhead above the optimum")
        if r.get("planners"):
            click.echo(f"{r['name']}: each planner's plan: " + ", ".join(
                f"{k} {v if isinstance(v, str) else fmt_pct(v)}" for k, v in r["planners"].items()))
    if show_saved:
        _print_saved(rows)
    if sweep:
        click.echo("\ntrade-off frontier (budget strategy)")
        srows = [(fmt_bytes(s["budget_bytes"]), fmt_bytes(s["peak_with_workspace_bytes"]) if s["feasible"] else "-",
                  fmt_pct(s["overhead"]) if s["feasible"] else "infeasible",
                  # the chain DP is exact over its family and computes no bound of its own
                  fmt_pct(s["lower_bound_overhead"]) if s.get("lower_bound_overhead") is not None
                  and s["solver"] not in ("chain-dp", "direct") else "-",
                  s["solver"]) for s in doc["sweep"]]
        click.echo(table(srows, ["budget", "peak", "overhead", "lower bound", "solver"]))
    if plot_file:
        click.echo(f"wrote {plot_file}")
    _raise_unfit(unfit)


def _raise_unfit(row):
    if row is None:
        return
    if row.get("error"):
        raise BudgetError(row["error"], min_peak=row.get("min_peak_bytes"))
    raise BudgetError(over_budget_message(row["name"], row["peak_with_workspace_bytes"], row["budget_bytes"],
                                          row["peak_bytes"]))


@click.command()
@config_arg
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Where to write the JSON.")
@set_opt
@dtype_opt
@json_opt
def export(config, output, sets, dtype, as_json):
    """Write the model's joint forward+backward graph as node-link JSON with costs and bytes."""
    if output == "-" and as_json:
        raise ConfigError("-o - and --json both print on standard output: choose one")
    if output != "-":
        check_writable(output)
        refuse_overwriting_input(output, config)
        if not output.lower().endswith(".json"):  # ckpt reads a cost graph back only from a .json name
            raise ConfigError("export writes a cost graph, which `ckpt plan` reads from a .json file: end the "
                              "name in .json", file=output)
    model = load_model(config, overrides(sets), dtype)
    require_model(model, "export")
    write_json_atomic(output, cost_graph_doc(model.joint))  # `-o -`: standard output
    doc = {"output": output, "model": model.joint.graph["name"], "nodes": len(model.index.order),
           "forward": len(model.index.fwd), "backward": len(model.index.bwd), "edges": model.joint.number_of_edges()}
    if as_json:
        emit_json(doc)
        return
    click.echo(f"wrote {'standard output' if output == '-' else output}: {doc['nodes']} nodes ({doc['forward']} forward, "
               f"{doc['backward']} backward), {doc['edges']} edges", err=True)



def _sweep(model, points, time_limit):
    low, _ = smallest_peak(model.joint, model.index, time_limit=time_limit)
    _, sa_sim = make_plan(model.joint, "store-all", ix=model.index)
    high = sa_sim.peak
    budgets = sorted({int(low + (high - low) * k / (points - 1)) for k in range(points)})
    rows = plan_table(model.joint, ("budget",), None, time_limit=time_limit, ix=model.index, budgets=budgets)
    return rows


# ---- what each plan keeps and recomputes, per block (as JAX's print_saved_residuals) -------------
def block_of(model):
    """Node -> block: the region recorded by `ckpt import`, else the repeat prefix of the name
    (`body.3.h` -> `body.3`), else the top level."""
    from ..backends.torch_apply import read_meta
    meta = read_meta(model.path, required=False)
    regions = {k: v["region"] for k, v in meta["nodes"].items()} if meta else {}

    def block(x):
        if ":" in x and not x.startswith("grad:"):  # a saved residual (`NODE:OP`): its reader's block
            x = x.rsplit(":", 1)[0]
        if x in regions:
            return regions[x] or "(top)"
        return x.rsplit(".", 1)[0] if "." in x else "(top)"
    return block


def saved_values(joint, steps):
    """(kept, recomputed) forward values of a schedule: kept = computed once and live when the first
    gradient runs; recomputed = computed more than once."""
    count, live, kept = {}, set(), None
    for kind, x in steps:
        back = joint.nodes[x]["kind"] == "backward"
        if kind == "compute":
            if back and kept is None:
                kept = set(live)
            if not back:
                count[x] = count.get(x, 0) + 1
                live.add(x)
        else:
            live.discard(x)
    kept = {x for x in (kept or live) if count.get(x) == 1}
    return sorted(kept), sorted(x for x, n in count.items() if n > 1)


def _attach_saved(model, rows, budget_b, time_limit):
    block = block_of(model)
    for r in rows:
        if r.get("peak_bytes") is None:  # no plan (the budget strategy found none); a plan over the budget is shown
            continue
        p, _ = make_plan(model.joint, r["name"], r["budget_bytes"], time_limit=time_limit, ix=model.index)
        kept, rec = saved_values(model.joint, p.steps)
        ram = {x: model.joint.nodes[x]["ram"] for x in kept}
        blocks = {}
        for x in kept:
            blocks.setdefault(block(x), {"kept": [], "recomputed": [], "kept_bytes": 0})["kept"].append(x)
            blocks[block(x)]["kept_bytes"] += ram[x]
        for x in rec:
            blocks.setdefault(block(x), {"kept": [], "recomputed": [], "kept_bytes": 0})["recomputed"].append(x)
        r["saved"] = blocks
        r["steps"] = [[k, x] for k, x in p.steps]


def _print_saved(rows):
    for r in rows:
        if "saved" not in r:
            continue
        click.echo(f"\n{r['name']}: values kept for backward and values recomputed, per block")
        for b, v in sorted(r["saved"].items()):
            click.echo(f"  {b}: kept {fmt_bytes(v['kept_bytes'])}: {', '.join(v['kept']) or '-'}")
            if v["recomputed"]:
                click.echo(f"  {' ' * len(b)}  recomputed: {', '.join(v['recomputed'])}")


def _check_emit_flags(config, emit, emit_file, strategy, sweep, plot_file, show_saved, as_json):
    """Before any work: -o and --emit go together, and the report's flags, which --emit would drop
    without a word, are refused."""
    if not emit:
        raise ConfigError("plan -o writes a PyTorch plan, with --emit torch; for the report as a file use "
                          "--json > FILE")
    if not emit_file:
        raise ConfigError("--emit torch needs -o FILE, where the plan is written")
    ignored = [flag for flag, given in (("--sweep", sweep), ("--plot", plot_file), ("--show-saved", show_saved),
                                        (f"--strategy {strategy}", strategy not in ("all", "budget"))) if given]
    if ignored:
        raise ConfigError(f"--emit torch writes a PyTorch region plan at the budget; {', '.join(ignored)} "
                          f"{'does' if len(ignored) == 1 else 'do'} not apply to it: run `ckpt plan` without --emit "
                          "for that")
    if emit_file == "-" and as_json:
        raise ConfigError("-o - and --json both print on standard output: choose one")
    if emit_file != "-":
        check_writable(emit_file)  # now, not after planning
        refuse_overwriting_input(emit_file, config)


def _emit(model, config, budget, emit, emit_file, time_limit, as_json, compare=True):
    from ..backends.torch_plan import emit_torch_plan, summary_lines
    require_model(model, "plan --emit torch")
    doc = emit_torch_plan(model, budget, emit_file, time_limit=time_limit, compare=compare)
    if as_json:
        emit_json(doc)
        return
    for line in summary_lines(doc):
        click.echo(line, err=emit_file == "-")  # `-o -`: standard output holds the plan alone
