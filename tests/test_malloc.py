"""The kept C heap: the commands that execute steps set glibc's malloc parameters once (keep_heap),
`import ckpt` and the library API never do, CKPT_MALLOC=default turns it off, it is a silent no-op
without glibc, and it changes no memory figure. (Its speed is measured by scripts/bench_malloc.py.)"""

import ctypes
import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from ckpt.cli import cli
from ckpt.cli.common import HEAP_MMAP_THRESHOLD, keep_heap
from ckpt.errors import ConfigError
from conftest import ROOT, config_path

KEPT = [(-3, HEAP_MMAP_THRESHOLD), (-1, -1)]  # glibc's M_MMAP_THRESHOLD and M_TRIM_THRESHOLD
GLIBC_VARS = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_",
              "GLIBC_TUNABLES", "CKPT_MALLOC")


class _Mallopt:
    def __init__(self, calls, answer):
        self.calls, self.answer = calls, answer

    def __call__(self, param, value):
        self.calls.append((param, value))
        return self.answer


class FakeLibc:
    """Stands in for the process's C library: records mallopt calls instead of making them, so the
    test process's own malloc is left alone."""

    def __init__(self, glibc=True, has_mallopt=True, answer=1):
        self.calls = []
        if has_mallopt:
            self.mallopt = _Mallopt(self.calls, answer)
        if glibc:
            self.gnu_get_libc_version = lambda: b"2.36"


@pytest.fixture
def libc(monkeypatch):
    """A glibc-like C library behind ctypes.CDLL(None), in a clean environment."""
    for v in GLIBC_VARS:
        monkeypatch.delenv(v, raising=False)
    fake = FakeLibc()
    real = ctypes.CDLL
    monkeypatch.setattr(ctypes, "CDLL", lambda name, *a, **k: fake if name is None else real(name, *a, **k))
    return fake


def test_keep_heap_sets_glibcs_thresholds(libc):
    assert keep_heap() is True
    assert libc.calls == KEPT


@pytest.mark.parametrize("lib", [
    pytest.param(FakeLibc(glibc=False, has_mallopt=False), id="macos-no-mallopt"),
    pytest.param(FakeLibc(glibc=False), id="musl-mallopt-not-glibc"),
    pytest.param(FakeLibc(answer=0), id="mallopt-refuses"),
])
def test_without_glibcs_mallopt_it_is_a_silent_no_op(monkeypatch, libc, lib):
    monkeypatch.setattr(ctypes, "CDLL", lambda name, *a, **k: lib)
    assert keep_heap() is False
    if not hasattr(lib, "gnu_get_libc_version"):  # another libc's mallopt numbers mean other things
        assert lib.calls == []


@pytest.mark.parametrize("error", [OSError, TypeError, AttributeError])  # TypeError: Windows' CDLL(None)
def test_when_the_c_library_cannot_be_opened_it_is_a_silent_no_op(monkeypatch, libc, error):
    def refuse(*a, **k):
        raise error("no C library here")
    monkeypatch.setattr(ctypes, "CDLL", refuse)
    assert keep_heap() is False


def test_ckpt_malloc_default_and_glibcs_own_settings_leave_malloc_alone(monkeypatch, libc):
    monkeypatch.setenv("CKPT_MALLOC", "default")
    assert keep_heap() is False
    monkeypatch.setenv("CKPT_MALLOC", "kept")
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "0")
    assert keep_heap() is False
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_")
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=65536")
    assert keep_heap() is False
    assert keep_heap("cuda") is False  # device memory is the cupy pool's; nothing to keep on the host
    assert libc.calls == []
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.rtld.nns=2")  # not a malloc setting
    assert keep_heap() is True


def test_a_bad_ckpt_malloc_is_one_line_and_exit_2(monkeypatch, libc):
    monkeypatch.setenv("CKPT_MALLOC", "off")
    with pytest.raises(ConfigError):
        keep_heap()
    res = CliRunner().invoke(cli, ["run", config_path("seed_example")])
    assert res.exit_code == 2
    assert res.output.strip().splitlines() == [
        "ckpt: error: environment variable CKPT_MALLOC='off': use kept (the default) or default"]
    assert libc.calls == []


