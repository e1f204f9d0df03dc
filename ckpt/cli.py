"""The command line: one click group; JSON and exit codes are decided here and nowhere else."""

import sys

import click

from . import __version__
from .backend import get_backend
from .errors import CkptError, ConfigError
from .model.joint import GRAD
from .plan import STRATEGIES, plan as make_plan, plan_table, smallest_peak
from .report import emit_json, fmt_bytes, fmt_pct, fmt_time, fmt_value, gradient_summary, table
from .model.costgraph import cost_graph_doc, write_json_atomic
from .session import (check_gradients, load_model, raise_if_failed, require_memory, require_model, run_plan,
                      time_side_by_side)
from .sizes import parse_size


def _overrides(pairs):
    out = {}
    for p in pairs:
        if "=" not in p:
            raise ConfigError(f"--set {p!r}: use KEY=VALUE, for example --set B=64")
        k, v = p.split("=", 1)
        try:
            out[k.strip()] = int(v)
        except ValueError:
            raise ConfigError(f"--set {p!r}: the value must be an integer") from None
    return out


def _budget(text, model):
    """Bytes from `512MiB`, `2GB`, plain bytes, or a fraction of store-all's peak such as `0.8x`."""
    if text is None:
        return None
    t = str(text).strip()
    if t.lower().endswith("x"):
        try:
            frac = float(t[:-1])
        except ValueError:
            raise ConfigError(f"cannot read memory budget {text!r}") from None
        if frac <= 0:
            raise ConfigError(f"memory budget must be positive, got {text!r}")
        _, sim = make_plan(model.joint, "store-all", ix=model.index)
        return int(frac * sim.peak)
    return parse_size(t, what="memory budget")


config_arg = click.argument("config", type=click.Path(dir_okay=False))
json_opt = click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout, nothing else.")
set_opt = click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
                       help="Override a dim of the config (repeatable), e.g. --set B=64.")
dtype_opt = click.option("--dtype", type=click.Choice(["float16", "bfloat16", "float32", "float64"]),
                         help="Override the config's float dtype.")
budget_opt = click.option("--memory-budget", "budget", metavar="SIZE",
                          help="Peak memory allowed: 512MiB, 2GB, 1.5GiB, bytes, or 0.8x of store-all's peak.")
time_limit_opt = click.option("--time-limit", default=10.0, show_default=True, type=click.FloatRange(min=0.1),
                              help="Seconds the exact DAG solver (MILP) may take before the heuristic answers.")


