"""Hostile files: the one atomic writer (modes, non-regular paths, stdout, missing folders, full
disks, kills), baselines with wrong entries and concurrent updates, and hostile cost graphs."""

import errno
import json
import multiprocessing
import os
import signal
import stat
import subprocess
import sys

import pytest

from ckpt import jsonio
from ckpt.bench import load_baseline, update_baseline
from ckpt.errors import ConfigError
from ckpt.jsonio import write_atomic, write_json_atomic
from conftest import ROOT, config_path
from helpers import assert_one_line, invoke

SEED = config_path("seed_example")


def _leftovers(folder):
    return [n for n in os.listdir(folder) if n.endswith(jsonio._TMP_SUFFIX)]


# ---- the writer ------------------------------------------------------------------------------
def test_existing_file_keeps_its_mode(tmp_path):
    p = tmp_path / "base.json"
    p.write_text("{}")
    for mode in (0o644, 0o664, 0o600, 0o444):
        os.chmod(p, mode)
        write_json_atomic(str(p), {"a": mode})
        assert stat.S_IMODE(os.stat(p).st_mode) == mode
        assert json.loads(p.read_text()) == {"a": mode}


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_new_file_gets_the_umask_default(tmp_path, umask):
    old = os.umask(umask)
    try:
        write_json_atomic(str(tmp_path / "new.json"), {})
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "new.json").st_mode) == 0o666 & ~umask


def test_symlink_is_followed_not_replaced(tmp_path):
    target = tmp_path / "real.json"
    target.write_text("{}")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    write_json_atomic(str(link), {"x": 1})
    assert link.is_symlink() and json.loads(target.read_text()) == {"x": 1}


@pytest.mark.parametrize("path", ["/dev/null", "/dev/zero", "DIR", "FIFO"])
def test_a_path_that_is_not_a_regular_file_is_refused(tmp_path, path):
    if path == "DIR":
        path = str(tmp_path)
    elif path == "FIFO":
        path = str(tmp_path / "fifo")
        os.mkfifo(path)
    elif not os.path.exists(path):
        pytest.skip(f"{path} does not exist here")
    before = os.stat(path)
    with pytest.raises(ConfigError, match="not a regular file"):
        write_json_atomic(path, {})
    after = os.stat(path)
    assert (before.st_ino, before.st_mode) == (after.st_ino, after.st_mode)
    assert not _leftovers(os.path.dirname(path) or ".")


def test_dash_means_standard_output(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_json_atomic("-", {"k": 1})
    assert json.loads(capsys.readouterr().out) == {"k": 1}
    assert not os.path.exists(tmp_path / "-")


def test_missing_directory_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match="no such directory"):
        write_json_atomic(str(tmp_path / "nope" / "x.json"), {})


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT])
def test_write_failures_are_one_line_and_leave_nothing(tmp_path, monkeypatch, err):
    p = tmp_path / "base.json"
    p.write_text('{"old": true}')

    def fail(fd):
        raise OSError(err, os.strerror(err))
    monkeypatch.setattr(jsonio.os, "fsync", fail)
    with pytest.raises(ConfigError) as e:
        write_json_atomic(str(p), {"new": True})
    assert "\n" not in str(e.value) and str(p) in str(e.value)
    if err == errno.ENOSPC:
        assert "the disk is full" in str(e.value)
    assert json.loads(p.read_text()) == {"old": True}
    assert not _leftovers(tmp_path)


def test_exception_inside_the_write_removes_the_temp_file(tmp_path):
    def boom(f):
        f.write("half")
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        write_atomic(str(tmp_path / "x.json"), boom)
    assert not _leftovers(tmp_path) and not (tmp_path / "x.json").exists()


def test_unserialisable_document_leaves_the_old_file(tmp_path):
    p = tmp_path / "x.json"
    p.write_text("{}")
    with pytest.raises(ValueError):
        write_json_atomic(str(p), {"x": float("nan")})
    assert p.read_text() == "{}" and not _leftovers(tmp_path)


_SLOW_WRITER = """
import sys, time
sys.path.insert(0, {root!r})
from ckpt.jsonio import write_atomic
def slow(f):
    f.write("partial")
    f.flush()
    print("writing", flush=True)
    time.sleep(60)
write_atomic({path!r}, slow)
"""


def _start_slow_writer(path):
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_WRITER.format(root=ROOT, path=str(path))],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    return proc


def test_sigterm_during_a_write_removes_the_temp_file(tmp_path):
    p = tmp_path / "base.json"
    p.write_text("{}")
    proc = _start_slow_writer(p)
    assert _leftovers(tmp_path)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGTERM and "Traceback" not in err
    assert not _leftovers(tmp_path) and p.read_text() == "{}"


def test_temp_file_of_a_killed_write_is_removed_by_the_next_write(tmp_path):
    p = tmp_path / "base.json"
    p.write_text("{}")
    proc = _start_slow_writer(p)
    proc.kill()
    proc.wait(timeout=30)
    assert _leftovers(tmp_path) and p.read_text() == "{}"  # kill -9 cannot be cleaned up at once
    write_json_atomic(str(p), {"after": 1})
    assert not _leftovers(tmp_path) and json.loads(p.read_text()) == {"after": 1}


