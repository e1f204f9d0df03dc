"""Files that only make sense together are written all or nothing (jsonio.write_atomic_group): each
to a temporary beside it first, renamed into place only when all are written. A failure on any of
them (the disk full at the second or third file, an error in a writer, a rename refused) leaves
no new file, no temporary, and every file that was there with its content and mode. `ckpt import`
writes its config, weights and metadata so (the torch tests skip without torch)."""

import errno
import os
import stat

import numpy as np
import pytest
from click.testing import CliRunner

from ckpt import jsonio
from ckpt.errors import ConfigError
from ckpt.jsonio import write_atomic_group

NAMES = ("m.npz", "m.torch.json", "m.yaml")


def group(folder, tag="new"):
    """Three files as the importer writes them: binary weights, JSON metadata, the config last."""
    return [(str(folder / "m.npz"), lambda f: np.savez(f, w=np.arange(3.0)), True),
            (str(folder / "m.torch.json"), jsonio._json_writer({"tag": tag}), False),
            (str(folder / "m.yaml"), lambda f: f.write(f"tag: {tag}\n"), False)]


def snapshot(folder):
    """Every file in the folder (temporaries included): its bytes and mode."""
    return {n: ((folder / n).read_bytes(), stat.S_IMODE((folder / n).stat().st_mode))
            for n in sorted(os.listdir(folder))}


def existing(folder):
    modes = (0o640, 0o600, 0o644)
    for name, mode in zip(NAMES, modes):
        (folder / name).write_bytes(f"old {name}\n".encode())
        (folder / name).chmod(mode)
    return snapshot(folder)


def fail_on_call(monkeypatch, module, name, n, exc):
    """The n-th call of module.name raises exc (the calls before it, and after, run)."""
    real = getattr(module, name)
    calls = []

    def wrapper(*a, **k):
        calls.append(a)
        if len(calls) == n:
            raise exc
        return real(*a, **k)
    monkeypatch.setattr(module, name, wrapper)
    return calls


DISK_FULL = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("before", ["none", "all", "some"])
@pytest.mark.parametrize("n", [1, 2, 3])
def test_disk_full_at_any_file_leaves_everything_as_it_was(tmp_path, monkeypatch, before, n):
    if before == "all":
        existing(tmp_path)
    elif before == "some":
        (tmp_path / "m.yaml").write_text("old config\n")
        (tmp_path / "m.yaml").chmod(0o600)
    was = snapshot(tmp_path)
    fail_on_call(monkeypatch, jsonio.os, "fsync", n, DISK_FULL)  # each file is flushed to disk once
    with pytest.raises(ConfigError) as e:
        write_atomic_group(group(tmp_path))
    assert "the disk is full" in str(e.value) and NAMES[n - 1] in str(e.value) and "\n" not in str(e.value)
    assert snapshot(tmp_path) == was


@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("error", [ValueError("not serialisable"), KeyboardInterrupt()])
def test_an_error_in_any_writer_leaves_everything_as_it_was(tmp_path, n, error):
    was = existing(tmp_path)
    files = group(tmp_path)

    def boom(f):
        f.write(b"half" if files[n - 1][2] else "half")
        raise error
    files[n - 1] = (files[n - 1][0], boom, files[n - 1][2])
    with pytest.raises(type(error)):
        write_atomic_group(files)
    assert snapshot(tmp_path) == was


@pytest.mark.parametrize("before", ["none", "all"])
@pytest.mark.parametrize("n", [2, 3])
def test_a_rename_refused_puts_back_the_files_already_renamed(tmp_path, monkeypatch, before, n):
    was = existing(tmp_path) if before == "all" else snapshot(tmp_path)
    calls = fail_on_call(monkeypatch, jsonio.os, "replace", n, OSError(errno.EIO, os.strerror(errno.EIO)))
    with pytest.raises(ConfigError, match="cannot write"):
        write_atomic_group(group(tmp_path))
    assert len(calls) >= n
    assert snapshot(tmp_path) == was


