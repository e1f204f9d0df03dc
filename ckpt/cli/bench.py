"""ckpt bench: memory and time per config and strategy, against a committed baseline."""

import math
import os

import click

from ..errors import BudgetError, CheckFailed, ConfigError
from ..jsonio import check_writable, write_json_atomic
from ..plan import STRATEGIES
from ..report import emit_json, fmt_bytes, fmt_time, table
from ..sizes import parse_budget
from .common import json_opt, keep_heap, overrides, refuse_overwriting_input, set_opt, step_count, time_limit_opt


def _tolerance(text):
    t = str(text).strip()
    try:
        value = float(t[:-1]) / 100 if t.endswith("%") else float(t)
    except ValueError:
        raise ConfigError(f"cannot read time tolerance {text!r}: use 10% or 0.1") from None
    if not math.isfinite(value):  # nan would flag no time regression ever
        raise ConfigError(f"time tolerance must be a finite number, got {text!r}")
    if value < 0:
        raise ConfigError(f"time tolerance must be >= 0, got {text!r}")
    if value >= 1 and not t.endswith("%"):  # `10` meant as 10% would allow a thousand percent
        raise ConfigError(f"time tolerance {text!r} is a fraction, {value:.0%}: write {t}% for {t} percent, or "
                          f"{value * 100:g}% if you mean that")
    return value


def _unmet_budgets(entries, configs, strategies, budgets, entry_key):
    """A line per (config, budget) that none of the fixed strategies' plans asked for meets."""
    lines = []
    for c in configs if budgets else ():
        rows = [(s, entries[entry_key(c, s, None)]) for s in strategies]
        for spec in budgets:
            if not any(e["budget_check"][spec]["met"] for _, e in rows):
                b = rows[0][1]["budget_check"][spec]["budget_bytes"]
                peaks = ", ".join(f"{s} {fmt_bytes(e['peak_with_workspace'])}" for s, e in rows)
                lines.append(f"{entry_key(c, '', None)[:-1]}: no plan asked for meets the memory budget {spec} "
                             f"({fmt_bytes(b)}): peaks with op workspace {peaks}; --strategy budget plans to a budget")
    return lines


@click.command()
@click.argument("configs", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--strategy", "strategies", multiple=True, type=click.Choice(STRATEGIES),
              help="Repeatable; default: all three.")
@click.option("--memory-budget", "budgets", multiple=True, metavar="SIZE",
              help="Budgets for the budget strategy (repeatable; default 0.8x of store-all's peak). With "
                   "only store-all or sqrt-n asked for, their plans are checked against it: exit 3 when none "
                   "meets it.")
@click.option("--steps", default=5, show_default=True, type=step_count, help="Timed steps per entry.")
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
    from ..bench import compare, entry_key, load_baseline, run_bench, update_baseline as merge_into
    configs = list(dict.fromkeys(configs))  # a config given twice is measured once; so is a strategy or budget
    strategies, budgets = tuple(dict.fromkeys(strategies)), tuple(dict.fromkeys(budgets))
    named = {}
    for c in configs:  # entries are named by the file's stem: two configs of one stem would overwrite
        name = entry_key(c, "", None)[:-1]
        if name in named:
            raise ConfigError(f"{named[name]} and {c} both make entries named {name!r} (an entry is named by its "
                              "file's stem, and a Python model's by its function too): give one another file name")
        named[name] = c
    # only fixed strategies asked for (store-all, sqrt-n: they plan to no budget) and a budget
    # given: their plans are checked against it, and a budget that none of them meets is exit 3
    fixed_check = tuple(budgets) if budgets and strategies and "budget" not in strategies else ()
    for spec in budgets:  # a budget that cannot be read is one line now, not after the first config ran
        parse_budget(spec, 1)
    tol = _tolerance(time_tolerance)
    if baseline == "":  # would be taken as no baseline: nothing compared, nothing said
        raise ConfigError("--baseline needs a file name, got an empty path")
    if update_baseline and not baseline:
        raise ConfigError("--update-baseline needs --baseline FILE")
    if output == "-" and as_json:
        raise ConfigError("-o - and --json both print on standard output: choose one")
    for path in (output if output != "-" else None, baseline if update_baseline else None):
        if path is not None:  # "" too: refused, not taken as no -o at all
            check_writable(path)  # a missing folder is one line now, not after the whole run
            refuse_overwriting_input(path, *configs)
    if output and output != "-" and baseline and os.path.exists(baseline) and os.path.samefile(output, baseline):
        raise ConfigError(f"-o {output} is the --baseline file: the results would replace the baseline in another "
                          "form; to record them in it use --update-baseline")
    keep_heap()
    base = None
    if baseline and (not update_baseline or os.path.exists(baseline)):
        base = load_baseline(baseline)  # a corrupt baseline stops here, before anything is written
    entries = run_bench(configs, strategies or STRATEGIES, budgets or ("0.8x",), steps=steps,
                        time_limit=time_limit, overrides=overrides(sets), progress=not as_json and output != "-",
                        baseline=None if update_baseline else base, time_tolerance=tol,
                        check_budgets=fixed_check)
    unmet = _unmet_budgets(entries, configs, strategies, fixed_check, entry_key)
    if output:
        write_json_atomic(output, {"entries": entries}, sort_keys=True)
    if update_baseline:
        merge_into(baseline, entries)
    rows = compare(entries, base, tol) if base is not None and not update_baseline else []
    regressions = [r for r in rows if r[4] == "regression"]
    if output == "-":
        pass  # the results document is standard output; nothing else goes there
    elif as_json:
        emit_json({"entries": entries, "comparison": [dict(zip(("entry", "figure", "baseline", "current", "status"), r))
                                                      for r in rows], "regressions": len(regressions)})
    else:
        trows = [(k, "yes" if e.get("feasible") and all(c["met"] for c in e.get("budget_check", {}).values())
                  else "no", fmt_bytes(e["peak_predicted"]) if e.get("feasible") else "-",
                  fmt_bytes(e["peak_measured"]) if e.get("feasible") else "-",
                  fmt_bytes(e["peak_allocator"]) if e.get("feasible") else "-",
                  fmt_time(e.get("time_s")) if e.get("feasible") else "-",
                  f"{e['time_ratio']:.3f}" if e.get("feasible") else "-") for k, e in sorted(entries.items())]
        click.echo(table(trows, ["entry", "fits", "predicted", "measured", "allocator", "CPU time/step", "vs store-all"]))
        for k, e in sorted(entries.items()):  # why a row says no
            if not e.get("feasible") and e.get("error"):
                click.echo(f"{k}: {e['error']}")
        for line in unmet:
            click.echo(line)
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
    if unmet:
        raise BudgetError(unmet[0] + (f" (and {len(unmet) - 1} more)" if len(unmet) > 1 else ""))
    if not any(e.get("feasible") for e in entries.values()):
        # nothing measured: every entry asked for was the budget strategy's, and none fits
        key, e = min(entries.items())
        raise BudgetError(f"no entry fits its budget, nothing was measured; {key}: {e['error']}")
