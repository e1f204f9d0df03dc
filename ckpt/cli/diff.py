"""ckpt jacobian, numeric, methods and check: the seed's ways of differentiating, side by side."""

import click

from .. import plots
from ..errors import ConfigError
from ..report import Progress, emit_json, fmt_bytes, fmt_time, table
from ..session import (check_gradients, jacobian as jacobian_of, load_model, methods as methods_study, numeric_study,
                       raise_if_failed, swell as swell_study)
from .common import (FiniteFloat, check_plot_file, config_arg, dtype_opt, json_opt, keep_heap, overrides,
                     refuse_unused, set_opt)


@click.command()
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
    keep_heap()
    model = load_model(config, overrides(sets), dtype)
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


@click.command()
@config_arg
@click.option("--wrt", metavar="NAME", help="The input or parameter to perturb (default: the first with grad).")
@click.option("--plot", "plot_file", type=click.Path(dir_okay=False), help="Draw error against h on log axes (PNG or SVG).")
@set_opt
@json_opt
def numeric(config, wrt, plot_file, sets, as_json):
    """Numeric differences against reverse mode for h from 1e-1 to 1e-12: truncation vs round-off."""
    keep_heap()
    if plot_file:
        check_plot_file(plot_file)
    res = numeric_study(config, wrt=wrt, overrides=overrides(sets))
    if plot_file:
        plots.plot_numeric(res, plot_file)
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


@click.command()
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
    refuse_unused(swell, "used only by the --swell study: add --swell", "depth", "family")
    refuse_unused(not swell, "--swell studies built-in expressions, not a model: drop one or the other", "config",
                  "sets")
    if swell:
        if plot_file:
            check_plot_file(plot_file)
        res = swell_study(depth, family)
        if plot_file:
            plots.plot_swell(res, plot_file)
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
    if plot_file:
        raise ConfigError("--plot draws the --swell figure: add --swell (methods CONFIG has no plot)")
    keep_heap()  # it times reverse mode against the others, steps as `ckpt run` runs them
    res = methods_study(config, overrides=overrides(sets))
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



@click.command()
@config_arg
@click.option("--method", default="central", show_default=True, type=click.Choice(["central", "forward", "backward"]))
@click.option("--step", type=FiniteFloat(0, low_open=True), help="Finite-difference step h.")
@click.option("--tol", type=FiniteFloat(0, low_open=True), help="Largest relative error that passes.")
@set_opt
@json_opt
def check(config, method, step, tol, sets, as_json):
    """Compare reverse-mode gradients with numeric differences in float64 (exit 1 on failure)."""
    keep_heap()
    with Progress("checking gradients", enabled=not as_json) as bar:
        res = check_gradients(config, method=method, step=step, tol=tol, overrides=overrides(sets),
                              progress=bar)
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
