"""The command line: one click group; JSON and exit codes are decided here and nowhere else."""

import os
import statistics
import sys

import click

from . import __version__
from .backend import get_backend
from .errors import CheckFailed, CkptError, ConfigError
from .model.joint import GRAD
from .plan import STRATEGIES, plan as make_plan, plan_table, smallest_peak
from .report import emit_json, fmt_bytes, fmt_pct, fmt_time, fmt_value, gradient_summary, table
from .jsonio import write_json_atomic
from .model.costgraph import cost_graph_doc
from .session import (check_gradients, jacobian as jacobian_of, load_model, measure_costs, methods as methods_study,
                      numeric_study, raise_if_failed, require_memory, require_model, run_plan, swell as swell_study,
                      time_side_by_side, with_costs)
from .sizes import parse_budget


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
    """Bytes of a --memory-budget (None when not given)."""
    if text is None:
        return None
    return parse_budget(text, make_plan(model.joint, "store-all", ix=model.index)[1].peak)


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
@click.option("--plot-memory", "plot_file", type=click.Path(dir_okay=False),
              help="Draw the memory timeline, predicted and measured (PNG or SVG).")
@set_opt
@dtype_opt
@json_opt
def run(config, steps, strategy, budget, time_limit, device, trace, plot_file, sets, dtype, as_json):
    """Run forward+backward steps under a strategy; report loss, gradients, memory and time."""
    model = load_model(config, _overrides(sets), dtype)
    require_model(model, "run")
    budget_b = _budget(budget, model)
    backend = get_backend(device)
    p, sim = make_plan(model.joint, strategy, budget_b, time_limit=time_limit, ix=model.index)
    require_memory(model, sim.peak, backend)
    if plot_file:
        _pyplot()
    sa, sa_sim = make_plan(model.joint, "store-all", ix=model.index)
    if strategy == "store-all":
        r = run_plan(model, p.steps, backend, n_steps=steps)
        time_s, measured_overhead = r.time_s, None
    else:  # the plan's step times come from the side-by-side run with store-all
        r = run_plan(model, p.steps, backend, n_steps=0)
        t_plan, t_sa = time_side_by_side(model, [p.steps, sa.steps], backend, n_steps=steps)
        time_s = statistics.median(t_plan)
        measured_overhead = time_s / statistics.median(t_sa) - 1.0
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
        "time_s": time_s, "steps": steps,
    }
    if plot_file:
        _plot_memory(model, p.steps, sim, r, budget_b, plot_file, strategy)
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
        ("step time (median)", "-", fmt_time(time_s)),
    ]
    click.echo(table(rows, ["", "predicted", "measured"]))
    if budget_b is not None:
        click.echo(f"budget    {fmt_bytes(budget_b)}: " + ("met" if sim.peak <= budget_b else "EXCEEDED"))


def _numbering(g):
    """The seed's numbering: inputs and parameters v-k..v0, op nodes v1..vn in topological order."""
    leaves = [v for v, d in g.nodes(data=True) if d["kind"] != "op"]
    num = {v: i - len(leaves) + 1 for i, v in enumerate(leaves)}
    num.update({v: i + 1 for i, v in enumerate(g.graph["order"])})
    return leaves, num


def _print_primal(g, num, leaves, host, values):
    def name(v):
        return f"v{num[v]}"

    click.echo("forward primal trace")
    for v in leaves:
        click.echo(f"  {name(v):>5} = {v:<24} = {fmt_value(host[v])}")
    for v in g.graph["order"]:
        if v not in values:
            continue
        d = g.nodes[v]
        expr = f"{d['op']}({', '.join(name(u) for u in d['inputs'])})"
        label = f"   [{v}]" if v != name(v) else ""
        click.echo(f"  {name(v):>5} = {expr:<24} = {fmt_value(values[v])}{label}")
    click.echo(f"      y = {name(g.graph['output'])}")


