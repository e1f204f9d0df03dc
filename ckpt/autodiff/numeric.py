"""Numeric differentiation (the seed's §1.1): forward, backward and central differences."""

from ..errors import ConfigError

DEFAULT_STEP = {"central": 1e-6, "forward": 1e-8, "backward": 1e-8}


def numeric_derivative(f, method, h):
    """The derivative at 0 of the scalar function f(t), by a difference of step h."""
    if method == "central":
        return (f(h) - f(-h)) / (2 * h)
    if method == "forward":
        return (f(h) - f(0.0)) / h
    if method == "backward":
        return (f(0.0) - f(-h)) / h
    raise ConfigError(f"unknown method {method!r}: use central, forward or backward")
