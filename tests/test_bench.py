"""Benchmarks against a baseline: regressions caught both ways, ratios not times, corrupt baselines
refused and never overwritten; plots rendered to files of the expected size."""

import importlib.util
import json
import struct

import pytest
from click.testing import CliRunner

from ckpt.bench import compare, load_baseline, run_bench, save_baseline
from ckpt.cli import cli
from ckpt.errors import ConfigError
from conftest import config_path

needs_mpl = pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None,
                               reason="matplotlib is not installed (optional: pip install 'ckpt-recompute[plot]')")


@pytest.fixture(scope="module")
def entries():
    return run_bench([config_path("seed_example")], ("store-all", "sqrt-n"), ("0.8x",), steps=3, progress=False)


def _statuses(rows):
    return {(k, f): st for k, f, _, _, st in rows}


def test_unchanged_run_passes(entries):
    rows = compare(entries, json.loads(json.dumps(entries)), 0.1)
    assert all(st == "same" for *_, st in rows)


def test_planted_memory_increase_is_caught(entries):
    base = json.loads(json.dumps(entries))
    cur = json.loads(json.dumps(entries))
    cur["seed_example:sqrt-n"]["peak_measured"] += 8
    cur["seed_example:sqrt-n"]["peak_predicted"] += 8
    st = _statuses(compare(cur, base, 0.1))
    assert st[("seed_example:sqrt-n", "peak_measured")] == "regression"
    # and a decrease is an improvement to record, not a failure
    st = _statuses(compare(base, cur, 0.1))
    assert st[("seed_example:sqrt-n", "peak_measured")] == "improved"


def test_planted_slowdown_is_caught_and_a_slower_machine_is_not(entries):
    base = json.loads(json.dumps(entries))
    slow = json.loads(json.dumps(entries))
    slow["seed_example:sqrt-n"]["time_ratio"] *= 1.5
    # every round 1.5x slower (the per-round ratios decide where they were measured)
    slow["seed_example:sqrt-n"]["time_ratios"] = [slow["seed_example:sqrt-n"]["time_ratio"]] * 15
    assert _statuses(compare(slow, base, 0.1))[("seed_example:sqrt-n", "time_ratio")] == "regression"
    machine = json.loads(json.dumps(entries))
    for e in machine.values():  # everything twice as slow: the ratios to store-all do not move
        e["time_s"] *= 2
    assert all(st == "same" for *_, st in compare(machine, base, 0.1))


def test_subset_and_new_entries(entries):
    base = {"seed_example:store-all": entries["seed_example:store-all"], "other:store-all": entries["seed_example:store-all"]}
    st = {k: s for k, _, _, _, s in compare(entries, base, 0.1)}
    assert st["other:store-all"] == "not run" and st["seed_example:sqrt-n"] == "new"


def test_baseline_round_trip_is_stable(tmp_path, entries):
    path = tmp_path / "b.json"
    save_baseline(str(path), entries)
    first = path.read_text()
    save_baseline(str(path), load_baseline(str(path)))
    assert path.read_text() == first
    assert list(json.loads(first)["entries"]) == sorted(entries)


@pytest.mark.parametrize("text", ["{not json", '{"schema": 99, "entries": {}}', '{"entries": []}',
                                  '{"schema": 1, "entries": {"a:store-all": {"peak_measured": "x"}}}',
                                  # true and 1.0 equal 1 in Python; a name with a newline would break a row
                                  '{"schema": true, "entries": {}}', '{"schema": 1.0, "entries": {}}',
                                  '{"schema": 1, "entries": {"a\\nb:store-all": {"feasible": false}}}'])
def test_corrupt_baseline_is_exit_2_and_never_overwritten(tmp_path, text):
    path = tmp_path / "b.json"
    path.write_text(text)
    with pytest.raises(ConfigError):
        load_baseline(str(path))
    for extra in ([], ["--update-baseline"]):
        res = CliRunner().invoke(cli, ["bench", config_path("seed_example"), "--strategy", "store-all",
                                       "--baseline", str(path)] + extra)
        assert res.exit_code == 2 and "baseline" in res.output
        assert path.read_text() == text


def test_cli_regression_exit_codes(tmp_path):
    path = tmp_path / "b.json"
    args = ["bench", config_path("seed_example"), "--strategy", "store-all", "--steps", "2", "--baseline", str(path)]
    assert CliRunner().invoke(cli, args + ["--update-baseline"]).exit_code == 0
    assert CliRunner().invoke(cli, args).exit_code == 0
    doc = json.loads(path.read_text())
    doc["entries"]["seed_example:store-all"]["peak_measured"] -= 8  # the code now "uses" more memory
    path.write_text(json.dumps(doc))
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 1 and "regression" in res.output


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