def test_a_live_writers_temp_file_is_left_alone(tmp_path):
    p = tmp_path / "base.json"
    live = tmp_path / f".base.json.{os.getppid()}.abc{jsonio._TMP_SUFFIX}"
    live.write_text("someone else's")
    write_json_atomic(str(p), {})
    assert live.exists()


# ---- through the commands ----------------------------------------------------------------------
@pytest.mark.parametrize("args", [
    ["bench", SEED, "--strategy", "store-all", "--steps", "1", "-o", "MISSING/out.json"],
    ["bench", SEED, "--strategy", "store-all", "--steps", "1", "--baseline", "MISSING/b.json", "--update-baseline"],
    ["export", SEED, "-o", "MISSING/g.json"],
    ["bench", SEED, "--strategy", "store-all", "--steps", "1", "-o", "/dev/null"],
    ["export", SEED, "-o", "/dev/null"],
])
def test_commands_refuse_unwritable_paths_in_one_line(tmp_path, args):
    args = [a.replace("MISSING", str(tmp_path / "missing")) for a in args]
    assert_one_line(invoke(args), needle="cannot write")


def test_export_and_bench_to_stdout(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = subprocess.run([sys.executable, "-m", "ckpt", "export", SEED, "-o", "-"], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": ROOT})
    assert res.returncode == 0 and json.loads(res.stdout)["nodes"] and not (tmp_path / "-").exists()
    res = subprocess.run([sys.executable, "-m", "ckpt", "bench", SEED, "--strategy", "store-all", "--steps", "1",
                          "-o", "-"], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ROOT})
    assert res.returncode == 0 and "seed_example:store-all" in json.loads(res.stdout)["entries"]


def test_plot_to_dash_is_refused(tmp_path):
    pytest.importorskip("matplotlib")
    assert_one_line(invoke(["numeric", SEED, "--plot", "-"]), needle="a plot is written to a file")


def test_plot_keeps_the_mode_of_an_existing_file(tmp_path):
    pytest.importorskip("matplotlib")
    p = tmp_path / "n.png"
    p.write_bytes(b"old")
    os.chmod(p, 0o640)
    assert invoke(["numeric", SEED, "--plot", str(p)]).exit_code == 0
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o640 and p.read_bytes()[:4] == b"\x89PNG"
    assert not _leftovers(tmp_path)


# ---- baselines -----------------------------------------------------------------------------------
GOOD_ENTRY = {"feasible": True, "peak_predicted": 10, "peak_measured": 10, "peak_allocator": 12, "time_ratio": 1.0}


@pytest.mark.parametrize("entry", [1, None, "x", [1, 2], True, {}, {"feasible": "yes"},
                                   {**GOOD_ENTRY, "peak_measured": None}, {**GOOD_ENTRY, "peak_measured": "10"},
                                   {**GOOD_ENTRY, "peak_measured": -1}, {**GOOD_ENTRY, "peak_measured": 1.5},
                                   {**GOOD_ENTRY, "peak_measured": True}, {**GOOD_ENTRY, "time_ratio": 0},
                                   {**GOOD_ENTRY, "time_ratio": None}, {**GOOD_ENTRY, "time_ratio": [1]}],
                         ids=repr)
def test_baseline_with_a_wrong_entry(tmp_path, entry):
    p = tmp_path / "b.json"
    text = json.dumps({"schema": 1, "entries": {"seed_example:store-all": entry}})
    p.write_text(text)
    with pytest.raises(ConfigError, match="baseline entry 'seed_example:store-all'"):
        load_baseline(str(p))
    for extra in (["--baseline", str(p)], ["--baseline", str(p), "--update-baseline"]):
        res = invoke(["bench", SEED, "--strategy", "store-all", "--steps", "1", *extra])
        assert_one_line(res, needle="baseline entry")
        assert p.read_text() == text  # never overwritten


@pytest.mark.parametrize("doc", ['{"schema": 1, "schema": 1, "entries": {}}', "[]", "null", "1", '{"schema": 2, "entries": {}}', '{"schema": 1}',
                                 '{"schema": 1, "entries": []}', "{" * 100000, "not json", ""])
def test_corrupt_baseline_files(tmp_path, doc):
    p = tmp_path / "b.json"
    p.write_text(doc)
    res = invoke(["bench", SEED, "--strategy", "store-all", "--steps", "1", "--baseline", str(p)])
    assert_one_line(res, needle=str(p))
    assert p.read_text() == doc


def test_infeasible_entries_need_no_figures(tmp_path):
    p = tmp_path / "b.json"
    p.write_text(json.dumps({"schema": 1, "entries": {"a:budget@1": {"feasible": False, "error": "x"}}}))
    assert load_baseline(str(p))["a:budget@1"]["feasible"] is False


def _update(args):
    path, worker, n = args
    for i in range(n):
        update_baseline(path, {f"w{worker}:e{i}": dict(GOOD_ENTRY, peak_measured=worker * 1000 + i)})
    return worker


def test_concurrent_updates_lose_no_entry(tmp_path):
    p = str(tmp_path / "b.json")
    workers, n = 4, 15
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(workers) as pool:
        assert sorted(pool.map(_update, [(p, w, n) for w in range(workers)])) == list(range(workers))
    entries = load_baseline(p)
    assert len(entries) == workers * n
    assert all(entries[f"w{w}:e{i}"]["peak_measured"] == w * 1000 + i for w in range(workers) for i in range(n))
    assert not _leftovers(tmp_path)


def test_update_creates_and_merges(tmp_path):
    p = str(tmp_path / "b.json")
    update_baseline(p, {"a": GOOD_ENTRY})
    update_baseline(p, {"b": GOOD_ENTRY})
    assert sorted(load_baseline(p)) == ["a", "b"]


# ---- cost graphs ---------------------------------------------------------------------------------
def _graph(**extra):
    doc = {"nodes": [{"id": "a", "cost_cpu": 1, "cost_ram": 8}, {"id": "b", "cost_cpu": 1, "cost_ram": 8}],
           "links": [{"source": "a", "target": "b"}]}
    doc.update(extra)
    return doc


@pytest.mark.parametrize("doc,needle", [
    (_graph(nodes=[{"id": [1], "cost_cpu": 1, "cost_ram": 1}]), "node id"),
    (_graph(nodes=[{"id": None, "cost_cpu": 1, "cost_ram": 1}]), "node id"),
    (_graph(nodes=[{"id": "a", "cost_cpu": 10**400, "cost_ram": 1}]), "cost_cpu"),
    (_graph(nodes=[{"id": "a", "cost_cpu": 1, "cost_ram": 2**70}]), "2**62"),
    (_graph(nodes=[{"id": "a", "cost_cpu": 1, "cost_ram": 2**61}, {"id": "b", "cost_cpu": 1, "cost_ram": 2**61},
                   {"id": "c", "cost_cpu": 1, "cost_ram": 2**61}], links=[]), "2**62"),
    (_graph(nodes=[{"id": "a", "cost_cpu": [1], "cost_ram": 1}]), "cost_cpu"),
    (_graph(nodes=[{"id": "a", "cost_cpu": 1, "cost_ram": "8"}]), "cost_ram"),
    (_graph(nodes=[{"id": "a", "cost_cpu": 1, "cost_ram": 1, "backward": "no"}]), "backward"),
    (_graph(links=[{"source": ["a"], "target": "b"}]), "source and target"),
    (_graph(links=[{"source": {"x": 1}, "target": "b"}]), "source and target"),
    (_graph(links=[1]), "needs 'source'"),
    (_graph(graph=[1]), "'graph' must be a mapping"),
    (_graph(graph={"resident_bytes": "x"}), "resident_bytes"),
    (_graph(graph={"resident_bytes": 2**63}), "resident_bytes"),
    (_graph(nodes={"a": 1}), "must be lists"),
    (_graph(nodes=None), "must be lists"),
])
def test_hostile_cost_graphs(tmp_path, doc, needle):
    p = tmp_path / "g.json"
    p.write_text(json.dumps(doc))
    assert_one_line(invoke(["plan", str(p)]), needle=needle)


def test_duplicate_keys_in_a_cost_graph(tmp_path):
    p = tmp_path / "g.json"
    p.write_text('{"nodes": [{"id": "a", "cost_cpu": 1, "cost_cpu": 2, "cost_ram": 8}], "links": []}')
    assert_one_line(invoke(["plan", str(p)]), needle="duplicate key 'cost_cpu'")


@pytest.mark.parametrize("text", ["[" * 100000 + "]" * 100000, '{"nodes": ' + "[" * 5000 + "]" * 5000 + "}",
                                  '{"nodes": [], "links": [], "graph": ' + '{"a": ' * 3000 + "1" + "}" * 3001])
def test_deeply_nested_json(tmp_path, text):
    p = tmp_path / "g.json"
    p.write_text(text)
    assert_one_line(invoke(["plan", str(p)]))


def test_graph_past_the_node_limit_is_refused_before_building(tmp_path, monkeypatch):
    from ckpt.model import costgraph
    monkeypatch.setattr(costgraph, "MAX_NODES", 10)
    p = tmp_path / "g.json"
    p.write_text(json.dumps({"nodes": [{"id": i, "cost_cpu": 1, "cost_ram": 1} for i in range(11)], "links": []}))
    assert_one_line(invoke(["plan", str(p)]), needle="more than the 10")


def test_model_past_the_joint_limit_is_refused(tmp_path, monkeypatch):
    from ckpt.model import graph
    monkeypatch.setattr(graph, "MAX_NODES", 5)
    assert_one_line(invoke(["plan", SEED]), needle="joint forward+gradient graph")
