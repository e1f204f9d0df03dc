"""Every figure ckpt draws, one way of labelling and saving (matplotlib is an optional extra)."""

import os

from .errors import ConfigError
from .jsonio import STDOUT, write_atomic


def plot_swell(res, path):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    depth = [r["depth"] for r in res["rows"]]
    for key, label in (("derivative_size", "symbolic derivative (tree)"),
                       ("derivative_cse_size", "symbolic derivative (after CSE)"),
                       ("reverse_ops", "reverse-mode operations")):
        ax.semilogy(depth, [r[key] for r in res["rows"]], marker="o", label=label)
    finish(fig, ax, plt, path, "depth of composition", "size", f"expression swell ({res['family']})")


def plot_frontier(doc, path):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    mib = 2.0 ** 20
    pts = [r for r in doc["sweep"] if r["feasible"]]
    ax.plot([100 * r["overhead"] for r in pts], [r["peak_bytes"] / mib for r in pts], "-o", label="budget (frontier)")
    for r in doc["strategies"]:
        if r["name"] != "budget" and r["peak_bytes"] is not None:
            ax.plot([100 * r["overhead"]], [r["peak_bytes"] / mib], "s", ms=8, label=r["name"])
    if doc["budget_bytes"]:
        ax.axhline(doc["budget_bytes"] / mib, color="red", ls="--", lw=1, label="memory budget")
    finish(fig, ax, plt, path, "compute overhead over store-all (%)", "predicted peak (MiB)",
            f"memory / recompute trade-off: {doc['model']}")


def plot_memory(model, steps, sim, r, budget, path, strategy):
    plt = pyplot()
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
    finish(fig, ax, plt, path, "schedule step", "bytes live (MiB)",
            f"memory timeline: {model.joint.graph['name']}, {strategy}", grid=False, fontsize=8, loc="upper right")


def pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError("--plot needs matplotlib: pip install 'ckpt-recompute[plot]'") from None
    return plt


def finish(fig, ax, plt, path, xlabel, ylabel, title, grid=True, **legend):
    """Label the axes, add the grid and the legend, and save (every plot ends so)."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if grid:
        ax.grid(True, alpha=0.3)
    ax.legend(**legend)
    _save(fig, plt, path)


def _save(fig, plt, path):
    """Through ckpt's one atomic writer: a crash never leaves half an image."""
    fig.tight_layout()
    if path == STDOUT:
        plt.close(fig)
        raise ConfigError("a plot is written to a file: give a path ending in .png or .svg, not -", file=path)
    fmt = os.path.splitext(path)[1].lstrip(".").lower() or "png"
    try:
        write_atomic(path, lambda f: fig.savefig(f, format=fmt), binary=True)
    except (ValueError, RuntimeError, OverflowError) as e:  # a format it does not know, a size or a
        # backend (LaTeX, a font) it cannot render with: the figures are computed, the image is not
        raise ConfigError(f"cannot write the plot: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                          file=path) from None
    finally:
        plt.close(fig)


def plot_numeric(res, path):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    hs = [r["h"] for r in res["steps"]]
    for d, style in (("float32", "--"), ("float64", "-")):
        for m in ("forward", "backward", "central"):
            ax.loglog(hs, [max(r[f"{m}_{d}"], 1e-17) for r in res["steps"]], style, marker="o", ms=3,
                      label=f"{m} ({d})")
    ax.invert_xaxis()
    finish(fig, ax, plt, path, "step h", "relative error", f"numeric derivative of the loss along {res['wrt']}",
            fontsize=8)

