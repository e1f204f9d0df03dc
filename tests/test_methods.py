"""Numeric, symbolic and automatic differentiation side by side, and the expression swell."""

import importlib.util
import json
import random
import sys

import pytest
from click.testing import CliRunner

from ckpt.cli import cli
from ckpt.session import methods, swell
from conftest import SMALL, config_path

needs_sympy = pytest.mark.skipif(importlib.util.find_spec("sympy") is None,
                                 reason="sympy is not installed (optional: pip install 'ckpt-recompute[symbolic]')")


@needs_sympy
def test_seed_example_three_methods_agree():
    res = methods(config_path("seed_example"))
    by = {r["name"]: r for r in res["inputs"]}
    assert by["x1"]["symbolic"] == pytest.approx(5.5, rel=1e-15) and by["x1"]["reverse"] == 5.5
    assert round(by["x2"]["symbolic"], 3) == 1.716 and round(by["x2"]["numeric"], 3) == 1.716
    for r in res["inputs"]:
        assert r["symbolic_vs_reverse"] < 1e-14
        assert r["numeric_vs_reverse"] < 1e-8
    assert by["x1"]["simplified"] == "x2 + 1/x1"


def _random_scalar_model(seed, n_ops=6):
    rng = random.Random(seed)
    lines = ["name: rs", "dtype: float64", "inputs:", "  a: {shape: [], value: 0.7, grad: true}",
             "  b: {shape: [], value: 1.3, grad: true}", "nodes:"]
    names = ["a", "b"]
    for k in range(n_ops):
        if rng.random() < 0.5:
            op = rng.choice(["sin", "tanh", "exp", "sigmoid", "cos", "neg"])
            lines.append(f"  - {{name: n{k}, op: {op}, inputs: [{rng.choice(names)}]}}")
        else:
            op = rng.choice(["add", "mul", "sub"])
            lines.append(f"  - {{name: n{k}, op: {op}, inputs: [{rng.choice(names)}, {rng.choice(names)}]}}")
        names.append(f"n{k}")
    lines.append(f"  - {{name: out, op: add, inputs: [{names[-1]}, {names[-2]}]}}")
    lines.append("output: out")
    return "\n".join(lines) + "\n"


@needs_sympy
@pytest.mark.parametrize("seed", range(8))
def test_random_scalar_graphs_three_methods_agree(tmp_path, seed):
    path = tmp_path / "m.yaml"
    path.write_text(_random_scalar_model(seed))
    res = methods(str(path))
    for r in res["inputs"]:
        scale = max(abs(r["reverse"]), 1e-3)
        assert abs(r["symbolic"] - r["reverse"]) <= 1e-12 * scale + 1e-15
        # central differences at h ~ cbrt(eps): truncation and round-off both near eps^(2/3)
        assert abs(r["numeric"] - r["reverse"]) <= 1e-7 * scale + 1e-9


@needs_sympy
def test_swell_grows_exponentially_against_linear_reverse_mode():
    for family in ("sinx", "seed"):
        rows = swell(7, family)["rows"]
        sizes = [r["derivative_size"] for r in rows]
        ops = [r["reverse_ops"] for r in rows]
        steps = {b - a for a, b in zip(ops, ops[1:])}
        assert len(steps) == 1  # reverse mode: the same number of ops per level
        assert all(b > 2.5 * a for a, b in zip(sizes[2:], sizes[3:]))  # the symbolic tree: a factor per level
        assert sizes[-1] > 50 * ops[-1]
        assert rows[-1]["derivative_cse_size"] < sizes[-1] / 20  # sharing tames it


@needs_sympy
def test_methods_on_a_tensor_model_says_why_and_still_reports(tmp_path):
    res = methods(config_path("mlp_deep"), overrides={"B": 2, "D": 3, "L": 1})
    assert "scalar models" in res["symbolic_note"]
    assert all("numeric" in r and "reverse" in r and "symbolic" not in r for r in res["inputs"])


def test_methods_without_sympy_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "sympy", None)
    r = CliRunner().invoke(cli, ["methods", config_path("seed_example")])
    assert r.exit_code == 0 and "pip install 'ckpt-recompute[symbolic]'" in r.output
    assert "5.5" in r.output  # numeric and reverse still report
    r = CliRunner().invoke(cli, ["methods", "--swell"])
    assert r.exit_code == 2 and "pip install" in r.output


@needs_sympy
def test_methods_cli_json_and_swell():
    r = CliRunner().invoke(cli, ["methods", config_path("seed_example"), "--json"])
    assert r.exit_code == 0 and len(json.loads(r.stdout)["inputs"]) == 2
    r = CliRunner().invoke(cli, ["methods", "--swell", "--depth", "4", "--json"])
    assert [row["depth"] for row in json.loads(r.stdout)["rows"]] == [1, 2, 3, 4]
    r = CliRunner().invoke(cli, ["methods"])
    assert r.exit_code == 2 and "--swell" in r.output
    assert SMALL  # the shared sizes exist for the other tests
