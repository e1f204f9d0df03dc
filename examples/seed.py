"""The seed chapter's worked example (section 2.6) written as Python: f(x1, x2) = ln(x1) + x1*x2 - sin(x2).

    ckpt run examples/seed.py:f           f = 11.652, df/dx1 = 5.5, df/dx2 = 1.716
    ckpt trace examples/seed.py:f         the primal and adjoint traces, as for configs/seed_example.yaml
    ckpt export-config examples/seed.py:f -o seed.yaml

Calling f records one node per operation; v1..v5 are numbered as the seed numbers them (each op as
soon as its operands exist), so the traces match the YAML config's line for line.
"""

import ckpt
from ckpt import log, sin


@ckpt.traced(inputs={"x1": {"shape": [], "value": 2.0, "grad": True},
                    "x2": {"shape": [], "value": 5.0, "grad": True}},
            dtype="float64", name="seed_example")
def f(x1, x2):
    return log(x1) + x1 * x2 - sin(x2)


@ckpt.traced(inputs={"x1": {"shape": [], "value": 2.0, "grad": True},
                    "x2": {"shape": [], "value": 5.0, "grad": True}},
            dtype="float64", dims={"N": 300})
def seed_chain(x1, x2, *, N):
    """The seed example repeated N times, each copy reading the one before: many tiny scalar ops,
    where the per-operation cost of an implementation shows (the seed, section 3)."""
    y = log(x1) + x1 * x2 - sin(x2)
    for _ in range(N - 1):
        a = x1 + ckpt.sigmoid(y)  # stays above x1 > 0, so the log is defined
        y = log(a) + a * x2 - sin(x2)
    return y


@ckpt.traced(inputs={"x": {"shape": [4], "value": [-2.0, -0.5, 0.5, 2.0], "grad": True}}, dtype="float64")
def leaky(x):
    """A data-dependent choice: `if x > 0` cannot be traced; ckpt.where records both branches."""
    return ckpt.where(x > 0, x, 0.1 * x).sum()
