"""Whole models: the seed example's figures, and every example config's gradients against numeric
differences in float64."""

import json

import pytest
from click.testing import CliRunner

from ckpt.cli import cli
from ckpt.session import check_gradients
from conftest import config_path


def test_seed_example_gives_the_seed_figures():
    res = CliRunner().invoke(cli, ["run", config_path("seed_example"), "--json", "--steps", "1"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert round(doc["loss"], 3) == 11.652
    assert doc["gradients"]["x1"] == pytest.approx(5.5, abs=1e-12)
    assert round(doc["gradients"]["x2"], 3) == 1.716
    assert doc["strategy"] == "store-all" and doc["device"] == "cpu"
    peak = doc["peak_bytes"]
    assert peak["predicted"] == peak["measured"] and peak["allocator"] > 0
    assert doc["time_s"] > 0


def test_seed_trace_follows_the_seed_notation():
    res = CliRunner().invoke(cli, ["run", config_path("seed_example"), "--trace", "--steps", "1"])
    assert res.exit_code == 0, res.output
    out = res.output
    for line in ("v-1 = x1", "v0 = x2", "v1 = log(v-1)", "v2 = mul(v-1, v0)", "v3 = sin(v0)",
                 "v4 = add(v1, v2)", "v5 = sub(v4, v3)"):
        assert line in " ".join(out.split()), line
    assert "11.6521" in out and "= 5.5" in out and "1.71634" in out
    assert "v\u03045 = y\u0304 (seed)" in " ".join(out.split())


@pytest.mark.parametrize("name", ["seed_example", "mlp_deep", "resnet_small", "gpt_small", "unet_small"])
def test_model_gradients_match_numeric_differences(name):
    from conftest import SMALL
    res = check_gradients(config_path(name), overrides=SMALL[name])
    assert res["passed"], max(res["checks"], key=lambda r: r["rel_error"])
    assert len(res["checks"]) >= 2


def test_check_command_exit_codes():
    ok = CliRunner().invoke(cli, ["check", config_path("seed_example")])
    assert ok.exit_code == 0 and "passed" in ok.output
    # a step far too large for forward differences: the check must fail with exit 1
    bad = CliRunner().invoke(cli, ["check", config_path("seed_example"), "--method", "forward", "--step", "0.5"])
    assert bad.exit_code == 1 and "gradient check failed" in bad.output


def test_run_json_is_one_document_with_the_promised_fields():
    from conftest import SMALL
    args = ["run", config_path("mlp_deep"), "--json", "--steps", "1"]
    for k, v in SMALL["mlp_deep"].items():
        args += ["--set", f"{k}={v}"]
    res = CliRunner().invoke(cli, args)
    doc = json.loads(res.stdout)
    assert set(doc) >= {"loss", "gradients", "peak_bytes", "time_s", "strategy", "device"}
    assert all(isinstance(doc["peak_bytes"][k], int) for k in ("predicted", "measured", "allocator"))
    w = doc["gradients"]["body.0.W"]
    assert set(w) == {"shape", "norm"} and w["shape"] == [16, 16]
    assert isinstance(doc["gradients"]["body.0.b"], list)
