"""Reading and writing byte sizes: `512MiB`, `2GB`, `1.5GiB` or plain bytes."""

import re

from .errors import ConfigError

_UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}
_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(text, *, what="size"):
    """Bytes as an int; raises ConfigError with the accepted forms on anything else."""
    m = _SIZE.match(str(text))
    unit = m and m.group(2).lower()
    if not m or unit not in _UNITS:
        raise ConfigError(f"cannot read {what} {text!r}: use bytes or a unit like 512MiB, 2GB, 1.5GiB")
    value = float(m.group(1)) * _UNITS[unit]
    if value <= 0:
        raise ConfigError(f"{what} must be positive, got {text!r}")
    return int(value)


def parse_budget(text, store_all_peak):
    """A memory budget: a size, or a fraction of store-all's peak such as `0.8x`."""
    t = str(text).strip()
    if not t.lower().endswith("x"):
        return parse_size(t, what="memory budget")
    try:
        frac = float(t[:-1])
    except ValueError:
        raise ConfigError(f"cannot read memory budget {text!r}") from None
    if frac <= 0:
        raise ConfigError(f"memory budget must be positive, got {text!r}")
    return int(frac * store_all_peak)


def fmt_bytes(n):
    """Human-readable binary size with enough digits to tell plans apart."""
    n = int(n)
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"