def _print_trace(model, steps, backend):
    """The seed's §2.6 reverse-mode traces: the primal trace, then the adjoints v̄ in reverse."""
    from .execute import Executor
    from .session import device_leaves
    g = model.graph
    leaves, num = _numbering(g)
    seen = {}
    host = device_leaves(model, backend)
    Executor(g, model.joint, steps, backend).step(host, on_value=lambda x, a: seen.setdefault(x, backend.to_host(a)))
    _print_primal(g, num, leaves, {k: backend.to_host(v) for k, v in host.items()}, seen)
    click.echo("reverse adjoint trace")
    for x in model.joint.graph["order"]:
        if not x.startswith(GRAD) or x not in seen:
            continue
        v = x[len(GRAD):]
        bar = f"v\u0304{num[v]}"
        if v == g.graph["output"]:
            expr = "y\u0304 (seed)"
        else:
            terms = [f"v\u0304{num[w]}·∂v{num[w]}/∂v{num[v]}" for w in g.successors(v)
                     if g.nodes[w].get("grad") and g.nodes[w]["kind"] == "op"
                     for u in g.nodes[w]["inputs"] if u == v]
            expr = " + ".join(terms)
        click.echo(f"  {bar:>6} = {expr:<24} = {fmt_value(seen[x])}")


def _print_tangent_trace(model, wrt, backend):
    """The seed's §2.6 forward-mode traces: each value with its tangent v̇ = dv/d(wrt[0])."""
    import numpy as np

    from .autodiff import jvp
    from .model import leaf_values
    from .model.graph import retarget
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
    _print_primal(g, num, leaves, host, values)
    what = f"{target}[0]" if host[target].ndim else target
    click.echo(f"forward tangent trace (v\u0307 = dv/d{what})")
    for v in leaves:
        tv = t if v == target else np.zeros(())
        click.echo(f"  {'v' + chr(0x307) + str(num[v]):>6} = {'':<24} = {fmt_value(tv)}")
    for v, _, tan in r.trace:
        d = g.nodes[v]
        terms = [f"∂v{num[v]}/∂v{num[u]}·v\u0307{num[u]}" for u in d["inputs"]]
        click.echo(f"  {'v' + chr(0x307) + str(num[v]):>6} = {' + '.join(terms):<24} = "
                   f"{fmt_value(tan if tan is not None else np.zeros(d['shape']))}")
    click.echo(f"  dy/d{what} = {fmt_value(r.tangent)}")


@cli.command()
@config_arg
@click.option("--mode", default="reverse", show_default=True, type=click.Choice(["forward", "reverse"]))
@click.option("--wrt", help="Forward mode: the input or parameter whose first element carries the tangent.")
@set_opt
def trace(config, mode, wrt, sets):
    """Print the primal, tangent (forward) or adjoint (reverse) traces in the seed's notation."""
    model = load_model(config, _overrides(sets))
    require_model(model, "trace")
    backend = get_backend("cpu")
    if mode == "reverse":
        p, _ = make_plan(model.joint, "store-all", ix=model.index)
        _print_trace(model, p.steps, backend)
    else:
        _print_tangent_trace(model, wrt, backend)