@needs_mpl
def test_frontier_and_memory_plots(tmp_path):
    f = tmp_path / "frontier.png"
    res = CliRunner().invoke(cli, ["plan", config_path("mlp_deep"), "--sweep", "--points", "4", "--memory-budget",
                                   "0.9x", "--plot", str(f), "--set", "L=4", "--set", "B=8", "--set", "D=16"])
    assert res.exit_code == 0, res.output
    assert _png_size(f) == (700, 450)
    m = tmp_path / "memory.png"
    res = CliRunner().invoke(cli, ["run", config_path("mlp_deep"), "--strategy", "sqrt-n", "--steps", "1",
                                   "--plot-memory", str(m), "--set", "L=4", "--set", "B=8", "--set", "D=16"])
    assert res.exit_code == 0, res.output
    assert _png_size(m) == (900, 450)


def test_plot_without_sweep_is_bad_input(tmp_path):
    res = CliRunner().invoke(cli, ["plan", config_path("seed_example"), "--plot", str(tmp_path / "x.png")])
    assert res.exit_code == 2 and "--sweep" in res.output


# ---- entry names, and budgets that no entry meets -------------------------------------------------
def test_two_functions_of_one_python_model_file_are_two_entries(run_main):
    """`ckpt bench m.py:f m.py:g` was refused: both entries were named by the file's stem alone."""
    res = run_main(["bench", "examples/seed.py:f", "examples/seed.py:leaky", "--strategy", "store-all",
                    "--steps", "1", "--json"])
    assert res.exit_code == 0, res.output
    assert sorted(json.loads(res.stdout)["entries"]) == ["seed:f:store-all", "seed:leaky:store-all"]


def test_entry_names_of_yaml_configs_are_unchanged():
    """The committed baseline's keys must still match: a YAML config is named by its stem alone."""
    from ckpt.bench import entry_key
    assert entry_key("configs/gpt_small.yaml", "budget", "0.9x") == "gpt_small:budget@0.9x"
    assert entry_key("configs/gpt_small.yaml", "sqrt-n", "0.9x") == "gpt_small:sqrt-n"
    assert entry_key("examples/seed.py", "store-all", None) == "seed:store-all"
    assert entry_key("examples/seed.py:f", "store-all", None) == "seed:f:store-all"
    import os

    from conftest import ROOT
    with open(os.path.join(ROOT, "benchmarks", "baseline.json")) as f:
        keys = json.load(f)["entries"]
    for key in keys:  # every committed key is one this naming still makes
        stem, rest = key.split(":", 1)
        strategy, _, spec = rest.partition("@")
        assert entry_key(config_path(stem), strategy, spec or None) == key


@pytest.mark.parametrize("strategies", [["sqrt-n"], ["store-all", "sqrt-n"]])
def test_fixed_strategies_that_miss_the_budget_exit_3_after_the_report(run_main, tmp_path, strategies):
    """bench's --memory-budget was ignored without a word when only store-all or sqrt-n were asked
    for: their plans are now checked against it, and a budget none of them meets is exit 3."""
    out = tmp_path / "r.json"
    args = ["bench", config_path("seed_example"), *[a for s in strategies for a in ("--strategy", s)], "--steps", "1"]
    res = run_main(args + ["--memory-budget", "80", "--json", "-o", str(out)])
    assert res.exit_code == 3 and res.stderr.count("\n") == 1, res.output
    assert "no plan asked for meets the memory budget 80" in res.stderr and "sqrt-n 88 B" in res.stderr
    doc = json.loads(res.stdout)  # the report is still printed, and written
    for s in strategies:
        e = doc["entries"][f"seed_example:{s}"]
        assert e["feasible"] is True and e["budget_check"]["80"] == {"budget_bytes": 80, "met": False}
    assert json.loads(out.read_text())["entries"] == doc["entries"]
    res = run_main(args + ["--memory-budget", "80"])  # the table says no, and why
    import re
    assert res.exit_code == 3 and re.search(r"seed_example:sqrt-n +no ", res.stdout)
    assert "no plan asked for meets" in res.stdout
    res = run_main(args + ["--memory-budget", "88", "--memory-budget", "1GiB"])  # met (88 B is the peak)
    assert res.exit_code == 0 and "  no  " not in res.stdout, res.output


