#!/usr/bin/env python3
"""Start-up time of the command line: `ckpt --help` and `ckpt run configs/seed_example.yaml` against
the bare interpreter and the imports ckpt cannot avoid (numpy, networkx), each a fresh process,
interleaved rounds, medians; then the slowest imports of each command from `python -X importtime`.
Bytecode is cached (in a temporary PYTHONPYCACHEPREFIX, PYTHONDONTWRITEBYTECODE unset), as for an
installed package: otherwise every run compiles ckpt's sources again, which measures the compiler.

    python scripts/bench_startup.py [--rounds 15] [--top 8]
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
PY = sys.executable
CASES = {
    "python -c pass": [PY, "-c", "pass"],
    "import numpy": [PY, "-c", "import numpy"],
    # networkx's package __init__ imports every algorithm (no lazy mode in 3.x), and a submodule's
    # import runs it first: importing only the graph class costs as much as all of networkx
    "import networkx": [PY, "-c", "import networkx"],
    "import networkx.classes.digraph": [PY, "-c", "import networkx.classes.digraph"],
    "import numpy, networkx, yaml, click": [PY, "-c", "import numpy, networkx, yaml, click"],
    "ckpt --help": [PY, "-m", "ckpt", "--help"],
    "ckpt run seed_example": [PY, "-m", "ckpt", "run", "configs/seed_example.yaml"],
}


ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def wall(cmd):
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t0


def slowest_imports(cmd, top):
    """(cumulative ms, module) of the top-level imports of one run of `cmd` under -X importtime."""
    err = subprocess.run([cmd[0], "-X", "importtime"] + cmd[1:], cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True).stderr
    rows = []
    for line in err.splitlines():
        parts = line.split("|")
        if len(parts) != 3 or not parts[1].strip().isdigit():
            continue
        name = parts[2]
        if len(name) - len(name.lstrip()) <= 1:  # imported by the program, not by another module
            rows.append((int(parts[1]) / 1e3, name.strip()))
    return sorted(rows, reverse=True)[:top]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--top", type=int, default=8)
    args = ap.parse_args()
    ENV["PYTHONPYCACHEPREFIX"] = tempfile.mkdtemp(prefix="ckpt-startup-")
    try:
        measure(args)
    finally:
        shutil.rmtree(ENV["PYTHONPYCACHEPREFIX"], ignore_errors=True)


def measure(args):
    for cmd in CASES.values():  # warm the file cache and the .pyc files
        wall(cmd)
    times = {k: [] for k in CASES}
    for _ in range(args.rounds):  # interleaved: load on the machine hits every case alike
        for name, cmd in CASES.items():
            times[name].append(wall(cmd))
    bare = times["python -c pass"]
    print(f"start-up, {args.rounds} interleaved rounds, fresh process each (median; median ratio to the bare"
          f" interpreter)")
    for name, ts in times.items():
        ratio = statistics.median(t / b for t, b in zip(ts, bare))
        print(f"  {name:38s} {statistics.median(ts) * 1e3:7.1f} ms   {ratio:5.2f}x")
    for name in ("ckpt --help", "ckpt run seed_example"):
        print(f"slowest top-level imports of `{name}` (cumulative ms, one run):")
        for ms, mod in slowest_imports(CASES[name], args.top):
            print(f"  {ms:7.1f}  {mod}")


if __name__ == "__main__":
    main()