# ---- jacobian, numeric -------------------------------------------------------------------------
@cli.command()
@config_arg
@click.option("--of", "of", metavar="NODE", help="The node to differentiate (default: the output).")
@click.option("--wrt", multiple=True, metavar="NAME", help="Inputs or parameters (repeatable; default: those with grad).")
@click.option("--mode", default="auto", show_default=True, type=click.Choice(["forward", "reverse", "auto"]))
@set_opt
@dtype_opt
@json_opt
def jacobian(config, of, wrt, mode, sets, dtype, as_json):
    """The full Jacobian: a column per forward pass or a row per reverse pass; auto picks fewer passes."""
    import numpy as np
    model = load_model(config, _overrides(sets), dtype)
    res = jacobian_of(model, of=of, wrt=list(wrt) or None, mode=mode)
    J = res.pop("jacobian")
    if as_json:
        res["jacobian"] = J.tolist()
        res["shape"] = list(J.shape)
        emit_json(res)
        return
    click.echo(f"d {res['of']} / d ({', '.join(res['wrt'])}): {res['outputs']} x {res['inputs']}")
    click.echo(f"mode      {res['reason']}")
    click.echo(f"passes    {res['passes']}, {fmt_time(res['time_s'])}, peak memory {fmt_bytes(res['peak_bytes'])}")
    mem = res["peak_bytes_by_mode"]
    click.echo(f"memory    forward mode {fmt_bytes(mem['forward'])} (no tape), reverse mode "
               f"{fmt_bytes(mem['reverse'])} (residuals stored for the backward pass)")
    if J.size <= 144:
        click.echo(np.array2string(J, precision=6, suppress_small=True, max_line_width=120))
    else:
        click.echo(f"J has {J.size} entries; norm {np.linalg.norm(J):.6g} (--json prints them all)")


@cli.command()
@config_arg
@click.option("--wrt", metavar="NAME", help="The input or parameter to perturb (default: the first with grad).")
@click.option("--plot", "plot_file", type=click.Path(dir_okay=False), help="Draw error against h on log axes (PNG or SVG).")
@set_opt
@json_opt
def numeric(config, wrt, plot_file, sets, as_json):
    """Numeric differences against reverse mode for h from 1e-1 to 1e-12: truncation vs round-off."""
    res = numeric_study(config, wrt=wrt, overrides=_overrides(sets))
    if plot_file:
        _plot_numeric(res, plot_file)
    if as_json:
        emit_json(res)
        return
    cols = [f"{m}_{d}" for d in ("float32", "float64") for m in ("forward", "backward", "central")]
    click.echo(f"d loss / d {res['wrt']} along a {res['direction']} direction: exact (reverse mode, float64) "
               f"= {res['exact']:.12g}")
    rows = []
    for r in res["steps"]:
        rows.append([f"{r['h']:.0e}"] + [f"{r[c]:.2e}" + ("*" if res["best"][c]["h"] == r["h"] else " ")
                                        for c in cols])
    click.echo("relative error of each difference (* marks the best h of each column)")
    click.echo(table(rows, ["h"] + [c.replace("_float", " f") for c in cols]))
    for d in ("float32", "float64"):
        b = res["best"][f"central_{d}"]
        f = res["best"][f"forward_{d}"]
        click.echo(f"{d}: central is best at h = {b['h']:.0e} (error {b['rel_error']:.1e}), forward at "
                   f"h = {f['h']:.0e} (error {f['rel_error']:.1e}); below those steps round-off "
                   f"(eps*|f|/h) overtakes truncation (h^2 for central, h for one-sided)")
    if plot_file:
        click.echo(f"wrote {plot_file}")


@cli.command()
@click.argument("config", required=False, type=click.Path(dir_okay=False))
@click.option("--swell", is_flag=True, help="The expression-swell experiment instead of a config.")
@click.option("--depth", default=8, show_default=True, type=click.IntRange(1, 12), help="Deepest composition in --swell.")
@click.option("--family", default="sinx", show_default=True, type=click.Choice(["sinx", "seed"]),
              help="--swell: x' = sin(x)*x + x, or the seed's f(x, x) = ln(x) + x*x - sin(x).")
