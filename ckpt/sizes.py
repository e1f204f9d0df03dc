"""Reading and writing byte sizes: `512MiB`, `2GB`, `1.5GiB` or plain bytes; and the stated limits
on what ckpt accepts, each in one place."""

import math
import re
from fractions import Fraction

from .errors import ConfigError

# The largest model or cost graph ckpt loads: nodes of the model graph (ops, inputs, parameters,
# repeats expanded) and of the joint forward+gradient graph. A 10,000-layer MLP is about 60,000.
MAX_NODES = 250_000
# No value, and no sum of values, may exceed this many bytes: sizes stay exact in Python integers,
# and anything a planner stores in a 64-bit integer cannot overflow.
MAX_BYTES = 2**62
# Config and graph files larger than this are refused before they are parsed.
MAX_FILE_BYTES = 64 * 2**20
# Deepest nesting of YAML or JSON collections accepted (a real config nests fewer than 10 levels).
MAX_DEPTH = 100
# Most dimensions of a shape: numpy's (and cupy's) limit, so a plan never names a value no backend
# can make.
MAX_NDIM = 64
# Most timed steps (or rounds) a command takes: a median needs a few; a count past this is a typo,
# and would keep the command running for days rather than fail.
MAX_STEPS = 100_000


def joint_nodes_error(n, file=None, line=None, at_least=False, limit=MAX_NODES):
    """The one refusal of a joint forward+gradient graph past the limit, wherever it is counted
    (the model graph; a config before it expands; a Python model while it is traced)."""
    if at_least:  # counted while recording, before the whole is known
        return ConfigError(f"the joint forward+gradient graph has more than the {limit} nodes ckpt handles",
                           file=file, line=line)
    return ConfigError(f"the joint forward+gradient graph has {n} nodes, more than the {limit} ckpt handles",
                       file=file, line=line)


_UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}
_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]{1,6})?)\s*([a-zA-Z]*)\s*$")
_FRACTION = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]{1,6})?)\s*[xX]\s*$")


def _limit(n, what, text):
    if n < 1:
        raise ConfigError(f"{what} {text!r} is less than one byte")
    if n > MAX_BYTES:
        raise ConfigError(f"{what} {text!r} is over the largest size ckpt handles (2**62 bytes)")
    return n


def parse_size(text, *, what="size"):
    """Bytes as an exact int; raises ConfigError with the accepted forms on anything else (a
    non-finite number included: `inf`, `nan` and `1e400` are not sizes)."""
    m = _SIZE.match(str(text))
    unit = m and m.group(2).lower()
    if not m or unit not in _UNITS:
        raise ConfigError(f"cannot read {what} {text!r}: use bytes or a unit like 512MiB, 2GB, 1.5GiB")
    value = Fraction(m.group(1)) * _UNITS[unit]  # exact: 1e400 is a huge integer, not inf
    if value <= 0:
        raise ConfigError(f"{what} must be positive, got {text!r}")
    return _limit(int(value), what, text)


def parse_budget(text, store_all_peak):
    """A memory budget: a size, or a fraction of store-all's peak such as `0.8x`."""
    t = str(text).strip()
    if t.endswith("%"):  # a natural guess at the fraction form: say what it is
        raise ConfigError(f"cannot read memory budget {text!r}: a fraction of store-all's peak is written like "
                          "0.5x, not as a percentage")
    if not t.lower().endswith("x"):
        m = _SIZE.match(t)
        if not m or m.group(2).lower() not in _UNITS:
            unit = m.group(2) if m else ""
            guess = f" ({m.group(1)}{unit.upper()}B or {m.group(1)}{unit.upper()}iB?)" if unit.lower() in ("k", "m", "g", "t") else ""
            raise ConfigError(f"cannot read memory budget {text!r}{guess}: use a size like 512MiB, 2GB, 1.5GiB or "
                              "bytes, or a fraction of store-all's peak like 0.8x")
        return parse_size(t, what="memory budget")
    m = _FRACTION.match(t)
    if not m:
        raise ConfigError(f"cannot read memory budget {text!r}: use a size like 512MiB or a fraction like 0.8x")
    frac = Fraction(m.group(1))
    if frac <= 0:
        raise ConfigError(f"memory budget must be positive, got {text!r}")
    # rounded up, as Checkmate and Moccasin do: 0.5x of an odd peak allows the half byte's neighbour
    return _limit(math.ceil(frac * store_all_peak), "memory budget", text)


def fmt_bytes(n):
    """Human-readable binary size with enough digits to tell plans apart."""
    n = int(n)
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"
