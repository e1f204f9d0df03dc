"""Hostile flags and the exit codes and messages of the commands: one line, the promised code."""

import json
import subprocess
import sys

import pytest

from conftest import config_path
from helpers import assert_one_line, invoke

SEED = config_path("seed_example")
MLP_SMALL = ["--set", "B=4", "--set", "D=8", "--set", "L=3"]


BUDGETS = ["1e400", "inf", "infx", "NaNx", "nan", "-1x", "0x", "0", "1e400x", "1e99999999", "x", "", "12 apples",
           "1.5.5MiB", "5 MiBs", "99999999999999999999999TiB", "0.0000001"]


@pytest.mark.parametrize("budget", BUDGETS)
def test_memory_budget_values(run_main, budget):
    res = run_main(["plan", SEED, "--strategy", "budget", "--memory-budget", budget])
    assert_one_line(res, needle="memory budget")


@pytest.mark.parametrize("args,needle", [
    (["check", SEED, "--step", "nan"], "finite"),
    (["check", SEED, "--step", "inf"], "finite"),
    (["check", SEED, "--step", "-1"], "must be >"),
    (["check", SEED, "--tol", "nan"], "finite"),
    (["check", SEED, "--step", "abc"], "not a number"),
    (["plan", SEED, "--time-limit", "nan"], "finite"),
    (["plan", SEED, "--time-limit", "inf"], "finite"),
    (["bench", SEED, "--time-tolerance", "nan%"], "finite"),
    (["bench", SEED, "--time-tolerance", "inf"], "finite"),
    (["bench", SEED, "--time-tolerance", "-5%"], ">= 0"),
    (["bench", SEED, "--time-tolerance", "abc"], "cannot read time tolerance"),
    (["run", SEED, "--set", "x1=" + "9" * 5000], "must be an integer"),
    (["run", SEED, "--set", "x1=4"], "no such dim"),
    (["run", config_path("mlp_deep"), "--set", "B=" + "9" * 5000], "must be an integer"),
    (["run", config_path("mlp_deep"), "--set", "B=1e400"], "must be an integer"),
    (["run", config_path("mlp_deep"), "--set", "B=-4"], "--set 'B=-4': a size must be a positive integer"),
    (["plan", config_path("mlp_deep"), "--set", "L=0"], "--set 'L=0': a size must be a positive integer"),
    (["run", config_path("mlp_deep"), "--set", "B=" + str(2**70)], "is over"),
    (["run", SEED, "--steps", "0"], "--steps"),
    (["run", SEED, "--trace", "--json"], "--trace prints the traces as text"),
    (["methods", SEED, "--plot", "x.png"], "--plot draws the --swell figure"),
    (["plan", SEED, "--plot", "x.png"], "add --sweep"),
    (["bench", SEED, "--update-baseline"], "--update-baseline needs --baseline"),
    (["bench", SEED, "-o", "-", "--json"], "choose one"),
])
def test_bad_flags(run_main, args, needle):
    res = run_main(args)
    assert_one_line(res, needle=needle)
    assert res.stdout == ""


@pytest.mark.parametrize("command", ["check", "numeric", "methods", "trace", "jacobian", "run", "bench"])
def test_commands_that_compute_refuse_a_cost_graph_without_blaming_flags(tmp_path, command):
    graph = tmp_path / "g.json"
    assert invoke(["export", SEED, "-o", str(graph)]).exit_code == 0
    res = invoke([command, str(graph)])
    assert_one_line(res, needle="YAML model config")
    assert "--set" not in res.output and "--dtype" not in res.output