@click.option("--plot", "plot_file", type=click.Path(dir_okay=False), help="--swell: sizes against depth on log axes.")
@set_opt
@json_opt
def methods(config, swell, depth, family, plot_file, sets, as_json):
    """Numeric, symbolic and automatic differentiation side by side, or the expression swell."""
    if swell:
        res = swell_study(depth, family)
        if plot_file:
            _plot_swell(res, plot_file)
        if as_json:
            emit_json(res)
            return
        click.echo(f"expression swell, family {family}: sizes in expression-tree nodes")
        click.echo(table([(r["depth"], r["function_size"], r["derivative_size"], r["derivative_cse_size"],
                           r["reverse_ops"]) for r in res["rows"]],
                         ["depth", "f (tree)", "f' (tree)", "f' (after CSE)", "reverse-mode ops"]))
        rows = res["rows"]
        if len(rows) >= 2:
            click.echo(f"per level: the derivative tree grows x{rows[-1]['derivative_size'] / rows[-2]['derivative_size']:.2f}, "
                       f"reverse mode adds {rows[-1]['reverse_ops'] - rows[-2]['reverse_ops']} ops")
        if plot_file:
            click.echo(f"wrote {plot_file}")
        return
    if config is None:
        raise ConfigError("methods needs a CONFIG, or --swell")
    res = methods_study(config, overrides=_overrides(sets))
    if as_json:
        emit_json(res)
        return
    click.echo(f"{res['model']}: f = {res['value']:.10g}; reverse mode runs {res['reverse_ops']} operations "
               f"({fmt_time(res['reverse_time_s'])} for every derivative at once)")
    if res["symbolic"]:
        click.echo(f"symbolic: f as one closed-form expression has {res['symbolic']['expression_size']} tree nodes")
    rows = []
    for r in res["inputs"]:
        rows.append([r["name"], f"{r['numeric']:.12g}", f"{r['symbolic']:.12g}" if "symbolic" in r else "-",
                     f"{r['reverse']:.12g}", f"{r['numeric_vs_reverse']:.1e}",
                     f"{r['symbolic_vs_reverse']:.1e}" if "symbolic" in r else "-",
                     r.get("derivative_size", "-"), fmt_time(r["numeric_time_s"]),
                     fmt_time(r["symbolic_time_s"]) if "symbolic" in r else "-"])
    click.echo(table(rows, ["d/d", "numeric (central)", "symbolic", "reverse mode", "num vs rev", "sym vs rev",
                            "f' tree nodes", "numeric time", "symbolic time"]))
    for r in res["inputs"]:
        if "derivative" in r:
            d = r["derivative"] if len(r["derivative"]) <= 200 else r["derivative"][:200] + " ..."
            click.echo(f"d/d{r['name']} = {d}")
            if "simplified" in r:
                click.echo(f"   simplified: {r['simplified']}")
    if res["symbolic_note"]:
        click.echo(res["symbolic_note"])


def _plot_swell(res, path):
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    depth = [r["depth"] for r in res["rows"]]
    for key, label in (("derivative_size", "symbolic derivative (tree)"),
                       ("derivative_cse_size", "symbolic derivative (after CSE)"),
                       ("reverse_ops", "reverse-mode operations")):
        ax.semilogy(depth, [r[key] for r in res["rows"]], marker="o", label=label)
    _finish(fig, ax, plt, path, "depth of composition", "size", f"expression swell ({res['family']})")


def _plot_frontier(doc, path):
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    mib = 2.0 ** 20
    pts = [r for r in doc["sweep"] if r["feasible"]]
    ax.plot([100 * r["overhead"] for r in pts], [r["peak_bytes"] / mib for r in pts], "-o", label="budget (frontier)")
    for r in doc["strategies"]:
        if r["name"] != "budget" and r["peak_bytes"] is not None:
            ax.plot([100 * r["overhead"]], [r["peak_bytes"] / mib], "s", ms=8, label=r["name"])
    if doc["budget_bytes"]:
        ax.axhline(doc["budget_bytes"] / mib, color="red", ls="--", lw=1, label="memory budget")
    _finish(fig, ax, plt, path, "compute overhead over store-all (%)", "predicted peak (MiB)",
            f"memory / recompute trade-off: {doc['model']}")


