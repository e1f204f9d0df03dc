"""ckpt export-config, compile and impl: the seed's three ways to implement AD (§3) on one model.

export-config writes a traced Python model (operator overloading) as the YAML config (the
elemental library's form); compile writes a schedule out as a standalone step (source
transformation); impl times them side by side with the interpreter and hand-written numpy."""

import contextlib
import sys

import click

from ..errors import CheckFailed, ConfigError
from ..jsonio import check_writable, write_atomic
from ..plan import STRATEGIES, plan as make_plan
from ..report import emit_json, fmt_bytes, fmt_time, table
from ..session import load_model, require_model
from .common import (budget_bytes, budget_opt, config_arg, dtype_opt, json_opt, keep_heap, overrides,
                     refuse_overwriting_input, require_within_budget, set_opt, step_count, time_limit_opt)


@click.command("export-config")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Where to write the YAML.")
@set_opt
@dtype_opt
@json_opt
def export_config(model, output, sets, dtype, as_json):
    """Write a Python model function (MODEL.py[:NAME]) as the equivalent YAML config."""
    from ..frontends.python import is_python_model, to_yaml, trace_document
    if not is_python_model(model):
        raise ConfigError("export-config reads a Python model, MODEL.py[:NAME]; a YAML config is already one",
                          file=model)
    if output == "-" and as_json:
        raise ConfigError("-o - and --json both print on standard output: choose one")
    if output != "-":
        check_writable(output)
        refuse_overwriting_input(output, model)
        if output.lower().endswith(".json"):  # ckpt would read it back as a cost graph, not a config
            raise ConfigError("export-config writes a YAML config, and ckpt reads a .json file as a cost graph: "
                              "end the name in .yaml", file=output)
    ov = overrides(sets)
    if dtype:
        ov["dtype"] = dtype
    doc, _, _ = trace_document(model, ov)
    load_model(model, overrides(sets), dtype)  # the same checks as every command (shapes, scalar output)
    text = to_yaml(doc, source=model)
    write_atomic(output, lambda f: f.write(text))
    summary = {"output": output, "nodes": len(doc["nodes"]), "inputs": len(doc.get("inputs", {})),
               "params": len(doc.get("params", {}))}
    if as_json:
        emit_json(summary)
        return
    click.echo(f"wrote {'standard output' if output == '-' else output}: {summary['nodes']} nodes, "
               f"{summary['inputs']} inputs, {summary['params']} params", err=True)


@click.command("compile")
@config_arg
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Where to write the step module.")
@click.option("--strategy", default="store-all", show_default=True, type=click.Choice(STRATEGIES))
@budget_opt
@time_limit_opt
@click.option("--check", is_flag=True, help="Run the written step once: gradients bitwise equal to the interpreter's "
              "and the managed peak measured by tracemalloc equal to the prediction, else exit 1.")
@set_opt
@dtype_opt
@json_opt
def compile_step(config, output, strategy, budget, time_limit, check, sets, dtype, as_json):
    """Generate a standalone numpy module whose step(params, inputs) runs the planned forward and backward."""
    from ..backends.codegen import generate
    if output == "-" and as_json:
        raise ConfigError("-o - and --json both print on standard output: choose one")
    if output != "-":
        check_writable(output)  # before planning, which may take long, not after
        refuse_overwriting_input(output, config)
        if not output.endswith(".py"):  # `import step` finds a module only under a .py name
            raise ConfigError("compile writes a Python module: end the name in .py (step.py)", file=output)
    model = load_model(config, overrides(sets), dtype)
    require_model(model, "compile")
    if model.graph.graph["dtype"] == "bfloat16":
        raise ConfigError("compile needs a dtype numpy computes in: bfloat16 is for planning only "
                          "(use --dtype float32)", file=model.path)
    budget_b = budget_bytes(budget, model)
    p, sim = make_plan(model.joint, strategy, budget_b, time_limit=time_limit, ix=model.index)
    require_within_budget(strategy, sim, budget_b)  # exit 3, nothing written, as for the budget strategy
    source = generate(model, p.steps, strategy=strategy, source=config, sim=sim)
    write_atomic(output, lambda f: f.write(source))
    doc = {"output": output, "model": model.graph.graph["name"], "strategy": strategy, "solver": p.solver,
           "lines": source.count("\n"), "steps": len(p.steps), "recomputes": sim.recomputes,
           "peak_bytes": sim.peak, "resident_bytes": sim.resident, "managed_peak_bytes": sim.peak_managed}
    if budget_b is not None:  # met: a plan over it was refused above
        doc["budget_bytes"], doc["budget_met"] = budget_b, sim.peak_ws <= budget_b
    if check:
        keep_heap()
        doc["check"] = _check_compiled(model, p.steps, source, sim)
    to_err = output == "-"  # the module is standard output: the summary must not end up inside it
    if as_json:
        emit_json(doc)
    else:
        click.echo(f"wrote {output}: step(params, inputs) for {doc['model']} under {strategy}, {len(p.steps)} "
                   f"schedule steps, {sim.recomputes} recomputes; predicted peak {fmt_bytes(sim.peak)} "
                   f"(resident {fmt_bytes(sim.resident)}, managed {fmt_bytes(sim.peak_managed)})", err=to_err)
        if budget_b is not None:
            click.echo(f"budget    {fmt_bytes(budget_b)}: met (peak with "
                       f"workspace {fmt_bytes(sim.peak_ws)})", err=to_err)
        if check:
            c = doc["check"]
            click.echo(f"check     gradients {'bitwise equal to' if c['bitwise'] else 'DIFFER from'} the "
                       f"interpreter's; managed peak measured {fmt_bytes(c['measured_managed_bytes'])}, predicted "
                       f"{fmt_bytes(c['predicted_managed_bytes'])}: {'passed' if c['passed'] else 'FAILED'}",
                       err=to_err)
    if check and not doc["check"]["passed"]:
        raise CheckFailed("the compiled step does not match the interpreter or the prediction")


def _check_compiled(model, steps, source, sim):
    """The generated step against the interpreter (bitwise) and the simulator (managed bytes)."""
    from ..backend import get_backend
    from ..backends.codegen import load_module, managed_timeline, split_leaves
    from ..backends.compare import agreement
    from ..execute import Executor
    from ..session import device_leaves
    backend = get_backend("cpu")
    leaves = device_leaves(model, backend)
    ref = Executor(model.graph, model.joint, steps, backend).step(leaves)
    params, inputs = split_leaves(model.graph, leaves)
    loss, grads, timeline = managed_timeline(load_module(source).step, params, inputs)
    _, bitwise = agreement((ref.loss, ref.grads), (loss, grads))
    measured = max(timeline)
    return {"bitwise": bitwise, "measured_managed_bytes": measured, "predicted_managed_bytes": sim.peak_managed,
            "passed": bitwise and measured == sim.peak_managed}


@click.command("impl")
@config_arg
@click.option("--rounds", default=7, show_default=True, type=step_count,
              help="Interleaved rounds; each times every implementation once.")
@set_opt
@dtype_opt
@json_opt
def impl(config, rounds, sets, dtype, as_json):
    """Time one training step four ways: interpreter, operator-overloading tape, generated code, hand-written numpy."""
    from ..backends.compare import compare
    keep_heap()
    model = load_model(config, overrides(sets), dtype)
    require_model(model, "impl")
    if model.graph.graph["dtype"] == "bfloat16":
        raise ConfigError("impl runs steps: bfloat16 is for planning only (use --dtype float32)", file=model.path)
    with contextlib.redirect_stdout(sys.stderr):  # a model function that prints keeps stdout for --json
        doc = compare(model, rounds=rounds)
    if as_json:
        emit_json(doc)
        return
    click.echo(f"{doc['model']}: {doc['ops']} ops, {doc['elements']} elements in op outputs; store-all on the cpu, "
               f"median of {rounds} interleaved rounds")
    rows = []
    for r in doc["implementations"]:
        agree = "bitwise" if r["bitwise"] else f"{r['max_rel_diff']:.1e}"
        vs_hand = "-" if r["vs_hand_written"] is None else f"{r['vs_hand_written']:.2f}x"
        rows.append((r["name"], fmt_time(r["time_s"]), f"{r['vs_interpreter']:.2f}x", vs_hand, agree))
    click.echo(table(rows, ["implementation", "step", "vs interpreter", "vs hand-written", "gradients vs interpreter"]))
    if not any(r["name"] == "hand-written" for r in doc["implementations"]):
        click.echo("no hand-written step for this model (there are for mlp_deep, gpt_small and seed_chain)")
