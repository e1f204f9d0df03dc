"""YAML model → validated spec → networkx graph → the planners' joint forward+backward graph."""

from .config import load_config, parse_config  # noqa: F401
from .graph import build_graph, leaf_values, retarget  # noqa: F401
from .joint import lower  # noqa: F401
