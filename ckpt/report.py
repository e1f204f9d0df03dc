"""Everything the user reads: tables, the seed-notation trace, and JSON through one function."""

import json
import math
import sys

import numpy as np

from .sizes import fmt_bytes


def emit_json(doc):
    """The one way ckpt writes JSON: one document on stdout, nothing else."""
    json.dump(doc, sys.stdout, indent=2, sort_keys=True, allow_nan=False, default=_jsonable)
    sys.stdout.write("\n")


def _jsonable(x):
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.floating):
        return float(x)
    raise TypeError(type(x).__name__)


def gradient_summary(arr):
    """A number, a nested list for tensors of at most 16 elements, else shape and norm."""
    a = np.asarray(arr, dtype=np.float64)
    if a.ndim == 0:
        return float(a)
    if a.size <= 16:
        return a.tolist()
    return {"shape": list(a.shape), "norm": float(np.linalg.norm(a))}


def fmt_value(arr, digits=6):
    a = np.asarray(arr, dtype=np.float64)
    if a.ndim == 0:
        return f"{float(a):.{digits}g}"
    if a.size <= 16:
        return np.array2string(a, precision=4, separator=", ", suppress_small=True).replace("\n", "")
    return f"shape {tuple(a.shape)}, norm {np.linalg.norm(a):.{digits}g}"


def table(rows, headers, align=None):
    """Plain aligned columns; the first column left-aligned, the rest right-aligned by default."""
    cells = [list(map(str, headers))] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    align = align or ["<"] + [">"] * (len(headers) - 1)
    lines = []
    for n, r in enumerate(cells):
        lines.append("  ".join(f"{c:{a}{w}}" for c, a, w in zip(r, align, widths)).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def fmt_time(seconds):
    if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def fmt_pct(frac):
    return "-" if frac is None else f"{100 * frac:+.1f}%"


__all__ = ["emit_json", "gradient_summary", "fmt_value", "table", "fmt_time", "fmt_pct", "fmt_bytes"]
