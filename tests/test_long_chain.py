"""Chains written as cost graphs by other tools (the input needs no gradient, so grad(a_1) has no
reader), and long chains of unlike layers, which the chain DP cannot table: the blocks DP plans
them as runs of layers (blocks.chain_view)."""

import math
import os
import sys

import pytest

from ckpt.model.costgraph import parse_cost_graph
from ckpt.plan import JointIndex, plan
from ckpt.plan.basic import sqrt_n
from ckpt.plan.chain import Chain, solve_chain
from ckpt.plan.search import walk
from helpers import exhaustive_cost

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))
from planner_graphs import chain_cost_graph  # noqa: E402


@pytest.mark.parametrize("n,seed", [(4, s) for s in range(4)] + [(5, 0), (5, 2)])
def test_cost_graph_chain_is_a_chain_and_meets_exhaustive_search(n, seed):
    """(5, 0) at 0.6x and (5, 2) at 0.8x: the optimum drops a_1 and recomputes it later, outside
    the chain DP's family; the MILP, run on small chains, finds it."""
    j = parse_cost_graph(chain_cost_graph(n, seed=seed))
    ix = JointIndex(j)
    chain = Chain.of(ix)
    assert chain is not None and chain.groups[1] == []
    _, sa = plan(j, "store-all", ix=ix)
    for frac in (0.9, 0.8, 0.7, 0.6):
        b = int(sa.peak_managed_ws * frac)
        best = exhaustive_cost(j, b)
        if math.isinf(best):
            continue
        p, sim = plan(j, "budget", b, ix=ix)
        assert sim.peak_managed_ws <= b
        assert sim.cost == pytest.approx(best), (seed, frac, p.solver)


def test_long_chain_of_unlike_layers():
    """600 unlike layers at 0.5x: the DP's table would be too large; the blocks DP over runs of
    layers gives a valid plan within the budget, within a point of overhead of the lower bound,
    far below sqrt-n's (the search, before: sqrt-n's plan, +32%)."""
    j = parse_cost_graph(chain_cost_graph(600, seed=3))
    ix = JointIndex(j)
    chain = Chain.of(ix)
    assert chain is not None and solve_chain(chain, 10 ** 6, least=False) is None
    _, sa = plan(j, "store-all", ix=ix)
    budget = sa.peak_managed_ws // 2
    p, sim = plan(j, "budget", budget, ix=ix)  # simulate validates every step
    assert p.solver == "blocks-dp" and sim.peak_managed_ws <= budget
    assert "search" not in p.notes["candidates"]
    overhead = (sim.cost - sa.cost) / sa.cost
    bound = (p.lower_bound - sa.cost) / sa.cost
    sq = (walk(ix, sqrt_n(ix).steps)[1] - sa.cost) / sa.cost
    assert bound <= overhead <= bound + 0.01
    assert overhead < sq / 3