@pytest.mark.parametrize("n", [2, 3])
def test_without_hard_links_a_new_file_renamed_is_removed_again(tmp_path, monkeypatch, n):
    def no_links(*a):
        raise OSError(errno.EPERM, os.strerror(errno.EPERM))
    monkeypatch.setattr(jsonio.os, "link", no_links)
    fail_on_call(monkeypatch, jsonio.os, "replace", n, OSError(errno.EIO, os.strerror(errno.EIO)))
    with pytest.raises(ConfigError):
        write_atomic_group(group(tmp_path))
    assert snapshot(tmp_path) == {}


def test_all_written_keep_their_modes(tmp_path):
    (tmp_path / "m.torch.json").write_text("{}")
    (tmp_path / "m.torch.json").chmod(0o600)
    write_atomic_group(group(tmp_path, "done"))
    files = snapshot(tmp_path)
    assert sorted(files) == sorted(NAMES)  # no temporary, no backup left
    assert files["m.torch.json"] == (b'{\n "tag": "done"\n}\n', 0o600)
    assert files["m.yaml"][0] == b"tag: done\n"
    umask = os.umask(0)
    os.umask(umask)
    assert files["m.yaml"][1] == files["m.npz"][1] == 0o666 & ~umask
    assert np.load(tmp_path / "m.npz")["w"].tolist() == [0.0, 1.0, 2.0]


def test_one_file_named_twice_is_refused(tmp_path):
    files = group(tmp_path)
    os.symlink(tmp_path / "m.yaml", tmp_path / "alias.yaml")
    files[1] = (str(tmp_path / "alias.yaml"), files[1][1], False)
    with pytest.raises(ConfigError, match="the same file"):
        write_atomic_group(files)
    assert sorted(os.listdir(tmp_path)) == ["alias.yaml"]


# ---- ckpt import ---------------------------------------------------------------------------------------
TINY = """
import torch


class Tiny(torch.nn.Module):
    def __init__(self, depth):
        super().__init__()
        self.layers = torch.nn.Sequential(*[torch.nn.Linear(4, 4) for _ in range(depth)])

    def forward(self, x, y):
        return torch.nn.functional.mse_loss(torch.relu(self.layers(x)), y)


def tiny():
    torch.manual_seed(0)
    return Tiny(1)


def deeper():  # another import: every one of the three files differs from tiny's
    torch.manual_seed(1)
    return Tiny(2)
"""


@pytest.fixture
def tiny_import(tmp_path):
    pytest.importorskip("torch", reason="torch is not installed (optional: pip install 'ckpt-recompute[torch]')")
    from ckpt.cli import cli
    model = tmp_path / "tiny.py"
    model.write_text(TINY)
    out = tmp_path / "out"
    out.mkdir()

    def run(factory="tiny"):
        return CliRunner().invoke(cli, ["import", f"{model}:{factory}", "--input", "x=2x4", "--input", "y=2x4",
                                        "-o", str(out / "m.yaml")])
    return run, out


@pytest.mark.parametrize("n", [2, 3])
def test_import_that_fails_at_the_second_or_third_file_writes_none(tiny_import, monkeypatch, n):
    run, out = tiny_import
    fail_on_call(monkeypatch, jsonio.os, "fsync", n, DISK_FULL)
    res = run()
    assert res.exit_code == 2 and res.output.count("\n") == 1 and "the disk is full" in res.output, res.output
    assert snapshot(out) == {}


@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("how", ["fsync", "replace"])
def test_import_that_fails_keeps_the_files_of_the_last_one(tiny_import, monkeypatch, n, how):
    run, out = tiny_import
    res = run()
    assert res.exit_code == 0, res.output
    (out / "m.yaml").chmod(0o640)
    (out / "m.npz").chmod(0o600)
    was = snapshot(out)
    assert sorted(was) == sorted(NAMES)
    fail_on_call(monkeypatch, jsonio.os, how, n, DISK_FULL)
    res = run("deeper")
    assert res.exit_code == 2 and res.output.count("\n") == 1, res.output
    assert snapshot(out) == was
    monkeypatch.undo()
    from ckpt.session import load_model
    load_model(str(out / "m.yaml"))  # the set left in place still loads: config and weights agree
    assert run("deeper").exit_code == 0  # and unhindered, the other import replaces all three
    now = snapshot(out)
    assert all(now[k][0] != was[k][0] and now[k][1] == was[k][1] for k in NAMES)
