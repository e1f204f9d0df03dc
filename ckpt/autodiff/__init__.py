"""Differentiation without a schedule: plain evaluation, forward (tangent) mode, numeric differences.

These read only the op registry and the model graph; reverse mode with a memory plan lives in the
executor, which walks a schedule.
"""

from .forward import evaluate, jvp  # noqa: F401
from .numeric import DEFAULT_STEP, numeric_derivative  # noqa: F401
