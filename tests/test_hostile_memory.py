"""Every command that allocates checks, before allocating, what it needs against what this process
may really use (cgroup limit, RLIMIT_AS, MemAvailable), and refuses in one line naming both."""

import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from ckpt import session
from ckpt.cli import cli
from conftest import ROOT, config_path

SEED = config_path("seed_example")
MLP = config_path("mlp_deep")


def _invoke(args):
    res = CliRunner().invoke(cli, args)
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    return res


@pytest.mark.parametrize("args", [
    ["run", SEED], ["run", MLP, "--strategy", "sqrt-n"], ["check", SEED], ["trace", SEED],
    ["trace", SEED, "--mode", "forward"], ["jacobian", SEED], ["jacobian", SEED, "--mode", "forward"],
    ["numeric", SEED], ["methods", SEED], ["bench", SEED, "--strategy", "store-all", "--steps", "1"],
    ["plan", SEED, "--device", "cpu"],
])
def test_every_allocating_command_checks_memory_first(monkeypatch, args):
    monkeypatch.setattr(session, "memory_headroom", lambda: (10, "a test limit of 10 bytes"))
    allocated = []
    monkeypatch.setattr(session, "leaf_values", lambda *a, **k: allocated.append(1) or {})
    res = _invoke(args)
    out = res.output.strip()
    assert res.exit_code == 2, out
    assert out.count("\n") == 0 and "may use 10 B (a test limit of 10 bytes)" in out, out
    assert "needs" in out and not allocated


def test_plan_never_checks_memory(monkeypatch):
    monkeypatch.setattr(session, "memory_headroom", lambda: (10, "a test limit"))
    assert _invoke(["plan", SEED]).exit_code == 0


def test_enough_memory_passes(monkeypatch):
    monkeypatch.setattr(session, "memory_headroom", lambda: (2**40, "plenty"))
    assert _invoke(["check", SEED]).exit_code == 0


def test_the_figure_is_the_plan_peak_plus_one_largest_value(monkeypatch):
    from ckpt.plan import plan
    model = session.load_model(SEED)
    peak = plan(model.joint, "store-all", ix=model.index)[1].peak
    largest = max(d["bytes"] for _, d in model.graph.nodes(data=True))
    backend = session.get_backend("cpu")
    monkeypatch.setattr(session, "memory_headroom", lambda: (peak + largest, "exact"))
    session.require_memory(model, peak, backend)  # fits exactly
    monkeypatch.setattr(session, "memory_headroom", lambda: (peak + largest - 1, "one byte short"))
    with pytest.raises(session.ConfigError, match="one byte short"):
        session.require_memory(model, peak, backend)


def _fake_cgroup(tmp_path, version, limit, usage, inactive, rel="/job/step"):
    root = tmp_path / "cg"
    if version == 2:
        (tmp_path / "self").write_text(f"0::{rel}\n")
        d = root / rel.strip("/")
        names = ("memory.max", "memory.current", "inactive_file")
    else:
        (tmp_path / "self").write_text(f"5:memory:{rel}\n4:cpu,cpuacct:{rel}\n")
        d = root / "memory" / rel.strip("/")
        names = ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")
    d.mkdir(parents=True)
    (d / names[0]).write_text(f"{limit}\n")
    (d / names[1]).write_text(f"{usage}\n")
    (d / "memory.stat").write_text(f"anon 1\n{names[2]} {inactive}\n")
    return str(tmp_path / "self"), str(root)


@pytest.mark.parametrize("version", [1, 2])
def test_cgroup_limit_less_usage_without_file_cache(tmp_path, monkeypatch, version):
    cgfile, root = _fake_cgroup(tmp_path, version, limit=8 * 2**30, usage=3 * 2**30, inactive=2**30)
    monkeypatch.setattr(session, "CGROUP_FILE", cgfile)
    monkeypatch.setattr(session, "CGROUP_ROOT", root)
    (have, source), = session._cgroup_headroom()
    assert have == 8 * 2**30 - (3 * 2**30 - 2**30)
    assert "cgroup limit 8.00 GiB" in source


@pytest.mark.parametrize("limit", ["max", "9223372036854771712"])
def test_no_cgroup_limit(tmp_path, monkeypatch, limit):
    cgfile, root = _fake_cgroup(tmp_path, 2 if limit == "max" else 1, limit=limit, usage=10, inactive=0)
    monkeypatch.setattr(session, "CGROUP_FILE", cgfile)
    monkeypatch.setattr(session, "CGROUP_ROOT", root)
    assert session._cgroup_headroom() == []


def test_limit_on_an_ancestor_counts(tmp_path, monkeypatch):
    cgfile, root = _fake_cgroup(tmp_path, 2, limit="max", usage=0, inactive=0, rel="/a/b")
    (tmp_path / "cg" / "a" / "memory.max").write_text("1073741824\n")
    monkeypatch.setattr(session, "CGROUP_FILE", cgfile)
    monkeypatch.setattr(session, "CGROUP_ROOT", root)
    assert [h for h, _ in session._cgroup_headroom()] == [2**30]


def test_memory_headroom_takes_the_tightest(monkeypatch):
    monkeypatch.setattr(session, "_cgroup_headroom", lambda: [(5 * 2**30, "cgroup"), (7 * 2**30, "parent")])
    have, source = session.memory_headroom()
    assert have <= 5 * 2**30


_LIMITED = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
sys.path.insert(0, {root!r})
from ckpt.cli import main
main({args!r})
"""


def test_rlimit_as_is_honoured_through_the_entry_point(tmp_path):
    """A real address-space limit: a model needing ~32 GiB under a 4 GiB RLIMIT_AS is refused
    before anything is allocated (without the check numpy would fail or the OOM killer would)."""
    p = tmp_path / "big.yaml"
    p.write_text("name: big\ndims: {B: 65536, D: 32768}\ninputs:\n  x: {shape: [B, D], init: normal, grad: true}\n"
                 "nodes:\n  - {name: s, op: sin, inputs: [x]}\n  - {name: loss, op: sum, inputs: [s]}\noutput: loss\n")
    limit = 4 * 2**30
    for args in (["run", str(p)], ["check", str(p)]):
        code = _LIMITED.format(limit=limit, root=ROOT, args=args)
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert res.returncode == 2, res.stderr
        assert res.stderr.count("\n") == 1 and "may use" in res.stderr and "Traceback" not in res.stderr
        assert "RLIMIT_AS" in res.stderr or "MemAvailable" in res.stderr or "cgroup" in res.stderr


@pytest.mark.skipif(not os.path.exists("/proc/meminfo"), reason="no /proc/meminfo here")
def test_headroom_is_known_on_linux():
    have, source = session.memory_headroom()
    assert have and have > 0 and source