def _plot_memory(model, steps, sim, r, budget, path, strategy):
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=100)
    mib = 2.0 ** 20
    x = range(len(steps))
    ax.plot(x, [(sim.resident + b) / mib for b in sim.timeline], label="predicted (simulator)")
    ax.plot(x, [(r.resident + b) / mib for b in r.timeline], "--", label="measured (executor)")
    nodes = model.joint.nodes
    first_back = next((i for i, (k, n) in enumerate(steps) if k == "compute" and nodes[n]["kind"] == "backward"),
                      len(steps))
    ax.axvspan(0, first_back, color="tab:blue", alpha=0.07, label="forward")
    ax.axvspan(first_back, len(steps), color="tab:orange", alpha=0.07, label="backward")
    seen, rec = set(), []
    for i, (k, n) in enumerate(steps):
        if k == "compute" and nodes[n]["kind"] == "forward":
            if n in seen:
                rec.append(i)
            seen.add(n)
    if rec:
        ax.plot(rec, [(sim.resident + sim.timeline[i]) / mib for i in rec], "x", color="tab:red", ms=4,
                label="recompute")
    if budget:
        ax.axhline(budget / mib, color="red", ls=":", lw=1, label="budget")
    _finish(fig, ax, plt, path, "schedule step", "bytes live (MiB)",
            f"memory timeline: {model.joint.graph['name']}, {strategy}", grid=False, fontsize=8, loc="upper right")


def _pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError("--plot needs matplotlib: pip install 'ckpt-recompute[plot]'") from None
    return plt


