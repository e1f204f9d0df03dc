"""What every command shares: options, --set parsing, the budget parser and the process's heap."""

import math
import os

import click

from ..errors import BudgetError, ConfigError
from ..sizes import MAX_STEPS, fmt_bytes, parse_budget

# A count of timed steps or rounds: at least one, at most sizes.MAX_STEPS.
step_count = click.IntRange(1, MAX_STEPS)
# A seed as the config takes it (numpy's and torch's generators take no negative or wider one).
seed_type = click.IntRange(0, 2**63 - 1)


def overrides(pairs):
    out = {}
    for p in pairs:
        shown = repr(p) if len(p) <= 60 else repr(p[:57] + "...")
        if "=" not in p:
            raise ConfigError(f"--set {shown}: use KEY=VALUE, for example --set B=64")
        k, v = p.split("=", 1)
        try:
            value = int(v)
        except ValueError:  # not an integer, or more digits than Python converts
            raise ConfigError(f"--set {shown}: the value must be an integer") from None
        if value < 1:  # dims are sizes; said here, not at the config's dims line
            raise ConfigError(f"--set {shown}: a size must be a positive integer")
        if k.strip() in out and out[k.strip()] != value:  # the last would win without a word
            raise ConfigError(f"--set {k.strip()} is given twice ({out[k.strip()]} and {value}): give it once")
        out[k.strip()] = value
    return out


def budget_bytes(text, model):
    """Bytes of a --memory-budget (None when not given)."""
    if text is None:
        return None
    return parse_budget(text, _store_all_peak(model))


def refuse_unused(used, why, *names):
    """Refuse options typed on the command line that the command, as asked, would drop without a
    word (`methods CONFIG --depth 5`); a default is not typed, so it is never refused."""
    ctx = click.get_current_context()
    typed = [n for n in names if ctx.get_parameter_source(n) == click.core.ParameterSource.COMMANDLINE]
    if typed and not used:
        flags = []
        for n in typed:
            p = next(p for p in ctx.command.params if p.name == n)
            flags.append("/".join(p.opts[:1] + p.secondary_opts) if p.param_type_name == "option"
                         else p.human_readable_name)
        raise ConfigError(f"{', '.join(flags)}: {why}")


def refuse_overwriting_input(output, *inputs):
    """`-o` naming a file the command reads (`compile model.yaml -o model.yaml`) would replace the
    user's model with what was made from it."""
    if not output or output == "-":
        return
    from ..frontends.python import split_path  # MODEL.py:NAME reads MODEL.py
    for src in inputs:
        path = split_path(src)[0]
        read = [(path, "")]
        if path.lower().endswith((".yaml", ".yml")):
            # what `ckpt import` writes beside a config, read with it (`plan --emit torch` reads the
            # metadata): `plan m.yaml --emit torch -o m.torch.json` destroyed the import
            stem = os.path.splitext(path)[0]
            read += [(stem + ".torch.json", "its PyTorch metadata, "), (stem + ".npz", "its weights, ")]
        for file, what in read:
            try:
                same = os.path.samefile(output, file)
            except OSError:  # either is missing: nothing to overwrite
                continue
            if same:
                raise ConfigError(f"-o {output} is {'a' if what else 'the'} file this command reads ({what}{src}): "
                                  "writing would replace it; give another name")


def check_plot_file(path):
    """Before the work a figure shows (a sweep, timed steps), everything that would refuse it
    after: matplotlib missing, `-`, a path the writer refuses, a format matplotlib does not write."""
    from ..jsonio import STDOUT, check_writable
    from ..plots import pyplot
    pyplot()  # says how to install matplotlib
    if path == STDOUT:
        raise ConfigError("a plot is written to a file: give a path ending in .png or .svg, not -")
    check_writable(path)
    fmt = os.path.splitext(path)[1].lstrip(".").lower() or "png"
    from matplotlib.backend_bases import FigureCanvasBase
    known = FigureCanvasBase.get_supported_filetypes()
    if fmt not in known:
        raise ConfigError(f"cannot write a plot as .{fmt}: end the name in .png or .svg (matplotlib also writes "
                          f"{', '.join(sorted(k for k in known if k not in ('png', 'svg')))})", file=path)
    if fmt == "pgf":  # matplotlib sets its text through LaTeX for pgf, and fails without it
        import shutil
        from matplotlib import rcParams
        if not shutil.which(rcParams["pgf.texsystem"]):
            raise ConfigError(f"a .pgf plot needs LaTeX ({rcParams['pgf.texsystem']}), which is not installed: "
                              "use .png, .svg or .pdf", file=path)


def over_budget_message(strategy, peak_ws, budget, peak=None):
    """The line for a fixed strategy's plan (store-all, sqrt-n: they do not plan to a budget) whose
    peak with workspace, the figure a budget bounds, is over the budget; `peak`, the model's peak
    without op workspace, is named where it alone would have met it."""
    def exact(n):  # under 1 KiB fmt_bytes is already exact
        return fmt_bytes(n) if n < 1024 else f"{fmt_bytes(n)} ({n} bytes)"
    temps = f" (the model peak {fmt_bytes(peak)} meets it; op temporaries do not)" \
        if peak is not None and peak <= budget else ""
    return (f"{strategy}'s plan peaks at {exact(peak_ws)} with op workspace, over the memory budget of "
            f"{exact(budget)}{temps}: --strategy budget plans to a budget")