def test_check_json_is_one_document():
    res = invoke(["check", SEED, "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["passed"] is True and all(row["passed"] is True for row in doc["checks"])


def test_check_json_on_a_failing_check_still_prints_the_document(run_main):
    res = run_main(["check", SEED, "--json", "--tol", "1e-300", "--step", "0.5"])
    assert res.exit_code == 1
    assert json.loads(res.stdout)["passed"] is False
    assert "gradient check failed" in res.stderr


def test_plan_with_all_strategies_exits_3_when_the_budget_cannot_fit():
    res = invoke(["plan", config_path("mlp_deep"), *MLP_SMALL, "--memory-budget", "1KiB"])
    assert res.exit_code == 3
    assert "no schedule fits" in res.output and "smallest feasible peak" in res.output


def test_plan_json_still_prints_the_document_with_exit_3():
    res = subprocess.run([sys.executable, "-m", "ckpt", "plan", config_path("mlp_deep"), *MLP_SMALL,
                          "--memory-budget", "1KiB", "--json"],
                         capture_output=True, text=True)
    assert res.returncode == 3
    doc = json.loads(res.stdout)
    budget = next(r for r in doc["strategies"] if r["name"] == "budget")
    assert budget["feasible"] is False
    assert res.stderr.strip().count("\n") == 0 and "no schedule fits" in res.stderr


def test_plan_fitting_budget_exits_0():
    assert invoke(["plan", SEED, "--memory-budget", "1GiB"]).exit_code == 0


# ---- a fixed strategy (store-all, sqrt-n) that misses the budget the user gave -----------------
def _fixed_peak(strategy):
    from ckpt.plan import plan
    from ckpt.session import load_model
    m = load_model(config_path("mlp_deep"), {"B": 4, "D": 8, "L": 3})
    return plan(m.joint, strategy, ix=m.index)[1]


@pytest.mark.parametrize("strategy", ["store-all", "sqrt-n"])
def test_plan_one_fixed_strategy_over_the_budget_exits_3_after_the_table(run_main, strategy):
    """It printed "no" in the fits column and exited 0, as if a budget were a label."""
    sim = _fixed_peak(strategy)
    args = ["plan", config_path("mlp_deep"), *MLP_SMALL, "--strategy", strategy]
    for budget, code in [(sim.peak_ws - 1, 3), (sim.peak_ws, 0)]:  # the bound is the peak with workspace
        res = run_main(args + ["--memory-budget", str(budget)])
        assert res.exit_code == code, res.output
        assert f"{strategy} " in res.stdout and ("  no " if code else " yes ") in res.stdout
        if code:
            assert res.stderr.count("\n") == 1 and f"{strategy}'s plan peaks at" in res.stderr
            assert f"({sim.peak_ws} bytes) with op workspace" in res.stderr and f"({budget} bytes)" in res.stderr
        res = run_main(args + ["--memory-budget", str(budget), "--json"])
        assert res.exit_code == code
        doc = json.loads(res.stdout)  # still one document on stdout
        assert [r["feasible"] for r in doc["strategies"]] == [not code]


def test_plan_budget_strategy_that_cannot_fit_prints_its_report_then_exits_3(run_main):
    """--strategy budget stopped before the report: --json printed nothing on stdout."""
    args = ["plan", SEED, "--strategy", "budget", "--memory-budget", "1"]
    res = run_main(args + ["--json"])
    assert res.exit_code == 3 and res.stderr.count("\n") == 1 and "smallest feasible peak is 88 B" in res.stderr
    (row,) = json.loads(res.stdout)["strategies"]
    assert row["name"] == "budget" and row["feasible"] is False and row["min_peak_bytes"] == 88
    res = run_main(args)
    assert res.exit_code == 3 and "budget      no" in res.stdout


def test_plan_comparison_keeps_exit_0_while_the_budget_strategy_fits(run_main):
    """store-all misses a byte under its own peak, the budget strategy meets it: a comparison, exit 0."""
    budget = str(_fixed_peak("store-all").peak_ws - 1)
    res = run_main(["plan", config_path("mlp_deep"), *MLP_SMALL, "--memory-budget", budget, "--json"])
    assert res.exit_code == 0, res.output
    fits = {r["name"]: r["feasible"] for r in json.loads(res.stdout)["strategies"]}
    assert fits["store-all"] is False and fits["budget"] is True
    res = run_main(["plan", config_path("mlp_deep"), *MLP_SMALL, "--memory-budget", budget])
    assert res.exit_code == 0 and "store-all's plan peaks at" in res.stdout and res.stderr == ""  # why "no"


@pytest.mark.parametrize("strategy", ["store-all", "sqrt-n"])
def test_run_refuses_a_fixed_plan_over_the_budget_before_running(run_main, strategy, monkeypatch):
    """run ran the step and printed EXCEEDED with exit 0; now exit 3 before a step runs."""
    import ckpt.cli.run as run_cli
    monkeypatch.setattr(run_cli, "run_plan", lambda *a, **k: pytest.fail("ran a plan over its budget"))
    sim = _fixed_peak(strategy)
    for extra in ([], ["--json"]):
        res = run_main(["run", config_path("mlp_deep"), *MLP_SMALL, "--strategy", strategy, "--steps", "1",
                        "--memory-budget", str(sim.peak_ws - 1), *extra])
        assert_one_line(res, code=3, needle=f"{strategy}'s plan peaks at")
        assert res.stdout == "" and res.stderr.count("\n") == 1


def test_run_a_fixed_plan_within_the_budget_says_met(run_main):
    sim = _fixed_peak("sqrt-n")
    res = run_main(["run", config_path("mlp_deep"), *MLP_SMALL, "--strategy", "sqrt-n", "--steps", "1",
                    "--memory-budget", str(sim.peak_ws)])
    assert res.exit_code == 0 and "budget " in res.stdout and ": met (peak with workspace" in res.stdout, res.output


@pytest.mark.parametrize("strategy", ["store-all", "sqrt-n"])
def test_compile_refuses_a_fixed_plan_over_the_budget(run_main, tmp_path, strategy):
    out = tmp_path / "step.py"
    sim = _fixed_peak(strategy)
    res = run_main(["compile", config_path("mlp_deep"), *MLP_SMALL, "--strategy", strategy, "-o", str(out),
                    "--memory-budget", str(sim.peak_ws - 1)])
    assert_one_line(res, code=3, needle="--strategy budget plans to a budget")
    assert not out.exists()
    res = run_main(["compile", config_path("mlp_deep"), *MLP_SMALL, "--strategy", strategy, "-o", str(out),
                    "--memory-budget", str(sim.peak_ws), "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["budget_met"] is True and out.exists()


def test_progress_is_silent_off_a_terminal_and_under_json():
    res = subprocess.run([sys.executable, "-m", "ckpt", "check", SEED], capture_output=True, text=True)
    assert res.returncode == 0 and res.stderr == ""
    res = subprocess.run([sys.executable, "-m", "ckpt", "run", SEED, "--json", "--steps", "1"],
                         capture_output=True, text=True)
    assert res.returncode == 0 and res.stderr == ""
    json.loads(res.stdout)


def test_progress_bar_draws_and_erases_on_a_terminal():
    import io

    from ckpt.report import Progress

    class Tty(io.StringIO):
        def isatty(self):
            return True

    out = Tty()
    with Progress("work", stream=out) as bar:
        bar.total = 2
        bar.update()
        bar.update()
    text = out.getvalue()
    assert "2/2" in text and text.endswith("\r\x1b[K")
    quiet = Tty()
    with Progress("work", stream=quiet, enabled=False) as bar:
        bar.update()
    assert quiet.getvalue() == ""


def test_unknown_dim_and_init_list_the_choices(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("dims: {B: 2}\ninputs: {x: {shape: [B, Z], init: normall}}\nnodes: []\noutput: x\n")
    res = invoke(["plan", str(p)])
    assert_one_line(res)
    p.write_text("dims: {B: 2}\ninputs: {x: {shape: [B, Z]}}\nnodes: []\noutput: x\n")
    assert_one_line(invoke(["plan", str(p)]), needle="unknown dim 'Z' (dims: B)")
    p.write_text("inputs: {x: {shape: [2], init: normall}}\nnodes: []\noutput: x\n")
    res = invoke(["plan", str(p)])
    assert_one_line(res, needle="did you mean 'normal'")
    assert "inits: normal, uniform, xavier, zeros, ones, randint, causal_mask" in res.output


def test_bad_flags_through_the_entry_point_are_one_line():
    for args in (["plan", SEED, "--memory-budget", "NaNx"], ["check", SEED, "--step", "nan"]):
        res = subprocess.run([sys.executable, "-m", "ckpt", *args], capture_output=True, text=True)
        assert res.returncode == 2 and res.stdout == ""
        assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr
