"""What a new user meets following the README: mistakes in paths, formats and flags are one line and
the right exit code, before any long work, and files are written as the README promises."""

import json
import os

import pytest

from conftest import config_path
from helpers import assert_one_line

SEED = config_path("seed_example")


# ---- a figure that cannot be written is refused before the work it shows -------------------------
@pytest.mark.parametrize("args", [
    ["plan", SEED, "--sweep", "--plot", "{d}/f.txt"],
    ["run", SEED, "--steps", "1", "--plot-memory", "{d}/m.doc"],
    ["numeric", SEED, "--plot", "{d}/n.xyz"],
    ["methods", "--swell", "--depth", "2", "--plot", "{d}/s.yaml"],
])
def test_a_plot_format_matplotlib_does_not_write_is_refused_first(run_main, tmp_path, monkeypatch, args):
    """It was refused only after the sweep, the timed steps or the study had run."""
    pytest.importorskip("matplotlib")
    import ckpt.cli.diff as diff_cli
    import ckpt.cli.plan as plan_cli
    import ckpt.cli.run as run_cli
    for mod, name in [(plan_cli, "_sweep"), (run_cli, "run_plan"), (diff_cli, "numeric_study"),
                      (diff_cli, "swell_study")]:
        monkeypatch.setattr(mod, name, lambda *a, **k: pytest.fail("the work ran before the plot path was checked"))
    res = run_main([a.format(d=tmp_path) for a in args])
    assert_one_line(res, needle="cannot write a plot as .")
    assert "end the name in .png or .svg" in res.stderr
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("target,needle", [("-", "a plot is written to a file"),
                                           ("{d}/no/such/f.png", "no such directory"),
                                           ("{d}", "is a directory")])
def test_a_plot_path_the_writer_refuses_is_refused_first(run_main, tmp_path, monkeypatch, target, needle):
    pytest.importorskip("matplotlib")
    import ckpt.cli.plan as plan_cli
    monkeypatch.setattr(plan_cli, "_sweep", lambda *a, **k: pytest.fail("swept before the plot path was checked"))
    res = run_main(["plan", SEED, "--sweep", "--plot", target.format(d=tmp_path)])
    assert_one_line(res, needle=needle)


# ---- files the user owns ---------------------------------------------------------------------------
def _deny_writes_to(monkeypatch, denied):
    """os.access as a non-root user sees a read-only file or folder (the tests may run as root, who
    may write anything)."""
    real_access = os.access

    def access(path, mode, *a, **k):
        if os.path.realpath(path) == os.path.realpath(denied) and mode & os.W_OK:
            return False
        return real_access(path, mode, *a, **k)
    monkeypatch.setattr(os, "access", access)


def test_a_read_only_file_is_not_replaced(run_main, tmp_path, monkeypatch):
    """The atomic rename replaced a file its owner had made read-only (`>` and `cp` refuse)."""
    for name, args in (("graph.json", ["export", SEED]), ("step.py", ["compile", SEED]),
                       ("r.json", ["bench", SEED, "--steps", "1", "--strategy", "store-all"]),
                       ("m.yaml", ["export-config", "examples/seed.py:f"])):
        out = tmp_path / name
        out.write_text("keep me\n")
        out.chmod(0o444)
        _deny_writes_to(monkeypatch, out)
        res = run_main([*args, "-o", str(out)])
        assert_one_line(res, needle="read-only")
        assert out.read_text() == "keep me\n" and (out.stat().st_mode & 0o777) == 0o444


def test_a_folder_without_write_permission_is_refused_before_the_work(run_main, tmp_path, monkeypatch):
    import ckpt.bench
    folder = tmp_path / "ro"
    folder.mkdir()
    _deny_writes_to(monkeypatch, folder)
    monkeypatch.setattr(ckpt.bench, "run_bench", lambda *a, **k: pytest.fail("benchmarked before the check"))
    res = run_main(["bench", SEED, "--steps", "1", "-o", str(folder / "r.json")])
    assert_one_line(res, needle="permission denied in the directory")
    res = run_main(["compile", SEED, "-o", str(folder / "s.py")])
    assert_one_line(res, needle="permission denied in the directory")


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o755, 0o2664])
def test_an_existing_file_keeps_its_mode(run_main, tmp_path, mode):
    out = tmp_path / "graph.json"
    out.write_text("old\n")
    out.chmod(mode)
    res = run_main(["export", SEED, "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert (out.stat().st_mode & 0o7777) == mode and json.loads(out.read_text())["nodes"]
    link = tmp_path / "link.json"  # through a symbolic link: the file it names is written
    link.symlink_to(out)
    assert run_main(["export", SEED, "-o", str(link)]).exit_code == 0
    assert link.is_symlink() and (out.stat().st_mode & 0o7777) == mode


# ---- sizes as people write them --------------------------------------------------------------------
@pytest.mark.parametrize("budget,needle", [("50%", "written like 0.5x"), ("2G", "(2GB or 2GiB?)"),
                                           ("512m", "(512MB or 512MiB?)"), ("1,5GiB", "like 0.8x")])
def test_budgets_as_people_write_them_get_a_hint(run_main, budget, needle):
    assert_one_line(run_main(["plan", SEED, "--memory-budget", budget]), needle=needle)


@pytest.mark.parametrize("budget", ["2 GiB", " 1.5GiB ", "0.5 x", "1e3", "88"])
def test_sizes_with_spaces_and_plain_bytes_are_read(run_main, budget):
    res = run_main(["plan", SEED, "--strategy", "budget", "--memory-budget", budget, "--json"])
    assert res.exit_code in (0, 3), res.output  # read and planned (3: a budget below the least peak)
    assert json.loads(res.stdout)["budget_bytes"] == {"2 GiB": 2 * 2**30, " 1.5GiB ": 3 * 2**29, "0.5 x": 44,
                                                       "1e3": 1000, "88": 88}[budget]


def test_bench_reads_its_budgets_before_the_first_config(run_main, monkeypatch):
    import ckpt.bench
    monkeypatch.setattr(ckpt.bench, "run_bench", lambda *a, **k: pytest.fail("benchmarked before reading budgets"))
    assert_one_line(run_main(["bench", SEED, "--memory-budget", "80%"]), needle="written like 0.5x")


# ---- plan -o / --emit torch --------------------------------------------------------------------------
@pytest.mark.parametrize("args,needle", [
    (["-o", "{d}/p.json"], "plan -o writes a PyTorch plan, with --emit torch"),
    (["--emit", "torch"], "--emit torch needs -o FILE"),
    (["--emit", "torch", "-o", "{d}/p.json", "--sweep"], "--sweep does not apply"),
    (["--emit", "torch", "-o", "{d}/p.json", "--strategy", "sqrt-n", "--show-saved"],
     "--show-saved, --strategy sqrt-n do not apply"),
    (["--emit", "torch", "-o", "-", "--json"], "choose one"),
    (["--emit", "torch", "-o", "{d}/no/p.json"], "no such directory"),
])
def test_plan_emit_flags_are_checked_before_loading(run_main, tmp_path, monkeypatch, args, needle):
    """--sweep, --show-saved and --strategy were dropped without a word under --emit torch."""
    import ckpt.cli.plan as plan_cli
    monkeypatch.setattr(plan_cli, "load_model", lambda *a, **k: pytest.fail("loaded before the flags were checked"))
    assert_one_line(run_main(["plan", SEED, *[a.format(d=tmp_path) for a in args]]), needle=needle)


def test_plan_emit_to_standard_output_keeps_it_for_the_plan(run_main, tmp_path):
    pytest.importorskip("torch", reason="torch is not installed (optional: pip install 'ckpt-recompute[torch]')")
    import torch_models
    here = os.path.dirname(os.path.abspath(__file__))
    cfg = tmp_path / "mlp.yaml"
    res = run_main(["import", f"{here}/torch_models.py:mlp", "-o", str(cfg),
                    *[a for i in torch_models.INPUTS["mlp"] for a in ("--input", i)]])
    assert res.exit_code == 0, res.output
    res = run_main(["plan", str(cfg), "--emit", "torch", "-o", "-", "--memory-budget", "0.5x", "--no-compare"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["format"] == "ckpt-torch-plan" and "PyTorch plan for" in res.stderr


# ---- a model whose values are not finite -------------------------------------------------------------
NAN_MODEL = """name: nanny
dtype: float64
inputs:
  x: {shape: [], value: -1.0, grad: true}
  y: {shape: [3], value: [0.0, 1.0, 2.0], grad: true}
nodes:
  - {name: l, op: log, inputs: [x]}
  - {name: r, op: log, inputs: [y]}
  - {name: s, op: sum, inputs: [r]}
  - {name: out, op: add, inputs: [l, s]}
output: out
"""


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("args,code", [(["run", "--steps", "1"], 0), (["check"], 1), (["jacobian"], 0),
                                       (["plan"], 0), (["numeric"], 0)])
def test_json_of_a_nan_loss_is_one_document(run_main, tmp_path, args, code):
    """A loss of nan (log of a negative input) broke --json halfway: half a document, a traceback."""
    cfg = tmp_path / "nan.yaml"
    cfg.write_text(NAN_MODEL)
    res = run_main([args[0], str(cfg), *args[1:], "--json"])
    assert res.exit_code == code and "Traceback" not in res.stderr, res.output
    doc = json.loads(res.stdout)  # strict JSON: no NaN token
    if args[0] == "run":
        assert doc["loss"] is None and doc["gradients"]["x"] == -1.0 and doc["gradients"]["y"][0] is None


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_compile_check_of_a_nan_loss_passes(run_main, tmp_path):
    """nan == nan is False: the generated step's nan loss was called different from the interpreter's."""
    cfg = tmp_path / "nan.yaml"
    cfg.write_text(NAN_MODEL)
    res = run_main(["compile", str(cfg), "-o", str(tmp_path / "s.py"), "--check", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["check"]["bitwise"] is True


# ---- every command takes --json ------------------------------------------------------------------------
def test_every_command_takes_json():
    """DESIGN: every command takes --json; trace, export and export-config did not."""
    from ckpt.cli import LAZY_COMMANDS, cli
    import click
    ctx = click.Context(cli)
    for name in LAZY_COMMANDS:
        opts = {o for p in cli.get_command(ctx, name).params for o in getattr(p, "opts", [])}
        assert "--json" in opts, name


@pytest.mark.parametrize("mode", ["reverse", "forward"])
def test_trace_json_holds_the_seed_traces(run_main, mode):
    res = run_main(["trace", SEED, "--mode", mode, "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    primal = {r["v"]: r for r in doc["primal"]}
    assert primal["v1"]["expression"] == "log(v-1)" and primal["v5"]["value"] == pytest.approx(11.652071455)
    assert doc["output"] == "v5"
    if mode == "reverse":  # the seed's adjoints: x1-bar = 5.5, x2-bar = 1.716
        adj = {r["node"]: r["value"] for r in doc["adjoint"]}
        assert adj["grad:x1"] == pytest.approx(5.5) and adj["grad:x2"] == pytest.approx(1.7163378145)
    else:
        assert doc["wrt"] == "x1" and doc["derivative"] == pytest.approx(5.5)
    text = run_main(["trace", SEED, "--mode", mode]).stdout  # the same rows as the text
    assert all(f"= {r['expression']}" in text for r in doc["primal"][2:])


@pytest.mark.parametrize("args,name", [(["export", SEED], "g.json"), (["export-config", "examples/seed.py:f"], "m.yaml")])
def test_export_json_summary_and_standard_output(run_main, tmp_path, args, name):
    out = tmp_path / name
    res = run_main([*args, "-o", str(out), "--json"])
    assert res.exit_code == 0 and res.stderr == "", res.output
    assert json.loads(res.stdout)["output"] == str(out) and out.exists()
    assert_one_line(run_main([*args, "-o", "-", "--json"]), needle="choose one")


# ---- options that the command, as asked, would drop without a word --------------------------------------
@pytest.mark.parametrize("args,needle", [
    (["trace", SEED, "--wrt", "x2"], "--wrt picks the input the tangent is taken along"),
    (["methods", SEED, "--depth", "3"], "--depth: used only by the --swell study"),
    (["methods", SEED, "--family", "seed", "--depth", "2"], "--depth, --family: used only by the --swell study"),
    (["methods", "--swell", SEED], "CONFIG: --swell studies built-in expressions"),
    (["methods", "--swell", "--set", "B=2"], "--set: --swell studies built-in expressions"),
    (["plan", SEED, "--points", "3"], "--points: used only by --sweep"),
    (["plan", SEED, "--no-compare"], "--compare/--no-compare: used only with --emit torch"),
])
def test_options_the_command_would_drop_are_refused(run_main, args, needle):
    assert_one_line(run_main(args), needle=needle)


def test_options_at_their_defaults_or_used_are_not_refused(run_main):
    assert run_main(["trace", SEED, "--mode", "forward", "--wrt", "x2"]).exit_code == 0
    assert run_main(["plan", SEED, "--sweep", "--points", "3", "--json"]).exit_code == 0
    assert run_main(["methods", "--swell", "--depth", "2", "--family", "seed", "--json"]).exit_code == 0


def test_run_lists_gradients_in_layer_order(run_main):
    """body.10.W came before body.2.W (string order): the first twelve shown skipped layers 2 to 9."""
    res = run_main(["run", config_path("mlp_deep"), "--set", "L=12", "--set", "B=2", "--set", "D=4", "--steps", "1"])
    assert res.exit_code == 0, res.output
    names = [line.split(":")[0].strip() for line in res.stdout.splitlines() if line.startswith("  body.")]
    assert names[:6] == ["body.0.W", "body.0.b", "body.1.W", "body.1.b", "body.2.W", "body.2.b"]


@pytest.mark.parametrize("tol,ok", [("10", False), ("1", False), ("1.5", False), ("10%", True), ("0.1", True),
                                    ("150%", True)])
def test_a_bare_time_tolerance_of_one_or_more_is_refused(tol, ok):
    """`--time-tolerance 10` (meant as 10%) allowed a time ratio to rise a thousand percent."""
    from ckpt.cli.bench import _tolerance
    from ckpt.errors import ConfigError
    if ok:
        assert _tolerance(tol) == pytest.approx(float(tol.rstrip("%")) / (100 if tol.endswith("%") else 1))
    else:
        with pytest.raises(ConfigError, match=f"write {tol}% for {tol} percent"):
            _tolerance(tol)


@pytest.mark.parametrize("out,needle", [("m.txt", "end the name in .yaml or .json"),
                                        ("m", "end the name in .yaml or .json"),
                                        ("no/such/m.yaml", "no such directory")])
def test_import_output_is_checked_before_the_trace(run_main, tmp_path, monkeypatch, out, needle):
    """-o m.txt wrote a YAML config under .txt; a missing folder failed only after the trace."""
    import ckpt.frontends.torch_import as ti
    monkeypatch.setattr(ti, "import_model", lambda *a, **k: pytest.fail("traced before -o was checked"))
    assert_one_line(run_main(["import", "m.py:f", "-o", str(tmp_path / out)]), needle=needle)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="giving a file to another owner needs root")
def test_an_existing_file_keeps_its_owner_and_group(run_main, tmp_path):
    out = tmp_path / "graph.json"
    out.write_text("old\n")
    os.chown(out, 4321, 4322)
    out.chmod(0o2640)
    assert run_main(["export", SEED, "-o", str(out)]).exit_code == 0
    st = out.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (4321, 4322, 0o2640)


def test_a_reader_that_stops_early_is_not_a_failed_check():
    """`ckpt export ... -o - | head -1` exited 1 (click's code for a broken pipe, ckpt's for a failed
    check). The document here is several times a pipe's buffer, so the write meets the closed pipe."""
    import subprocess
    import sys
    proc = subprocess.Popen([sys.executable, "-m", "ckpt", "export", config_path("mlp_deep"), "--set", "L=400",
                             "-o", "-"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"{"
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0, err
    assert "Traceback" not in err and "Exception ignored" not in err and "error" not in err


# ---- -o naming the very file the command reads ---------------------------------------------------------
@pytest.mark.parametrize("args", [
    ["compile", "{cfg}", "-o", "{cfg}"],
    ["export", "{cfg}", "-o", "{d}/./cfg.yaml"],
    ["export-config", "{py}:f", "-o", "{py}"],
    ["bench", "{cfg}", "--steps", "1", "-o", "{cfg}"],
    ["bench", "{cfg}", "--steps", "1", "--baseline", "{cfg}", "--update-baseline"],
    ["plan", "{cfg}", "--emit", "torch", "-o", "{link}"],
])
def test_output_that_is_the_input_is_refused(run_main, tmp_path, args):
    """`compile model.yaml -o model.yaml` replaced the user's model with the code made from it."""
    import shutil
    cfg, py = tmp_path / "cfg.yaml", tmp_path / "m.py"
    shutil.copy(SEED, cfg)
    shutil.copy("examples/seed.py", py)
    (tmp_path / "link.yaml").symlink_to(cfg)
    before = cfg.read_bytes(), py.read_bytes()
    res = run_main([a.format(cfg=cfg, py=py, d=tmp_path, link=tmp_path / "link.yaml") for a in args])
    assert_one_line(res, needle="is the file this command reads")
    assert (cfg.read_bytes(), py.read_bytes()) == before


def test_bench_output_that_is_the_baseline_is_refused(run_main, tmp_path):
    base = tmp_path / "base.json"
    base.write_text('{"schema": 1, "entries": {}}\n')
    res = run_main(["bench", SEED, "--steps", "1", "--baseline", str(base), "-o", str(base)])
    assert_one_line(res, needle="use --update-baseline")
    assert base.read_text() == '{"schema": 1, "entries": {}}\n'


@pytest.mark.parametrize("path", ["/dev/stdout", "/dev/stderr", "/dev/fd/1", "/proc/self/fd/1", "/dev/./stdout"])
def test_another_name_for_standard_output_is_refused(run_main, path):
    """-o /dev/stdout with stdout redirected to a file renamed a new file over it (the shell's output
    then went to a deleted file); on a terminal or a pipe it said only "not a regular file"."""
    assert_one_line(run_main(["export", SEED, "-o", path]), needle="for standard output give -")


def test_a_named_pipe_as_output_points_to_standard_output(run_main, tmp_path):
    fifo = tmp_path / "p"
    os.mkfifo(fifo)
    assert_one_line(run_main(["export", SEED, "-o", str(fifo)]), needle="not a regular file (for standard output give -)")


def test_a_dim_set_twice_to_two_values_is_refused(run_main):
    """--set B=64 --set B=32 planned B=32 without a word."""
    assert_one_line(run_main(["plan", SEED, "--set", "B=64", "--set", "B=32"]), needle="--set B is given twice (64 and 32)")
    res = run_main(["plan", config_path("mlp_deep"), "--set", "B=4", "--set", " B = 4", "--json"])
    assert res.exit_code == 0, res.output  # the same value twice says the same thing


def test_show_saved_lists_a_plan_over_the_budget_too(run_main):
    """store-all over the budget (fits: no) had no saved lists: it is still a plan the user compares."""
    res = run_main(["plan", config_path("mlp_deep"), "--set", "L=2", "--set", "B=2", "--set", "D=3",
                    "--memory-budget", "0.95x", "--show-saved", "--json"])
    assert res.exit_code == 0, res.output
    rows = {r["name"]: r for r in json.loads(res.stdout)["strategies"]}
    assert rows["store-all"]["feasible"] is False and rows["store-all"]["saved"] and rows["store-all"]["steps"]


def test_the_python_api_reads_a_fraction_budget_as_the_command_line_does(run_main, monkeypatch):
    """ckpt.plan(m, budget="0.9x") took 0.9 of store-all's peak without workspace; plan, run and bench
    take it with (what a budget bounds)."""
    import ckpt
    import ckpt.plan as planners
    seen = []
    real = planners.plan

    def spy(joint, strategy, budget=None, **k):
        if strategy == "budget":
            seen.append(budget)
        return real(joint, strategy, budget, **k)
    monkeypatch.setattr(planners, "plan", spy)
    m = ckpt.load(config_path("mlp_deep"), {"B": 8, "D": 16, "L": 4})
    ckpt.plan(m, budget="0.9x")
    res = run_main(["plan", config_path("mlp_deep"), "--set", "B=8", "--set", "D=16", "--set", "L=4",
                    "--strategy", "budget", "--memory-budget", "0.9x", "--json"])
    assert seen[0] == json.loads(res.stdout)["budget_bytes"]


@pytest.mark.parametrize("args", [["export", SEED], ["compile", SEED], ["bench", SEED, "--steps", "1"],
                                  ["export-config", "examples/seed.py:f"]])
def test_an_output_ending_in_a_slash_is_refused(run_main, tmp_path, args):
    """-o newdir/ (a folder not made yet) wrote a file named newdir."""
    res = run_main([*args, "-o", f"{tmp_path}/newdir/"])
    assert_one_line(res, needle="ends in / (a directory)")
    assert os.listdir(tmp_path) == []


def test_a_pgf_plot_without_latex_is_refused_first(run_main, tmp_path, monkeypatch):
    """.pgf is a format matplotlib knows, but it sets the text through LaTeX: without it, a traceback
    after the sweep."""
    pytest.importorskip("matplotlib")
    import shutil
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None)
    assert_one_line(run_main(["plan", SEED, "--sweep", "--plot", str(tmp_path / "f.pgf")]), needle="needs LaTeX")


# ---- the README's commands name options that exist ---------------------------------------------------------
def test_every_option_the_readme_shows_exists():
    """A new user copies the README's commands: every `--flag` shown for `ckpt COMMAND` must be one
    of that command's options (a renamed flag would fail there first)."""
    import re

    import click

    from ckpt.cli import LAZY_COMMANDS, cli
    from conftest import ROOT
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    ctx = click.Context(cli)
    checked = 0
    for snippet in re.findall(r"`(ckpt [^`]+)`", text) + re.findall(r"^(ckpt [^\n#]+)", text, re.M):
        words = snippet.split()
        if len(words) < 2 or words[1] not in LAZY_COMMANDS:
            continue
        cmd = cli.get_command(ctx, words[1])
        opts = {o for p in cmd.params for o in getattr(p, "opts", []) + getattr(p, "secondary_opts", [])}
        for flag in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", snippet):
            assert flag in opts, f"README: `{snippet}`: {flag} is not an option of ckpt {words[1]}"
            checked += 1
    assert checked > 40  # the README's commands were found


@pytest.mark.parametrize("command", ["plan", "run", "check", "compile"])
def test_a_config_of_dash_points_to_dev_stdin(run_main, command):
    """`ckpt plan -` said "-: no such file"; -o - is standard output, so - is tried for input too."""
    assert_one_line(run_main([command, "-"]), needle="for standard input give /dev/stdin")


@pytest.mark.parametrize("args,needle", [
    (["export", SEED, "-o", "{d}/graph.yaml"], "end the name in .json"),
    (["export-config", "examples/seed.py:f", "-o", "{d}/m.json"], "end the name in .yaml"),
    (["compile", SEED, "-o", "{d}/step.yaml"], "end the name in .py"),
    (["compile", SEED, "-o", "{d}/step"], "end the name in .py"),
])
def test_an_output_name_ckpt_would_misread_is_refused(run_main, tmp_path, args, needle):
    """export -o graph.yaml wrote a cost graph that `ckpt plan` then read as a (broken) YAML config;
    export-config -o m.json a config read back as a cost graph; compile -o step a module no
    `import` finds."""
    assert_one_line(run_main([a.format(d=tmp_path) for a in args]), needle=needle)
    assert os.listdir(tmp_path) == []


def test_the_writer_takes_a_pathlib_path(tmp_path):
    """Library code (plan --emit torch's writer) passes pathlib paths; the checks for -o read strings."""
    from ckpt.jsonio import write_json_atomic
    write_json_atomic(tmp_path / "x.json", {"a": 1})
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": 1}
    with pytest.raises(Exception, match="ends in /"):
        write_json_atomic(str(tmp_path / "d") + "/", {})
