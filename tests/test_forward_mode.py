"""Forward mode, Jacobians and numeric differentiation: the seed's first two chapters."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from ckpt.autodiff import evaluate, jvp
from ckpt.backend import get_backend
from ckpt.cli import cli
from ckpt.model import build_graph, leaf_values, parse_config
from ckpt.session import jacobian, load_model, numeric_study
from conftest import SMALL, config_path
from helpers import random_model

CPU = get_backend("cpu")


@pytest.mark.parametrize("mode", ["forward", "reverse", "auto"])
def test_seed_example_jacobian(mode):
    res = jacobian(load_model(config_path("seed_example")), mode=mode)
    np.testing.assert_allclose(res["jacobian"], [[5.5, 1.7163378145367738]], rtol=1e-14)
    assert res["passes"] == (2 if mode == "forward" else 1)


def _directional_check(model, res, rng):
    """J·d against central differences of the target node along a random direction d."""
    g = model.graph
    host = leaf_values(g)
    d = rng.standard_normal(res["inputs"])
    at, shifts = 0, {}
    for v in res["wrt"]:
        k = host[v].size
        shifts[v] = d[at:at + k].reshape(host[v].shape)
        at += k

    def f(t):
        leaves = {k: (v + t * shifts[k] if k in shifts else v) for k, v in host.items()}
        return np.asarray(evaluate(g, leaves, CPU, target=res["of"])).reshape(-1)

    h = 1e-6
    numeric = (f(h) - f(-h)) / (2 * h)
    np.testing.assert_allclose(res["jacobian"] @ d, numeric, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_forward_and_reverse_jacobians_agree_with_each_other_and_numeric(name):
    model = load_model(config_path(name), SMALL[name], dtype="float64")
    params = [v for v, d in model.graph.nodes(data=True) if d["kind"] == "param"]
    wrt = params[:2] or None  # a few parameters keep forward mode's column count small
    fwd = jacobian(model, wrt=wrt, mode="forward")
    rev = jacobian(model, wrt=wrt, mode="reverse")
    np.testing.assert_allclose(fwd["jacobian"], rev["jacobian"], rtol=1e-9, atol=1e-12)
    _directional_check(model, rev, np.random.default_rng(0))


def test_vector_output_jacobian_and_auto_choice():
    model = load_model(config_path("mlp_deep"), SMALL["mlp_deep"], dtype="float64")
    # 8 x 16 = 128 outputs, 16 inputs: forward mode needs fewer passes
    res = jacobian(model, of="body.1.a", wrt=["body.0.b"])
    assert res["mode"] == "forward" and res["passes"] == 16 and res["jacobian"].shape == (128, 16)
    rev = jacobian(model, of="body.1.a", wrt=["body.0.b"], mode="reverse")
    assert rev["passes"] == 128
    np.testing.assert_allclose(res["jacobian"], rev["jacobian"], rtol=1e-9, atol=1e-12)
    # 1 output, 16 x 16 + 16 inputs: reverse mode
    assert jacobian(model, wrt=["body.0.W", "body.0.b"])["mode"] == "reverse"
    _directional_check(model, res, np.random.default_rng(1))


@pytest.mark.parametrize("seed", range(6))
def test_random_graphs_jacobians(seed):
    g = build_graph(parse_config(random_model(seed, 5)))
    from ckpt.session import Model
    model = Model("random.yaml", None, g, None, None)
    of = g.graph["order"][-3]  # a vector-valued node in most of these graphs
    fwd = jacobian(model, of=of, mode="forward")
    rev = jacobian(model, of=of, mode="reverse")
    np.testing.assert_allclose(fwd["jacobian"], rev["jacobian"], rtol=1e-9, atol=1e-12)
    _directional_check(model, fwd, np.random.default_rng(seed))


def test_forward_mode_keeps_no_tape():
    model = load_model(config_path("mlp_deep"), {"B": 8, "D": 16, "L": 12})
    host = {k: v for k, v in leaf_values(model.graph).items()}
    t = {"body.0.b": np.ones(16, dtype=np.float32)}
    r = jvp(model.graph, host, t, CPU)
    from ckpt.plan import plan
    _, sa = plan(model.joint, "store-all", ix=model.index)
    # values and tangents of about two layers at a time, against every layer's residuals
    assert r.peak_bytes <= 4 * 8 * 16 * 4 + 64
    assert sa.peak_managed > 3 * r.peak_bytes


def test_numeric_study_finds_the_textbook_steps():
    res = numeric_study(config_path("seed_example"), wrt="x2")
    c64, f64 = res["best"]["central_float64"], res["best"]["forward_float64"]
    eps = np.finfo(np.float64).eps
    assert 0.1 * eps ** (1 / 3) <= c64["h"] <= 10 * eps ** (1 / 3) * 5  # near cbrt(eps) times the scale
    assert 0.1 * eps ** 0.5 <= f64["h"] <= 10 * eps ** 0.5 * 5
    assert c64["rel_error"] < f64["rel_error"] / 100
    assert res["best"]["central_float32"]["rel_error"] > 100 * c64["rel_error"]


def test_numeric_study_on_a_tensor_parameter():
    res = numeric_study(config_path("mlp_deep"), overrides=SMALL["mlp_deep"])
    assert res["wrt"] == "body.0.W" and res["direction"] == "random unit"
    assert res["best"]["central_float64"]["rel_error"] < 1e-6


def test_cli_jacobian_trace_numeric():
    r = CliRunner().invoke(cli, ["jacobian", config_path("seed_example"), "--json"])
    doc = json.loads(r.stdout)
    assert doc["mode"] == "reverse" and doc["shape"] == [1, 2]
    r = CliRunner().invoke(cli, ["trace", config_path("seed_example"), "--mode", "forward"])
    assert r.exit_code == 0 and "dy/dx1 = 5.5" in r.output
    r = CliRunner().invoke(cli, ["trace", config_path("seed_example"), "--mode", "forward", "--wrt", "x2"])
    assert "dy/dx2 = 1.71634" in r.output
    r = CliRunner().invoke(cli, ["numeric", config_path("seed_example"), "--json"])
    assert r.exit_code == 0 and len(json.loads(r.stdout)["steps"]) == 12
    r = CliRunner().invoke(cli, ["jacobian", config_path("seed_example"), "--wrt", "nope"])
    assert r.exit_code == 2 and "--wrt 'nope'" in r.output


def test_numeric_plot(tmp_path):
    out = tmp_path / "h.png"
    r = CliRunner().invoke(cli, ["numeric", config_path("seed_example"), "--plot", str(out)])
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert r.exit_code == 2 and "pip install" in r.output and not out.exists()
        return
    assert r.exit_code == 0 and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import struct
    w, h = struct.unpack(">II", out.read_bytes()[16:24])
    assert (w, h) == (700, 450)
