"""What every command shares: options, --set parsing and the budget parser."""

import math

import click

from ..errors import ConfigError
from ..sizes import parse_budget


def overrides(pairs):
    out = {}
    for p in pairs:
        shown = repr(p) if len(p) <= 60 else repr(p[:57] + "...")
        if "=" not in p:
            raise ConfigError(f"--set {shown}: use KEY=VALUE, for example --set B=64")
        k, v = p.split("=", 1)
        try:
            out[k.strip()] = int(v)
        except ValueError:  # not an integer, or more digits than Python converts
            raise ConfigError(f"--set {shown}: the value must be an integer") from None
    return out


def budget_bytes(text, model):
    """Bytes of a --memory-budget (None when not given)."""
    if text is None:
        return None
    return parse_budget(text, _store_all_peak(model))


class FiniteFloat(click.ParamType):
    """A float that is a real number (click's FloatRange lets `nan` and `inf` through), in a range."""

    name = "number"

    def __init__(self, low=None, low_open=False):
        self.low, self.low_open = low, low_open

    def convert(self, value, param, ctx):
        if isinstance(value, float) and math.isfinite(value):
            x = value
        else:
            try:
                x = float(value)
            except (TypeError, ValueError):
                self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(x):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        if self.low is not None and (x < self.low or (self.low_open and x == self.low)):
            self.fail(f"{value!r} must be {'>' if self.low_open else '>='} {self.low:g}", param, ctx)
        return x


config_arg = click.argument("config", type=click.Path(dir_okay=False))
json_opt = click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout, nothing else.")
set_opt = click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
                       help="Override a dim of the config (repeatable), e.g. --set B=64.")
dtype_opt = click.option("--dtype", type=click.Choice(["float16", "bfloat16", "float32", "float64"]),
                         help="Override the config's float dtype.")
budget_opt = click.option("--memory-budget", "budget", metavar="SIZE",
                          help="Peak memory allowed: 512MiB, 2GB, 1.5GiB, bytes, or 0.8x of store-all's peak.")
time_limit_opt = click.option("--time-limit", default=120.0, show_default=True, type=FiniteFloat(0.1),
                              help="Safety net: seconds the exact DAG solver (MILP) may take. Plans are bounded "
                                   "by counted work, not the clock; the report says if this limit struck.")


def _store_all_peak(model):
    """What `0.8x` is a fraction of: store-all's peak with its workspace, the most any plan needs."""
    from ..plan import plan
    return plan(model.joint, "store-all", ix=model.index)[1].peak_ws
