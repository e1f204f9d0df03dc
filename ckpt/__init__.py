"""ckpt: a memory/recompute planner and runner for training deep networks."""

__version__ = "0.1.0"
