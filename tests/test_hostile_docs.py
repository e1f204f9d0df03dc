"""The config reference is generated from the op registry; the committed file must match it, and
the repository must stand alone (no links to a ../shared folder a clone does not have)."""

import pathlib
import subprocess
import sys

from ckpt.model.config import ATTR_KINDS, KIND_TEXT, OP_SUMMARY, attr_kind, reference_markdown
from ckpt.ops import REGISTRY

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_committed_config_reference_matches_the_generator():
    assert (ROOT / "docs" / "config.md").read_text(encoding="utf-8") == reference_markdown(), \
        "docs/config.md is out of date: run python scripts/config_reference.py"


def test_generator_check_mode_agrees():
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "config_reference.py"), "--check"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_every_op_and_attr_is_documented_and_has_a_reading_rule():
    assert set(OP_SUMMARY) == {n for n, op in REGISTRY.items() if not op.internal}
    for name, op in REGISTRY.items():
        for attr in op.attrs:
            if not attr.startswith("_"):
                assert attr_kind(name, attr) in KIND_TEXT, (name, attr)
    assert set(ATTR_KINDS.values()) <= set(KIND_TEXT)


def test_reference_names_every_op_and_init():
    text = reference_markdown()
    for name, op in REGISTRY.items():
        assert (f"| `{name}` |" in text) != op.internal  # the model graph's own ops are not a config's
    for init in ("normal", "xavier", "randint", "causal_mask"):
        assert init in text


def test_repository_stands_alone():
    for path in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        assert "../shared" not in path.read_text(encoding="utf-8"), path


def test_license_is_mit():
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert text.startswith("MIT License")
    assert 'license = "MIT"' in (ROOT / "pyproject.toml").read_text(encoding="utf-8")
