"""ckpt: a memory/recompute planner and runner for training deep networks."""

__version__ = "0.1.0"

_API = ("load", "plan", "simulate", "run")


def __getattr__(name):
    """Lazy, so that `import ckpt` (and the command line's start-up) loads nothing it does not use:
    the Python API (ckpt.load, plan, simulate, run), ckpt.torch (the PyTorch bridge), and the Python
    front end (ckpt.traced, ckpt.param, ckpt.where and one function per op: ckpt.sin, ckpt.log, ...)."""
    if name.startswith("__"):  # probes such as __wrapped__ need not import numpy
        raise AttributeError(f"module 'ckpt' has no attribute {name!r}")
    if name in _API:
        from . import api
        return api.callable_module(f"ckpt.{name}") if name in ("plan", "simulate") else getattr(api, name)
    if name == "torch":
        import importlib
        return importlib.import_module(".torch", __name__)
    from .frontends import python
    try:
        return getattr(python, name)
    except AttributeError:
        raise AttributeError(f"module 'ckpt' has no attribute {name!r}") from None