class _Group(click.Group):
    """Turns ckpt's typed errors into one line on stderr and the error's exit code."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except CkptError as e:
            click.echo(f"ckpt: error: {e}", err=True)
            ctx.exit(e.exit_code)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ckpt")
def cli():
    """ckpt: what to keep, what to recompute, and what it costs, for training deep networks."""


# ---- run ---------------------------------------------------------------------------------------
@cli.command()
@config_arg
@click.option("--steps", default=5, show_default=True, type=click.IntRange(min=1), help="Timed steps.")
@click.option("--strategy", default="store-all", show_default=True, type=click.Choice(STRATEGIES))
@budget_opt
@time_limit_opt
@click.option("--device", default="cpu", show_default=True, type=click.Choice(["cpu", "cuda"]))
@click.option("--trace", is_flag=True, help="Print the primal and adjoint traces in the seed's notation.")
@set_opt
@dtype_opt
@json_opt
def run(config, steps, strategy, budget, time_limit, device, trace, sets, dtype, as_json):
    """Run forward+backward steps under a strategy; report loss, gradients, memory and time."""
    model = load_model(config, _overrides(sets), dtype)
    require_model(model, "run")
    budget_b = _budget(budget, model)
    backend = get_backend(device)
    p, sim = make_plan(model.joint, strategy, budget_b, time_limit=time_limit, ix=model.index)
    require_memory(model, sim.peak, backend)
    sa, sa_sim = make_plan(model.joint, "store-all", ix=model.index)
    r = run_plan(model, p.steps, backend, n_steps=steps)
    measured_overhead = None
    if strategy != "store-all":
        t_plan, t_sa = time_side_by_side(model, [p.steps, sa.steps], backend, n_steps=steps)
        measured_overhead = t_plan / t_sa - 1.0
    doc = {
        "model": model.graph.graph["name"], "config": config, "strategy": strategy, "device": device,
        "solver": p.solver, "dtype": model.graph.graph["dtype"],
        "budget_bytes": budget_b,
        "loss": r.loss,
        "gradients": {k: gradient_summary(v) for k, v in sorted(r.grads.items())},
        "peak_bytes": {"predicted": sim.peak, "measured": r.resident + r.measured_managed,
                       "allocator": r.allocator_peak},
        "resident_bytes": {"predicted": sim.resident, "measured": r.resident},
        "managed_peak_bytes": {"predicted": sim.peak_managed, "measured": r.measured_managed},
        "overhead": {"predicted": sim.cost / sa_sim.cost - 1.0 if sa_sim.cost else 0.0,
                     "measured": measured_overhead},
        "recomputes": sim.recomputes,
        "time_s": r.time_s, "steps": steps,
    }
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
    shown = sorted(r.grads.items())
    for k, v in shown[:12]:
        click.echo(f"  {k}: {fmt_value(v)}")
    if len(shown) > 12:
        click.echo(f"  ... and {len(shown) - 12} more (--json lists every gradient)")
    rows = [
        ("resident", fmt_bytes(sim.resident), fmt_bytes(r.resident)),
        ("managed peak", fmt_bytes(sim.peak_managed), fmt_bytes(r.measured_managed)),
        ("peak (model)", fmt_bytes(sim.peak), fmt_bytes(r.resident + r.measured_managed)),
        ("allocator peak", "-", fmt_bytes(r.allocator_peak)),
        ("compute overhead", fmt_pct(doc["overhead"]["predicted"]), fmt_pct(measured_overhead) if strategy != "store-all" else fmt_pct(0.0)),
        ("step time (median)", "-", fmt_time(r.time_s)),
    ]
    click.echo(table(rows, ["", "predicted", "measured"]))
    if budget_b is not None:
        click.echo(f"budget    {fmt_bytes(budget_b)}: " + ("met" if sim.peak <= budget_b else "EXCEEDED"))


def _print_trace(model, steps, backend):
    """The seed's §2.6 traces: v-k..v0 for inputs and parameters, v1..vn for ops, bars for adjoints."""
    from .execute import Executor
    from .session import device_leaves
    g = model.graph
    leaves = [v for v, d in g.nodes(data=True) if d["kind"] != "op"]
    num = {v: i - len(leaves) + 1 for i, v in enumerate(leaves)}
    num.update({v: i + 1 for i, v in enumerate(g.graph["order"])})
    seen = {}
    host = device_leaves(model, backend)
    Executor(g, model.joint, steps, backend).step(host, on_value=lambda x, a: seen.setdefault(x, backend.to_host(a)))

    def name(v):
        return f"v{num[v]}"

    click.echo("forward primal trace")
    for v in leaves:
        click.echo(f"  {name(v):>5} = {v:<24} = {fmt_value(backend.to_host(host[v]))}")
    for v in g.graph["order"]:
        if v not in seen:
            continue
        d = g.nodes[v]
        expr = f"{d['op']}({', '.join(name(u) for u in d['inputs'])})"
        label = f"   [{v}]" if v != name(v) else ""
        click.echo(f"  {name(v):>5} = {expr:<24} = {fmt_value(seen[v])}{label}")
    click.echo(f"      y = {name(g.graph['output'])}")
    click.echo("reverse adjoint trace")
    for x in model.joint.graph["order"]:
        if not x.startswith(GRAD) or x not in seen:
            continue
        v = x[len(GRAD):]
        bar = f"v\u0304{num[v]}"
        if v == g.graph["output"]:
            expr = "y\u0304 (seed)"
        else:
            terms = [f"v\u0304{num[w]}·∂{name(w)}/∂{name(v)}" for w in g.successors(v)
                     if g.nodes[w].get("grad") and g.nodes[w]["kind"] == "op"
                     for u in g.nodes[w]["inputs"] if u == v]
            expr = " + ".join(terms)
        click.echo(f"  {bar:>6} = {expr:<24} = {fmt_value(seen[x])}")


# ---- check -------------------------------------------------------------------------------------
@cli.command()
@config_arg
@click.option("--method", default="central", show_default=True, type=click.Choice(["central", "forward", "backward"]))
@click.option("--step", type=click.FloatRange(min=0, min_open=True), help="Finite-difference step h.")
@click.option("--tol", type=click.FloatRange(min=0, min_open=True), help="Largest relative error that passes.")
@set_opt
@json_opt
def check(config, method, step, tol, sets, as_json):
    """Compare reverse-mode gradients with numeric differences in float64 (exit 1 on failure)."""
    res = check_gradients(config, method=method, step=step, tol=tol, overrides=_overrides(sets))
    if as_json:
        emit_json(res)
    else:
        worst = {}
        for row in res["checks"]:
            if row["name"] not in worst or row["rel_error"] > worst[row["name"]]["rel_error"]:
                worst[row["name"]] = row
        rows = [(k, r["direction"], f"{r['numeric']:.10g}", f"{r['reverse']:.10g}", f"{r['rel_error']:.2e}")
                for k, r in sorted(worst.items())]
        click.echo(f"{method} differences, h = {res['step']:g}, float64; worst direction per gradient:")
        click.echo(table(rows, ["gradient", "direction", "numeric", "reverse mode", "rel. error"]))
        verdict = "passed" if res["passed"] else "FAILED"
        click.echo(f"{verdict}: worst relative error {res['worst_rel_error']:.3g} "
                   f"(tolerance {res['tolerance']:g}; differences under the round-off level "
                   f"{res['roundoff']:.1e} pass; {len(res['checks'])} directions)")
    raise_if_failed(res)


