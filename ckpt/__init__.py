"""ckpt: a memory/recompute planner and runner for training deep networks."""

__version__ = "0.1.0"

_API = ("load", "plan", "simulate", "run")


def __getattr__(name):
    # Lazy, so that `import ckpt` (and the command line's start-up) loads nothing it does not use.
    if name in _API:
        from . import api
        return api.callable_module(f"ckpt.{name}") if name in ("plan", "simulate") else getattr(api, name)
    if name == "torch":
        import importlib
        return importlib.import_module(".torch", __name__)
    raise AttributeError(f"module 'ckpt' has no attribute {name!r}")