def _finish(fig, ax, plt, path, xlabel, ylabel, title, grid=True, **legend):
    """Label the axes, add the grid and the legend, and save (every plot ends so)."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if grid:
        ax.grid(True, alpha=0.3)
    ax.legend(**legend)
    _save(fig, plt, path)


def _save(fig, plt, path):
    """Render beside the target, then rename: a crash never leaves half an image."""
    fig.tight_layout()
    tmp = path + ".tmp" + os.path.splitext(path)[1]
    try:
        fig.savefig(tmp)
        os.replace(tmp, path)
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot write the plot: {e}", file=path) from None
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)


def _plot_numeric(res, path):
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    hs = [r["h"] for r in res["steps"]]
    for d, style in (("float32", "--"), ("float64", "-")):
        for m in ("forward", "backward", "central"):
            ax.loglog(hs, [max(r[f"{m}_{d}"], 1e-17) for r in res["steps"]], style, marker="o", ms=3,
                      label=f"{m} ({d})")
    ax.invert_xaxis()
    _finish(fig, ax, plt, path, "step h", "relative error", f"numeric derivative of the loss along {res['wrt']}",
            fontsize=8)


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
    model = load_model(config, _overrides(sets), dtype)
    budget_b = _budget(budget, model)
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
           "costs": f"seconds measured on {device}" if device else "flops"}
    if plot_file and not sweep:
        raise ConfigError("--plot draws the --sweep frontier: add --sweep")
    if plot_file:
        _pyplot()  # say how to install matplotlib before the sweep, not after
    if sweep:
        doc["sweep"] = _sweep(model, points, time_limit)
    if plot_file:
        _plot_frontier(doc, plot_file)
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
            click.echo(f"{r['name']}: best known lower bound on overhead {fmt_pct(r['lower_bound_overhead'])}")
    if sweep:
        click.echo("\ntrade-off frontier (budget strategy)")
        srows = [(fmt_bytes(s["budget_bytes"]), fmt_bytes(s["peak_bytes"]) if s["feasible"] else "-",
                  fmt_pct(s["overhead"]) if s["feasible"] else "infeasible", s["solver"]) for s in doc["sweep"]]
        click.echo(table(srows, ["budget", "peak", "overhead", "solver"]))
    if plot_file:
        click.echo(f"wrote {plot_file}")


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


# ---- bench -------------------------------------------------------------------------------------
def _tolerance(text):
    t = str(text).strip()
    try:
        value = float(t[:-1]) / 100 if t.endswith("%") else float(t)
    except ValueError:
        raise ConfigError(f"cannot read time tolerance {text!r}: use 10% or 0.1") from None
    if value < 0:
        raise ConfigError(f"time tolerance must be >= 0, got {text!r}")
    return value


@cli.command()
@click.argument("configs", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--strategy", "strategies", multiple=True, type=click.Choice(STRATEGIES),
              help="Repeatable; default: all three.")
@click.option("--memory-budget", "budgets", multiple=True, metavar="SIZE",
              help="Budgets for the budget strategy (repeatable; default 0.8x of store-all's peak).")
@click.option("--steps", default=5, show_default=True, type=click.IntRange(min=1), help="Timed steps per entry.")
@click.option("--baseline", type=click.Path(dir_okay=False), help="Compare with this baseline (exit 1 on a regression).")
@click.option("--time-tolerance", default="10%", show_default=True, help="Allowed rise of the time ratio to store-all.")
@click.option("--update-baseline", is_flag=True, help="Write the results into --baseline (atomically) instead.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Also write the results as JSON here.")
@time_limit_opt
@set_opt
@json_opt
def bench(configs, strategies, budgets, steps, baseline, time_tolerance, update_baseline, output, time_limit, sets,
          as_json):
    """Measure memory and time per config and strategy; compare with or update a baseline."""
    from .bench import compare, load_baseline, run_bench, save_baseline
    tol = _tolerance(time_tolerance)
    if update_baseline and not baseline:
        raise ConfigError("--update-baseline needs --baseline FILE")
    base = None
    if baseline and (not update_baseline or os.path.exists(baseline)):
        base = load_baseline(baseline)  # a corrupt baseline stops here, before anything is written
    entries = run_bench(configs, strategies or STRATEGIES, budgets or ("0.8x",), steps=steps,
                        time_limit=time_limit, overrides=_overrides(sets), progress=not as_json)
    if output:
        write_json_atomic(output, {"entries": entries}, sort_keys=True)
    if update_baseline:
        merged = dict(base or {})
        merged.update(entries)
        save_baseline(baseline, merged)
    rows = compare(entries, base, tol) if base is not None and not update_baseline else []
    regressions = [r for r in rows if r[4] == "regression"]
    if as_json:
        emit_json({"entries": entries, "comparison": [dict(zip(("entry", "figure", "baseline", "current", "status"), r))
                                                      for r in rows], "regressions": len(regressions)})
    else:
        trows = [(k, "yes" if e.get("feasible") else "no", fmt_bytes(e["peak_predicted"]) if e.get("feasible") else "-",
                  fmt_bytes(e["peak_measured"]) if e.get("feasible") else "-",
                  fmt_bytes(e["peak_allocator"]) if e.get("feasible") else "-",
                  fmt_time(e.get("time_s")) if e.get("feasible") else "-",
                  f"{e['time_ratio']:.3f}" if e.get("feasible") else "-") for k, e in sorted(entries.items())]
        click.echo(table(trows, ["entry", "fits", "predicted", "measured", "allocator", "step time", "vs store-all"]))
        if update_baseline:
            click.echo(f"baseline {baseline} updated ({len(entries)} entries)")
        elif base is not None:
            changed = [r for r in rows if r[4] != "same"]
            if changed:
                click.echo("\nchanges against the baseline")
                fmt = lambda fig, v: "-" if v is None else (f"{v:.3f}" if fig == "time_ratio" else str(v))  # noqa: E731
                click.echo(table([(k, f, fmt(f, b), fmt(f, c), st) for k, f, b, c, st in changed],
                                 ["entry", "figure", "baseline", "current", "status"]))
            click.echo(f"{len(regressions)} regression(s), {sum(r[4] == 'improved' for r in rows)} improvement(s) "
                       f"to record, time tolerance {tol:.0%}")
    if regressions:
        raise CheckFailed(f"{len(regressions)} regression(s) against {baseline}")


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


