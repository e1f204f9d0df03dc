"""ckpt: a memory/recompute planner and runner for training deep networks."""

__version__ = "0.1.0"


def __getattr__(name):
    """ckpt.traced, ckpt.param, ckpt.where and one function per op (ckpt.sin, ckpt.log, ...): the
    Python front end, imported on first use so that `import ckpt` stays fast."""
    if name.startswith("__"):  # probes such as __wrapped__ need not import numpy
        raise AttributeError(f"module 'ckpt' has no attribute {name!r}")
    from .frontends import python
    try:
        return getattr(python, name)
    except AttributeError:
        raise AttributeError(f"module 'ckpt' has no attribute {name!r}") from None
