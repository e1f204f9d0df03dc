"""Files the user owns: read with one clear error, written atomically through one writer.

The writer (`write_atomic`) is what every command that writes a file uses (`bench -o`,
`--update-baseline`, `export -o`, the plots): it writes a temporary file beside the target and
renames it over the target, so a crash leaves the old file or the new one, never half of one. It
keeps an existing file's mode (a new file gets the umask's default, as `open` would give it),
refuses a path that exists and is not a regular file (a device, a directory, a pipe), and on any
failure, Ctrl-C or SIGTERM removes its temporary file. A temporary file that a `kill -9` left
behind is removed by the next write to the same path. `-` means standard output. Files that only
make sense together (`ckpt import`'s config, weights and metadata) go through `write_atomic_group`:
all written before any is renamed into place.
"""

import contextlib
import errno
import json
import os
import re
import signal
import stat
import sys
import tempfile
import threading

from .errors import ConfigError
from .sizes import MAX_FILE_BYTES

STDOUT = "-"
_TMP_SUFFIX = ".ckpt-tmp"


def read_text(path, what="file"):
    """A user file's text, refused before it is read when it is over MAX_FILE_BYTES."""
    too_big = f"{what} is larger than {MAX_FILE_BYTES // 2**20} MiB, the largest ckpt reads"
    try:
        # A named pipe with no writer would block open() forever; opened without blocking it opens at
        # once, and read then waits for a writer's data as usual or, with no writer, sees the end.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        with os.fdopen(fd, "rb") as f:
            if os.fstat(f.fileno()).st_size > MAX_FILE_BYTES:
                raise ConfigError(too_big, file=path)
            data = f.read(MAX_FILE_BYTES + 1)  # a pipe or a device has no size: read one byte past
        if len(data) > MAX_FILE_BYTES:
            raise ConfigError(too_big, file=path)
        return data.decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"no such {what}", file=path) from None
    except UnicodeDecodeError:
        raise ConfigError(f"{what} is not UTF-8 text", file=path) from None
    except OSError as e:
        raise ConfigError(f"cannot read {what}: {e.strerror or e.__class__.__name__}", file=path) from None


class _Duplicate(Exception):
    pass


def _no_duplicates(pairs):
    """A JSON object, refusing a repeated key (json would keep the last one silently)."""
    out = dict(pairs)
    if len(out) != len(pairs):
        seen = set()
        for k, _ in pairs:
            if k in seen:
                raise _Duplicate(k)
            seen.add(k)
    return out


def read_json(path, what="file"):
    text = read_text(path, what)
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{what} is not JSON: {e.msg}", file=path, line=e.lineno) from None
    except ValueError:  # the one ValueError the decoder raises besides: an integer past Python's digit limit
        raise ConfigError(f"{what} holds a number of more than {sys.get_int_max_str_digits()} digits", file=path) from None
    except _Duplicate as e:
        key = str(e.args[0])
        raise ConfigError(f"{what} has a duplicate key {key if len(key) <= 40 else key[:37] + '...'!r}",
                          file=path) from None
    except RecursionError:  # the decoder recurses once per nesting level
        raise ConfigError(f"{what} is nested too deeply to be a ckpt file", file=path) from None


def _umask_mode():
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale(folder, base):
    """Temporary files of earlier writes to this path whose process is gone (killed mid-write)."""
    prefix = f".{base}."
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        if not (name.startswith(prefix) and name.endswith(_TMP_SUFFIX)):
            continue
        pid = name[len(prefix):-len(_TMP_SUFFIX)].split(".")[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(folder, name))


class _Terminated(BaseException):
    pass