STEPPING = {  # every command that executes steps on the CPU back end
    "run": ["run", config_path("seed_example"), "--steps", "1"],
    "run sqrt-n": ["run", config_path("seed_example"), "--strategy", "sqrt-n", "--steps", "1"],
    "trace": ["trace", config_path("seed_example")],
    "bench": ["bench", config_path("seed_example"), "--strategy", "store-all", "--steps", "1"],
    "impl": ["impl", config_path("seed_example"), "--rounds", "1"],
    "check": ["check", config_path("seed_example")],
    "jacobian": ["jacobian", config_path("seed_example")],
    "numeric": ["numeric", config_path("seed_example")],
    "methods": ["methods", config_path("seed_example")],
    "plan --device cpu": ["plan", config_path("seed_example"), "--device", "cpu"],
}


@pytest.mark.parametrize("name", sorted(STEPPING))
def test_each_command_that_executes_steps_keeps_the_heap(libc, name):
    res = CliRunner().invoke(cli, STEPPING[name])
    assert res.exit_code == 0, res.output
    assert libc.calls[:2] == KEPT  # set before the first step (a second call, if any, sets the same)


def test_compile_keeps_the_heap_only_to_check(libc, tmp_path):
    args = ["compile", config_path("seed_example"), "-o", str(tmp_path / "step.py")]
    assert CliRunner().invoke(cli, args).exit_code == 0
    assert libc.calls == []
    res = CliRunner().invoke(cli, args + ["--check"])
    assert res.exit_code == 0, res.output
    assert libc.calls == KEPT


@pytest.mark.parametrize("args", [["plan", config_path("seed_example")], ["plan", config_path("mlp_deep"), "--json"],
                                  ["--help"]])
def test_commands_that_run_nothing_leave_malloc_alone(libc, args):
    assert CliRunner().invoke(cli, args).exit_code == 0
    assert libc.calls == []


def test_run_json_says_which_heap_timed_its_steps(monkeypatch, libc):
    res = CliRunner().invoke(cli, ["run", config_path("seed_example"), "--steps", "1", "--json"])
    assert json.loads(res.output)["malloc"] == "kept"
    monkeypatch.setenv("CKPT_MALLOC", "default")
    res = CliRunner().invoke(cli, ["run", config_path("seed_example"), "--steps", "1", "--json"])
    assert json.loads(res.output)["malloc"] == "default"


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in GLIBC_VARS}
    env.update(extra)
    return env


# ctypes raises the audit event ctypes.dlsym when it looks a C function up: a library user's process
# must never look mallopt up; the command line's does (the positive control: the hook sees it).
_LIBRARY_USER = """
import sys
looked_up = []
sys.addaudithook(lambda event, args: looked_up.append(args[1]) if event == "ctypes.dlsym" else None)
import ckpt
import ckpt.cli, ckpt.cli.run, ckpt.cli.bench, ckpt.cli.diff, ckpt.cli.impl, ckpt.cli.plan, ckpt.session
m = ckpt.load(sys.argv[1])
r = ckpt.run(m, ckpt.plan(m, strategy="sqrt-n"), steps=2)
print("library", "mallopt" in looked_up)
from ckpt.cli.common import keep_heap
print("cli", keep_heap(), "mallopt" in looked_up)
"""


def test_import_ckpt_and_the_library_api_change_no_process_setting():
    out = subprocess.run([sys.executable, "-c", _LIBRARY_USER, config_path("seed_example")], cwd=ROOT, env=_env(),
                         capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == "library False"
    glibc = sys.platform.startswith("linux") and os.confstr("CS_GNU_LIBC_VERSION")
    assert out[1] == ("cli True True" if glibc else "cli False " + str(out[1].endswith("True")))


def test_the_kept_heap_changes_no_memory_figure():
    """Every memory figure of `run --json`, under both settings, each in a process of its own (the
    setting is process-wide): tracemalloc counts what numpy asks for, not what the C heap holds.
    Arrays of 256 KiB: above glibc's initial mmap threshold, so the two settings do place them
    differently."""
    docs = {}
    for mode in ("kept", "default"):
        out = subprocess.run([sys.executable, "-m", "ckpt", "run", config_path("mlp_deep"), "--strategy", "sqrt-n",
                              "--steps", "2", "--set", "B=256", "--set", "D=256", "--set", "L=4", "--json"],
                             cwd=ROOT, env=_env(CKPT_MALLOC=mode), capture_output=True, text=True, check=True).stdout
        docs[mode] = json.loads(out)
    glibc = sys.platform.startswith("linux") and os.confstr("CS_GNU_LIBC_VERSION")
    assert docs["kept"]["malloc"] == ("kept" if glibc else "default") and docs["default"]["malloc"] == "default"
    for key in ("peak_bytes", "resident_bytes", "managed_peak_bytes"):
        assert docs["kept"][key] == docs["default"][key], key
