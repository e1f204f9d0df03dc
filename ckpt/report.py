"""Everything the user reads: tables, the seed-notation trace, and JSON through one function."""

import json
import math
import sys
import threading
import time

import numpy as np

from .sizes import fmt_bytes


def emit_json(doc):
    """The one way ckpt writes JSON: one document on stdout, nothing else. A number that is not
    finite (a loss of nan, a gradient of inf) is null: JSON has no NaN, and a value that failed
    to encode halfway left half a document and a traceback. Encoded whole before it is written."""
    text = json.dumps(_finite(doc), indent=2, sort_keys=True, allow_nan=False, default=_jsonable)
    sys.stdout.write(text + "\n")


def _finite(x):
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    if isinstance(x, np.ndarray):
        return _finite(x.tolist())
    if isinstance(x, (float, np.floating)) and not math.isfinite(x):
        return None
    return x


def _jsonable(x):
    """numpy scalars and arrays as the JSON values they hold (a check's verdict is a numpy bool)."""
    if isinstance(x, np.bool_):
        return bool(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.floating):
        return float(x)
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"{type(x).__name__} is not JSON serialisable")


class Progress:
    """Progress of a long command on standard error, only where a person watches it: stderr is a
    terminal and the command is not printing JSON. With a `total` it draws a bar; without one it
    rewrites the elapsed seconds once a second. Either way the line is erased when the work ends,
    so nothing of it is left in what the command prints."""

    def __init__(self, label, total=None, enabled=True, stream=None):
        self.stream = stream or sys.stderr
        self.label, self.total, self.done = label, total, 0
        self.enabled = enabled and _isatty(self.stream)
        self._stop = threading.Event()
        self._thread = None
        self._t0 = time.monotonic()

    def __enter__(self):
        if self.enabled:
            self._draw()
            if self.total is None:
                self._thread = threading.Thread(target=self._tick, daemon=True)
                self._thread.start()
        return self

    def update(self, n=1):
        self.done += n
        if self.enabled:
            self._draw()

    def _tick(self):
        while not self._stop.wait(1.0):
            self._draw()

    def _draw(self):
        elapsed = time.monotonic() - self._t0
        if self.total:
            width = 24
            filled = min(width, width * self.done // self.total)
            text = f"{self.label} [{'#' * filled}{'-' * (width - filled)}] {self.done}/{self.total}  {elapsed:.0f}s"
        else:
            text = f"{self.label} ... {elapsed:.0f}s"
        try:
            self.stream.write("\r" + text + "\x1b[K")
            self.stream.flush()
        except (OSError, ValueError):
            self.enabled = False

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.enabled:
            try:
                self.stream.write("\r\x1b[K")
                self.stream.flush()
            except (OSError, ValueError):
                pass
        return False


def _isatty(stream):
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


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


__all__ = ["Progress", "emit_json", "gradient_summary", "fmt_value", "table", "fmt_time", "fmt_pct", "fmt_bytes"]