@contextlib.contextmanager
def _sigterm_raises():
    """While a temporary file exists, SIGTERM unwinds (so the file is removed) instead of killing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise _Terminated()

    try:
        old = signal.signal(signal.SIGTERM, handler)
    except (ValueError, OSError):
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def check_writable(path):
    """Refuse early, before a long run, a path the writer will refuse: its folder is missing or
    it exists and is not a regular file. Returns (real path, its stat or None)."""
    if not path:
        raise ConfigError("cannot write to an empty path: give a file name, or - for standard output")
    path = os.fspath(path)  # a pathlib.Path from the library as well as a string from the command line
    if re.fullmatch(r"/dev/(stdout|stderr|fd/\d+)|/proc/(self|\d+)/fd/\d+", os.path.normpath(path)):
        # another name of an open descriptor: the rename would replace whatever file the shell
        # redirected it to, under the table the command prints there
        raise ConfigError("cannot write: this is another name for an open file descriptor; for standard "
                          "output give -", file=path)
    if path.endswith(("/", os.sep)):  # realpath would drop the slash and write a file of the folder's name
        raise ConfigError("cannot write: the path ends in / (a directory): give a file name", file=path)
    real = os.path.realpath(path)  # a symlink keeps pointing at the file it names
    try:
        st = os.stat(real)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise ConfigError(f"cannot write: {e.strerror}", file=path) from None
    if st is not None and not stat.S_ISREG(st.st_mode):
        terminal = stat.S_ISCHR(st.st_mode) and real.startswith(("/dev/pts/", "/dev/tty"))
        hint = " (for standard output give -)" if terminal or stat.S_ISFIFO(st.st_mode) else ""
        raise ConfigError(f"cannot write: the path exists and is not a regular file{hint}", file=path)
    if not os.path.isdir(os.path.dirname(real)):
        raise ConfigError(f"cannot write: no such directory {os.path.dirname(path) or '.'!r}", file=path)
    # the rename would replace a file its owner made read-only, which `>` or `cp` refuse; and a
    # folder the temporary file cannot be made in fails the write only after the work
    if st is not None and not os.access(real, os.W_OK):
        raise ConfigError("cannot write: the file is read-only (permission denied)", file=path)
    if not os.access(os.path.dirname(real), os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write: permission denied in the directory {os.path.dirname(path) or '.'!r}",
                          file=path)
    return real, st


def _write_temp(real, st, write, binary):
    """Call `write(f)` on a new temporary file beside `real`, flushed to the disk, with the mode
    (and owner) of the file `real` is (`st`, its stat) or a new file's: the file that the rename
    over `real` then makes. Returns its path; on any failure removes it and raises."""
    folder, base = os.path.split(real)
    mode = stat.S_IMODE(st.st_mode) if st is not None else _umask_mode()
    _remove_stale(folder, base)
    fd, tmp = tempfile.mkstemp(prefix=f".{base}.{os.getpid()}.", suffix=_TMP_SUFFIX, dir=folder)
    try:
        with os.fdopen(fd, "wb" if binary else "w", encoding=None if binary else "utf-8") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if st is not None and (st.st_uid, st.st_gid) != (os.getuid(), os.getgid()):
            # the file's owner and group too (root updating a user's file, a shared group)
            with contextlib.suppress(OSError, AttributeError):
                os.chown(tmp, st.st_uid, st.st_gid)
        os.chmod(tmp, mode)  # after chown, which clears the set-id bits
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return tmp


def _write_error(e, path):
    why = "the disk is full" if e.errno in (errno.ENOSPC, errno.EDQUOT) else (e.strerror or str(e))
    return ConfigError(f"cannot write: {why}", file=path)


def write_atomic(path, write, binary=False):
    """Call `write(f)` on a temporary file beside `path`, then rename it over `path`. Failures
    the user can fix (no such directory, read-only, disk full, not a regular file) are one
    ConfigError line; `path` is then untouched."""
    if path == STDOUT:
        out = sys.stdout.buffer if binary else sys.stdout
        write(out)
        out.flush()
        return
    write_atomic_group([(path, write, binary)])


def write_atomic_group(files):
    """Write files that only make sense together (a config, its weights, its metadata): `files`
    is [(path, write, binary)], written as write_atomic writes one. Every file is written to its
    temporary first; only when all are on the disk are they renamed into place, in the order
    given (so put the file that names the others last). A failure while writing (disk full, an
    error in a writer, Ctrl-C, SIGTERM) leaves every path as it was and no temporary behind; a
    failure while renaming puts back the files already renamed (an old one from a hard link made
    before the renames, where the filesystem has them). Only a crash between two renames can
    leave a mix, which no sequence of renames avoids."""
    targets = []
    for path, write, binary in files:
        real, st = check_writable(path)
        same = next((p for p, r, _, _, _ in targets if r == real), None)
        if same is not None:
            raise ConfigError(f"cannot write: {same} and {path} are the same file", file=path)
        targets.append((path, real, st, write, binary))
    temps, backups, placed, current = {}, {}, [], None
    try:
        with _sigterm_raises():
            try:
                for path, real, st, write, binary in targets:
                    current = path
                    temps[path] = _write_temp(real, st, write, binary)
                for path, real, st, _, _ in targets:
                    if st is not None and len(targets) > 1:  # (one rename needs no undoing)
                        backups[path] = _hard_link_beside(real)
                for path, real, _, _, _ in targets:
                    current = path
                    os.replace(temps[path], real)
                    del temps[path]
                    placed.append((path, real))
            except BaseException:
                existed = {path for path, _, st, _, _ in targets if st is not None}
                for path, real in reversed(placed):
                    with contextlib.suppress(OSError):
                        if backups.get(path) is not None:
                            os.replace(backups.pop(path), real)
                        elif path not in existed:
                            os.unlink(real)  # new with this group: gone again
                raise
            finally:
                for tmp in [*temps.values(), *backups.values()]:
                    if tmp is not None:
                        with contextlib.suppress(OSError):
                            os.unlink(tmp)
    except _Terminated:
        raise SystemExit(128 + signal.SIGTERM) from None
    except OSError as e:
        raise _write_error(e, current) from None


def _hard_link_beside(real):
    """A second name for the file `real`, named as a temporary file (so that a killed process's is
    removed by the next write), or None where the filesystem has no hard links."""
    folder, base = os.path.split(real)
    for _ in range(100):
        name = os.path.join(folder, f".{base}.{os.getpid()}.{os.urandom(4).hex()}{_TMP_SUFFIX}")
        try:
            os.link(real, name)
            return name
        except FileExistsError:
            continue
        except OSError:
            return None
    return None


def _json_writer(doc, sort_keys=False):
    def write(f):
        json.dump(doc, f, indent=1, sort_keys=sort_keys, allow_nan=False, default=_plain)
        f.write("\n")
    return write


def write_json_atomic(path, doc, sort_keys=False):
    """One JSON document, indented, ending in a newline; `-` prints it on standard output."""
    write_atomic(path, _json_writer(doc, sort_keys))


def _plain(x):
    """numpy scalars and arrays as the JSON numbers and lists they hold."""
    if hasattr(x, "tolist"):
        return x.tolist()
    raise TypeError(f"{type(x).__name__} is not JSON serialisable")


@contextlib.contextmanager
def locked(path):
    """An exclusive lock around a read-merge-write of `path` (fcntl.flock on its folder, which,
    unlike the file, is not replaced by the write), so that concurrent writers lose nothing."""
    try:
        import fcntl
    except ImportError:  # no flock here: writes stay atomic, concurrent merges are not serialised
        yield
        return
    folder = os.path.dirname(os.path.realpath(path))
    try:
        fd = os.open(folder, os.O_RDONLY)
    except FileNotFoundError:
        raise ConfigError(f"cannot write: no such directory {os.path.dirname(path) or folder!r}", file=path) from None
    except OSError as e:
        raise ConfigError(f"cannot lock: {e.strerror}", file=path) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock
