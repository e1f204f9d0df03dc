"""ckpt import and ckpt torch-check: the bridge to PyTorch (torch is an optional extra)."""

import click

from ..report import emit_json
from .common import json_opt, seed_type, step_count

input_opt = click.option("--input", "inputs", multiple=True, metavar="NAME=8x128[:int64]",
                         help="An argument of the module's forward: its shape, and its dtype when not the "
                              "module's float dtype (repeat for each argument).")


@click.command(name="import")
@click.argument("target", metavar="MODEL.py:FACTORY")
@input_opt
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="model.yaml (a ckpt config, with model.npz and model.torch.json beside it) or graph.json "
                   "(a cost graph: plannable even where ckpt cannot run an op).")
@click.option("--seed", default=0, show_default=True, type=seed_type, help="Seed of the example inputs saved with the weights.")
@json_opt
def import_(target, inputs, output, seed, as_json):
    """Trace a PyTorch module (its forward returns the loss) into a ckpt config or a cost graph."""
    import os

    from ..errors import ConfigError
    from ..jsonio import check_writable
    from ..frontends.torch_import import import_model
    if os.path.splitext(output)[1].lower() not in (".yaml", ".yml", ".json"):
        # the suffix says which of the two is written: a config other commands read as YAML, or a cost graph
        raise ConfigError("import writes a ckpt config (-o model.yaml, with model.npz and model.torch.json "
                          "beside it) or a cost graph (-o graph.json): end the name in .yaml or .json", file=output)
    check_writable(output)  # before the trace, not after it
    if not output.lower().endswith(".json"):
        # the config's two companions too: one refused after the others are written would leave a
        # config naming weights that are not there, or a set from two different imports
        stem = os.path.splitext(output)[0]
        for companion in (stem + ".npz", stem + ".torch.json"):
            check_writable(companion)
    r = import_model(target, inputs, output, seed=seed)
    if as_json:
        emit_json(r)
        return
    if "cost_graph" in r:
        click.echo(f"wrote {output}: a cost graph of {r['forward']} forward ops ({r['nodes']} nodes); "
                   f"plan it with `ckpt plan {output}`")
    else:
        click.echo(f"wrote {output} ({r['nodes']} nodes, {r['params']} parameters), {r['weights']} "
                   f"(weights and example inputs) and {r['torch_meta']} (regions: {len(r['regions'])})")


@click.command(name="torch-check")
@click.argument("target", metavar="MODEL.py:FACTORY")
@click.option("--plan", "plan_file", required=True, type=click.Path(dir_okay=False),
              help="A plan written by `ckpt plan MODEL.yaml --emit torch -o plan.json`.")
@input_opt
@click.option("--steps", default=3, show_default=True, type=step_count, help="Timed steps of each (median).")
@click.option("--seed", default=0, show_default=True, type=seed_type)
@click.option("--device", default="cpu", show_default=True, type=click.Choice(["cpu", "cuda"]),
              help="Where PyTorch runs the step (cuda adds torch.cuda.max_memory_allocated).")
@json_opt
def torch_check(target, plan_file, inputs, steps, seed, device, as_json):
    """Run the training step in PyTorch with and without the plan, beside ckpt's prediction.

    Bytes held for backward, step times and gradients; exit 1 when a figure disagrees."""
    from ..backends.torch_check import check, report_lines
    r = check(target, plan_file, inputs, steps=steps, seed=seed, device=device)
    if as_json:
        emit_json(r)
    else:
        for line in report_lines(r):
            click.echo(line)
    if not r["passed"]:
        from ..errors import CheckFailed
        raise CheckFailed("; ".join(r["failures"]))