# ---- plan --------------------------------------------------------------------------------------
@cli.command()
@config_arg
@budget_opt
@click.option("--strategy", default="all", show_default=True, type=click.Choice(STRATEGIES + ("all",)))
@click.option("--sweep", is_flag=True, help="Print the trade-off frontier over budgets from the smallest feasible to store-all's peak.")
@click.option("--points", default=8, show_default=True, type=click.IntRange(min=2), help="Budgets in --sweep.")
@time_limit_opt
@set_opt
@dtype_opt
@json_opt
def plan(config, budget, strategy, sweep, points, time_limit, sets, dtype, as_json):
    """Plan without running: predicted peak and compute overhead of each strategy."""
    model = load_model(config, _overrides(sets), dtype)
    budget_b = _budget(budget, model)
    names = STRATEGIES if strategy == "all" else (strategy,)
    if budget_b is None and "budget" in names:
        if strategy == "budget":
            raise ConfigError("the budget strategy needs --memory-budget")
        names = tuple(n for n in names if n != "budget")
    rows = plan_table(model.joint, names, budget_b, time_limit=time_limit, ix=model.index,
                      strict=strategy == "budget")
    doc = {"model": model.joint.graph["name"], "config": config, "budget_bytes": budget_b, "strategies": rows}
    if sweep:
        doc["sweep"] = _sweep(model, points, time_limit)
    if as_json:
        emit_json(doc)
        return
    click.echo(f"model {doc['model']}: {len(model.index.fwd)} forward and {len(model.index.bwd)} gradient nodes; "
               f"budget {fmt_bytes(budget_b) if budget_b else 'none'}")
    def b(n):
        return "-" if n is None else fmt_bytes(n)

    trows = [(r["name"], "yes" if r["feasible"] else "no", b(r["peak_bytes"]), b(r["resident_bytes"]),
              b(r["managed_bytes"]), fmt_pct(r["overhead"]), "-" if r["stored"] is None else r["stored"],
              "-" if r["recomputed"] is None else r["recomputed"], r["solver"], fmt_time(r["solve_time_s"]))
             for r in rows]
    click.echo(table(trows, ["strategy", "fits", "peak", "resident", "managed", "overhead", "stored",
                             "recomputed", "solver", "solve time"]))
    for r in rows:
        if r.get("error"):
            click.echo(f"{r['name']}: {r['error']}")
        if r.get("lower_bound_overhead") is not None and r["solver"] not in ("store-all fits", "chain-dp", "direct"):
            click.echo(f"{r['name']}: best known lower bound on overhead {fmt_pct(r['lower_bound_overhead'])}")
    if sweep:
        click.echo("\ntrade-off frontier (budget strategy)")
        srows = [(fmt_bytes(s["budget_bytes"]), fmt_bytes(s["peak_bytes"]) if s["feasible"] else "-",
                  fmt_pct(s["overhead"]) if s["feasible"] else "infeasible", s["solver"]) for s in doc["sweep"]]
        click.echo(table(srows, ["budget", "peak", "overhead", "solver"]))


# ---- export ------------------------------------------------------------------------------------
@cli.command()
@config_arg
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Where to write the JSON.")
@set_opt
@dtype_opt
def export(config, output, sets, dtype):
    """Write the model's joint forward+backward graph as node-link JSON with costs and bytes."""
    model = load_model(config, _overrides(sets), dtype)
    require_model(model, "export")
    try:
        write_json_atomic(output, cost_graph_doc(model.joint))
    except OSError as e:
        raise ConfigError(f"cannot write: {e.strerror}", file=output) from None
    click.echo(f"wrote {output}: {len(model.index.order)} nodes ({len(model.index.fwd)} forward, "
               f"{len(model.index.bwd)} backward), {model.joint.number_of_edges()} edges", err=True)


def _sweep(model, points, time_limit):
    low, _ = smallest_peak(model.joint, model.index, time_limit=time_limit)
    _, sa_sim = make_plan(model.joint, "store-all", ix=model.index)
    high = sa_sim.peak
    budgets = sorted({int(low + (high - low) * k / (points - 1)) for k in range(points)})
    rows = plan_table(model.joint, ("budget",), None, time_limit=time_limit, ix=model.index, budgets=budgets)
    return rows


def main():
    try:
        rv = cli.main(standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        click.echo("ckpt: aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        click.echo(f"ckpt: error: {e.format_message()}", err=True)
        sys.exit(e.exit_code)
    except BrokenPipeError:
        sys.exit(0)
    sys.exit(rv if isinstance(rv, int) else 0)