def require_within_budget(strategy, sim, budget):
    """Exit 3 (BudgetError) before a fixed strategy's plan is run or written while it misses the
    budget the user gave: a budget is a bound to meet, not a label on the report."""
    if budget is not None and sim.peak_ws > budget:
        raise BudgetError(over_budget_message(strategy, sim.peak_ws, budget, sim.peak))


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


def _config_path(ctx, param, value):
    if value == "-":  # `-o -` is standard output, so a user tries `-` for standard input too
        raise ConfigError("CONFIG -: ckpt reads a config from a file; for standard input give /dev/stdin")
    return value


config_arg = click.argument("config", type=click.Path(dir_okay=False), callback=_config_path)
json_opt = click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout, nothing else.")
set_opt = click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
                       help="Override a dim of the config (repeatable), e.g. --set B=64.")
dtype_opt = click.option("--dtype", type=click.Choice(["float16", "bfloat16", "float32", "float64"]),
                         help="Override the config's float dtype.")
budget_opt = click.option("--memory-budget", "budget", metavar="SIZE",
                          help="Peak memory allowed, op workspace included: 512MiB, 2GB, 1.5GiB, bytes, or 0.8x of "
                               "store-all's peak. The budget strategy plans to it; --strategy store-all or sqrt-n "
                               "alone exits 3 when its plan is over it.")
time_limit_opt = click.option("--time-limit", default=120.0, show_default=True, type=FiniteFloat(0.1),
                              help="Safety net: seconds the exact DAG solver (MILP) may take. Plans are bounded "
                                   "by counted work, not the clock; the report says if this limit struck.")


def _store_all_peak(model):
    """What `0.8x` is a fraction of: store-all's peak with its workspace, the most any plan needs."""
    from ..plan import plan
    return plan(model.joint, "store-all", ix=model.index)[1].peak_ws


# glibc's mallopt parameters (malloc.h) and the mmap threshold the CLI sets: 32 MiB is where glibc's
# own sliding threshold stops (DEFAULT_MMAP_THRESHOLD_MAX on 64-bit), so blocks up to it come from
# the heap from the first step on rather than after glibc has seen one freed; larger ones (gpt_large's
# 768 MiB activations) are still mapped and unmapped, which their compute amortises, so that a
# fragmented heap never holds them.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
HEAP_MMAP_THRESHOLD = 32 << 20
# glibc's own ways to tune malloc: a user who set one keeps it
_GLIBC_MALLOC_VARS = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")


def keep_heap(device="cpu"):
    """Keep the C heap between training steps: called by the commands that execute steps on the CPU.

    glibc's default malloc hands the top of the heap back to the system whenever more than 128 KiB
    (or twice the largest block freed so far) is free there, and takes it back with page faults in
    the next step: a step pays for its memory again, by how much depending on what ran before in
    the process. One-thread store-all steps measured 1.33x slower so on gpt_small, 1.24x on
    resnet_small, 1.11x on mlp_deep; and sqrt-n's measured overhead on gpt_small swung from +7% to
    +24% between processes (a plan with a smaller peak trims less), kept +23% to +26%
    (scripts/bench_malloc.py, `ckpt bench`).
    A step reuses the same sizes, so the kept heap is what a caching allocator does.

    Process-wide, so the command line does it (it owns its process) and `import ckpt` never does.
    CKPT_MALLOC=default leaves glibc as it is; so do glibc's own MALLOC_*_ or GLIBC_TUNABLES malloc
    settings. A silent no-op where there is no glibc (macOS, musl, Windows). Returns whether the
    heap is now kept. Memory figures are unchanged: tracemalloc counts what numpy asks for, not
    what the C heap holds."""
    mode = os.environ.get("CKPT_MALLOC", "kept")
    if mode not in ("kept", "default"):
        shown = repr(mode) if len(mode) <= 40 else repr(mode[:37] + "...")
        raise ConfigError(f"environment variable CKPT_MALLOC={shown}: use kept (the default) or default")
    if device != "cpu" or mode == "default":
        return False
    if any(v in os.environ for v in _GLIBC_MALLOC_VARS) or "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    try:
        import ctypes
        libc = ctypes.CDLL(None)  # the running process's symbols (TypeError on Windows)
        mallopt = libc.mallopt
    except (ImportError, OSError, TypeError, AttributeError):
        return False
    if not hasattr(libc, "gnu_get_libc_version"):  # the parameter numbers above are glibc's
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # mallopt answers 1 when it took the value; -1 as the trim threshold is the largest size_t: never
    return mallopt(_M_MMAP_THRESHOLD, HEAP_MMAP_THRESHOLD) == 1 and mallopt(_M_TRIM_THRESHOLD, -1) == 1
