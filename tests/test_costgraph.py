"""Cost graphs from other tools (node-link JSON): round trips, known optima, malformed files, and
planning a model far larger than the machine."""

import json
import math
import os
import sys
import tracemalloc

import pytest
from click.testing import CliRunner

from ckpt.cli import cli
from ckpt.model.costgraph import cost_graph_doc, parse_cost_graph
from ckpt.plan import plan, smallest_peak
from ckpt.plan.keepset import JointIndex
from ckpt.session import load_model
from conftest import ROOT, SMALL, config_path
from helpers import exhaustive_cost, random_joint, revolve_count, uniform_chain_joint

sys.path.insert(0, os.path.join(ROOT, "scripts"))
import planner_graphs as pg  # noqa: E402


def _sets(dims):
    return [a for k, v in dims.items() for a in ("--set", f"{k}={v}")]


@pytest.mark.parametrize("name", sorted(SMALL))
def test_export_then_plan_equals_planning_the_model(tmp_path, name):
    out = tmp_path / "g.json"
    res = CliRunner().invoke(cli, ["export", config_path(name), "-o", str(out)] + _sets(SMALL[name]))
    assert res.exit_code == 0, res.output
    model = load_model(config_path(name), SMALL[name])
    graph = load_model(str(out))
    assert graph.index.order == model.index.order
    _, sa = plan(model.joint, "store-all", ix=model.index)
    cases = [("store-all", None), ("sqrt-n", None), ("budget", sa.peak_ws)]
    if name == "seed_example" or name == "mlp_deep":  # solvers that answer the same every time
        low, _ = smallest_peak(model.joint, model.index)
        cases.append(("budget", max(low, sa.resident + sa.peak_managed_ws * 3 // 4)))
    for strategy, budget in cases:
        p1, s1 = plan(model.joint, strategy, budget, time_limit=20, ix=model.index)
        p2, s2 = plan(graph.joint, strategy, budget, time_limit=20, ix=graph.index)
        assert p1.steps == p2.steps and p1.solver == p2.solver, (strategy, budget)
        assert (s1.peak, s1.cost, s1.resident) == (s2.peak, s2.cost, s2.resident)


def test_edges_key_is_accepted_as_well_as_links():
    doc = cost_graph_doc(uniform_chain_joint(4))
    doc["edges"] = doc.pop("links")
    j = parse_cost_graph(doc)
    assert j.number_of_edges() == uniform_chain_joint(4).number_of_edges()


@pytest.mark.parametrize("l", [3, 6, 10])
def test_hand_made_chain_file_meets_revolve(l):
    j = parse_cost_graph(json.loads(json.dumps(cost_graph_doc(uniform_chain_joint(l)))))
    ix = JointIndex(j)
    for s in range(1, l + 1):
        p, sim = plan(j, "budget", s + 2, ix=ix)
        assert p.solver in ("chain-dp", "store-all fits")
        assert sim.forward_computes == revolve_count(l, s) + 1


def _dag_doc():
    """a -> b -> c -> d -> e, where c reads a and b (two earlier outputs) and e reads a (a skip
    across the whole forward graph); gradient nodes read what such ops would save."""
    ram = {"a": 4, "b": 2, "c": 3, "d": 2, "e": 1}
    nodes = [{"id": x, "cost_cpu": c, "cost_ram": ram[x]} for x, c in zip("abcde", (3, 1, 2, 1, 1))]
    nodes += [{"id": "ge", "cost_cpu": 1, "cost_ram": 1, "backward": True},
              {"id": "gd", "cost_cpu": 1, "cost_ram": 2, "backward": True},
              {"id": "gc", "cost_cpu": 2, "cost_ram": 3, "backward": True},
              {"id": "gb", "cost_cpu": 1, "cost_ram": 2, "backward": True},
              {"id": "ga", "cost_cpu": 2, "cost_ram": 0, "backward": True}]
    edges = [("a", "b"), ("b", "c"), ("a", "c"), ("c", "d"), ("d", "e"), ("a", "e"),
             ("e", "ge"), ("ge", "gd"), ("a", "gd"), ("gd", "gc"), ("c", "gc"), ("gc", "gb"), ("a", "gb"),
             ("gc", "ga"), ("gb", "ga"), ("ge", "ga"), ("b", "ga"), ("d", "ge")]
    return {"nodes": nodes, "links": [{"source": u, "target": v} for u, v in edges]}


def test_hand_made_dag_with_skip_against_exhaustive_search():
    j = parse_cost_graph(_dag_doc())
    ix = JointIndex(j)
    _, sa = plan(j, "store-all", ix=ix)
    floor = max(ix.ram[x] + ix.ws[x] + sum(ix.ram[u] for u in ix.preds[x]) for x in ix.order)
    tried = 0
    for b in range(floor, sa.peak_managed + 1):
        best = exhaustive_cost(j, b)
        if math.isinf(best):
            continue
        p, sim = plan(j, "budget", b, ix=ix)
        assert sim.peak_managed <= b and sim.cost == pytest.approx(best), b
        tried += 1
    assert tried >= 3


@pytest.mark.parametrize("seed", range(4))
def test_exported_random_dags_against_exhaustive_search(seed):
    j = parse_cost_graph(cost_graph_doc(random_joint(seed + 20, 4)))
    ix = JointIndex(j)
    _, sa = plan(j, "store-all", ix=ix)
    floor = max(ix.ram[x] + ix.ws[x] + sum(ix.ram[u] for u in ix.preds[x]) for x in ix.order)
    checked = 0
    for b in sorted({floor, (floor + sa.peak_managed) // 2, sa.peak_managed - 8}):
        best = exhaustive_cost(j, b)
        if not math.isinf(best):
            p, sim = plan(j, "budget", b + sa.resident, ix=ix)
            assert sim.cost == pytest.approx(best)
            checked += 1
    assert checked


MALFORMED = {
    "not_json": ("{nodes: [", "not JSON"),
    "no_nodes": ('{"links": []}', "'nodes'"),
    "cycle": ('{"nodes": [{"id": "a", "cost_cpu": 1, "cost_ram": 1}, {"id": "b", "cost_cpu": 1, "cost_ram": 1}],'
              ' "links": [{"source": "a", "target": "b"}, {"source": "b", "target": "a"}]}', "cycle"),
    "missing_cost": ('{"nodes": [{"id": "a", "cost_ram": 1}], "links": []}', "cost_cpu"),
    "negative_cost": ('{"nodes": [{"id": "a", "cost_cpu": -1, "cost_ram": 1}], "links": []}', "cost_cpu"),
    "unknown_node": ('{"nodes": [{"id": "a", "cost_cpu": 1, "cost_ram": 1}],'
                     ' "links": [{"source": "a", "target": "zz"}]}', "unknown node 'zz'"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_graph_files_exit_2_with_one_line(tmp_path, case):
    text, needle = MALFORMED[case]
    path = tmp_path / "g.json"
    path.write_text(text)
    res = CliRunner().invoke(cli, ["plan", str(path), "--memory-budget", "1MiB"])
    assert res.exit_code == 2, res.output
    assert needle in res.output and res.output.strip().count("\n") == 0 and str(path) in res.output


def test_planning_gpt_large_allocates_no_tensor():
    tracemalloc.start()
    try:
        model = load_model(config_path("gpt_large"))
        _, sa = plan(model.joint, "store-all", ix=model.index)
        p, sim = plan(model.joint, "budget", sa.resident + sa.peak_managed // 4, ix=model.index)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert sa.peak > 500 * 2**30  # hundreds of GiB planned...
    assert peak < 200 * 2**20  # ...in megabytes of memory
    assert sim.peak <= sa.resident + sa.peak_managed // 4


def test_run_refuses_a_model_larger_than_the_machine():
    res = CliRunner().invoke(cli, ["run", config_path("gpt_large")])
    assert res.exit_code == 2 and "needs" in res.output and "GiB" in res.output


def test_dtype_sets_sizes_for_planning():
    f32 = load_model(config_path("mlp_deep"), SMALL["mlp_deep"])
    f16 = load_model(config_path("mlp_deep"), SMALL["mlp_deep"], dtype="float16")
    bf16 = load_model(config_path("mlp_deep"), SMALL["mlp_deep"], dtype="bfloat16")
    a, b, c = (plan(m.joint, "store-all", ix=m.index)[1] for m in (f32, f16, bf16))
    assert b.peak * 2 == a.peak and c.peak == b.peak
    res = CliRunner().invoke(cli, ["run", config_path("mlp_deep"), "--dtype", "bfloat16"] + _sets(SMALL["mlp_deep"]))
    assert res.exit_code == 2 and "bfloat16" in res.output


@pytest.mark.parametrize("make", [
    lambda: pg.random_training_dag(250, 1), lambda: pg.random_training_dag(500, 2),
    lambda: pg.random_training_dag(1000, 3), lambda: pg.joint_of(pg.resnet50_config()),
    lambda: pg.joint_of(pg.unet_config(2, 1)), lambda: pg.joint_of(pg.chain_config(6, 2)),
    lambda: load_model(os.path.join(ROOT, "configs", "gpt_small.yaml")).joint,
], ids=["random250", "random500", "random1000", "resnet50", "unet", "chain", "gpt_small"])
def test_plain_form_recovers_which_nodes_are_gradients(make):
    """Written without `backward` flags, a training graph's gradient nodes are found again: the
    loss is told apart from the forward and backward articulation points that also split it."""
    j = make()
    doc = cost_graph_doc(j)
    for node in doc["nodes"]:
        del node["backward"]
    plain = parse_cost_graph(json.loads(json.dumps(doc)))
    assert {x: plain.nodes[x]["kind"] for x in j} == {x: j.nodes[x]["kind"] for x in j}