def test_a_budget_one_fixed_plan_meets_is_exit_0(run_main):
    from ckpt.plan import plan
    from ckpt.session import load_model
    m = load_model(config_path("mlp_deep"), {"L": 6, "B": 8, "D": 16})
    sqrt_ws = plan(m.joint, "sqrt-n", ix=m.index)[1].peak_ws
    assert sqrt_ws < plan(m.joint, "store-all", ix=m.index)[1].peak_ws
    res = run_main(["bench", config_path("mlp_deep"), "--set", "L=6", "--set", "B=8", "--set", "D=16",
                    "--strategy", "store-all", "--strategy", "sqrt-n", "--memory-budget", str(sqrt_ws),
                    "--steps", "1", "--json"])
    assert res.exit_code == 0, res.output
    checks = {k: e["budget_check"][str(sqrt_ws)]["met"] for k, e in json.loads(res.stdout)["entries"].items()}
    assert checks == {"mlp_deep:store-all": False, "mlp_deep:sqrt-n": True}


def test_bench_where_no_entry_fits_exits_3_after_the_report(run_main, tmp_path):
    out = tmp_path / "r.json"
    res = run_main(["bench", config_path("seed_example"), "--strategy", "budget", "--memory-budget", "10",
                    "--steps", "1", "--json", "-o", str(out)])
    assert res.exit_code == 3 and res.stderr.count("\n") == 1 and "smallest feasible peak" in res.stderr
    doc = json.loads(res.stdout)
    assert doc["entries"]["seed_example:budget@10"]["feasible"] is False
    assert json.loads(out.read_text())["entries"] == doc["entries"]  # the results are still written
    # one entry that fits is a measurement: exit 0, the other entry's row says "no"
    res = run_main(["bench", config_path("seed_example"), "--strategy", "budget", "--memory-budget", "10",
                    "--memory-budget", "1GiB", "--steps", "1"])
    assert res.exit_code == 0, res.output


def test_a_strategy_or_budget_given_twice_is_measured_once(run_main, monkeypatch):
    import ckpt.bench
    seen = {}
    real = ckpt.bench.run_bench

    def spy(configs, strategies, budgets, **k):
        seen.update(strategies=tuple(strategies), budgets=tuple(budgets))
        return real(configs, strategies, budgets, **k)
    monkeypatch.setattr(ckpt.bench, "run_bench", spy)
    res = run_main(["bench", config_path("seed_example"), "--strategy", "budget", "--strategy", "budget",
                    "--memory-budget", "1GiB", "--memory-budget", "1GiB", "--steps", "1", "--json"])
    assert res.exit_code == 0, res.output
    assert seen == {"strategies": ("budget",), "budgets": ("1GiB",)}
    assert list(json.loads(res.stdout)["entries"]) == ["seed_example:budget@1GiB"]


def test_a_config_that_cannot_run_stops_bench_before_any_is_measured(run_main, monkeypatch):
    """`ckpt bench configs/*.yaml`: a model too large for the machine was refused only when its turn
    came, after the configs before it had been timed."""
    import ckpt.bench
    from ckpt.errors import ConfigError as CE
    real = ckpt.bench.require_memory

    def require_memory(model, peak, backend, *a, **k):
        if model.joint.graph["name"] == "mlp_deep":
            raise CE("running this model needs more memory than this process may use (a test)")
        return real(model, peak, backend, *a, **k)
    monkeypatch.setattr(ckpt.bench, "require_memory", require_memory)
    monkeypatch.setattr(ckpt.bench, "run_plan", lambda *a, **k: pytest.fail("measured before every config was checked"))
    res = run_main(["bench", config_path("seed_example"), config_path("mlp_deep"), "--steps", "1"])
    assert res.exit_code == 2 and "(a test)" in res.stderr and res.stdout == ""


def test_a_fraction_budget_is_of_store_alls_peak_with_workspace(run_main):
    """bench read 0.9x of store-all's peak without workspace; plan, run and the README read it with."""
    from ckpt.plan import plan
    from ckpt.session import load_model
    m = load_model(config_path("mlp_deep"), {"L": 3, "B": 4, "D": 8})
    ws = plan(m.joint, "store-all", ix=m.index)[1].peak_ws
    args = [config_path("mlp_deep"), "--set", "L=3", "--set", "B=4", "--set", "D=8", "--memory-budget", "0.99x",
            "--json"]
    res = run_main(["bench", *args, "--strategy", "budget", "--steps", "1"])
    assert res.exit_code == 0, res.output
    import math
    from fractions import Fraction
    want = math.ceil(Fraction("0.99") * ws)
    assert json.loads(res.stdout)["entries"]["mlp_deep:budget@0.99x"]["budget_bytes"] == want
    assert json.loads(run_main(["plan", *args, "--strategy", "budget"]).stdout)["budget_bytes"] == want


def test_bench_says_why_an_entry_does_not_fit(run_main):
    res = run_main(["bench", config_path("seed_example"), "--memory-budget", "10", "--strategy", "budget",
                    "--strategy", "store-all", "--steps", "1"])
    assert res.exit_code == 0, res.output
    assert "seed_example:budget@10: no schedule fits a memory budget of 10 B" in res.stdout
