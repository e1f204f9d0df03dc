"""Symbolic differentiation through sympy (an optional extra), for the seed's §1.2 comparison.

A scalar model becomes one closed-form sympy expression: a tree that shares nothing, as a formula
written out does. Its derivative is exact but swells; reverse mode's work stays linear in the
program. Tensor ops have no elementwise closed form here and are refused with a reason.
"""

import math

from ..errors import ConfigError

INSTALL = "symbolic differentiation needs sympy: pip install 'ckpt-recompute[symbolic]'"


class Unsupported(Exception):
    """The model has no scalar closed form here; the message says why."""


def load_sympy():
    try:
        import sympy
    except ImportError:
        return None
    return sympy


_C = math.sqrt(2.0 / math.pi)

RULES = {
    "add": lambda sp, x, a: x[0] + x[1],
    "sub": lambda sp, x, a: x[0] - x[1],
    "mul": lambda sp, x, a: x[0] * x[1],
    "div": lambda sp, x, a: x[0] / x[1],
    "neg": lambda sp, x, a: -x[0],
    "exp": lambda sp, x, a: sp.exp(x[0]),
    "log": lambda sp, x, a: sp.log(x[0]),
    "sin": lambda sp, x, a: sp.sin(x[0]),
    "cos": lambda sp, x, a: sp.cos(x[0]),
    "tanh": lambda sp, x, a: sp.tanh(x[0]),
    "sigmoid": lambda sp, x, a: 1 / (1 + sp.exp(-x[0])),
    "relu": lambda sp, x, a: sp.Max(x[0], 0),
    "gelu": lambda sp, x, a: x[0] / 2 * (1 + sp.tanh(_C * (x[0] + sp.Float(0.044715) * x[0] ** 3))),
    "scale": lambda sp, x, a: x[0] * sp.Float(a["factor"]),
    "sum": lambda sp, x, a: x[0],  # of a scalar
    "mean": lambda sp, x, a: x[0],
}


def to_sympy(sp, g):
    """(expression of the output, {leaf name: symbol}) for a model of scalars and scalar ops."""
    syms, exprs = {}, {}
    for v, d in g.nodes(data=True):
        if d["kind"] != "op":
            if d["shape"] != ():
                raise Unsupported(f"{v!r} has shape {d['shape']}: symbolic differentiation here takes scalar models")
            syms[v] = exprs[v] = sp.Symbol(v.replace(".", "_"))
    for v in g.graph["order"]:
        d = g.nodes[v]
        if d["op"] not in RULES:
            raise Unsupported(f"op {d['op']} ({v!r}) has no scalar closed form here")
        exprs[v] = RULES[d["op"]](sp, [exprs[u] for u in d["inputs"]], d["attrs"])
    return exprs[g.graph["output"]], syms


def tree_size(sp, expr):
    """Nodes of the expression tree, every repeated subexpression counted each time it appears."""
    return sum(1 for _ in sp.preorder_traversal(expr))


def cse_size(sp, expr):
    """Nodes once common subexpressions are named and shared (sympy's cse)."""
    replacements, reduced = sp.cse(expr)
    return sum(tree_size(sp, e) + 1 for _, e in replacements) + sum(tree_size(sp, e) for e in reduced)


def require(sp):
    if sp is None:
        raise ConfigError(INSTALL)
    return sp
