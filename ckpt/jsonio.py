"""JSON files the user owns: read with one clear error, written atomically."""

import json
import os
import tempfile

from .errors import ConfigError


def read_json(path, what="file"):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise ConfigError(f"no such {what}", file=path) from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{what} is not JSON: {e.msg}", file=path, line=e.lineno) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read {what}: {e.__class__.__name__}", file=path) from None


def write_json_atomic(path, doc, sort_keys=False):
    """Write to a temporary file beside `path`, then rename: a crash never leaves half a file."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".ckpt-", suffix=".json", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=1, sort_keys=sort_keys)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
