"""The CI gate must not cry wolf (issue 16): a real 1.5x slowdown of one strategy is caught, while
the same code under load (a CPU hog beside it) is not flagged. The decision logic is tested on
synthetic per-round ratios (many seeds, deterministic); one small end-to-end run checks the
measuring path with a real injected slowdown and a real hog."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from ckpt.bench import MIN_ROUNDS, compare, gate_ratios, median_bounds, time_status

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def test_median_bounds_are_order_statistics():
    assert median_bounds([3.0]) == (3.0, 3.0)
    assert median_bounds(range(1, 12)) == (2, 10)  # n = 11: P(Bin < 2) = 0.6% <= 2.5% < P(Bin < 3)
    assert median_bounds(list(range(15, 0, -1))) == (4, 12)
    lo, hi = median_bounds(np.random.default_rng(0).normal(1.0, 0.1, 101))
    assert 0.95 < lo < 1.0 < hi < 1.05


def _rounds(rng, true_ratio, n, hog):
    """Per-round ratios: a few percent of noise; under a hog, a quarter of the rounds have one side
    (either) slowed by up to 2x, the other not."""
    r = true_ratio * np.exp(rng.normal(0.0, 0.05, n))
    if hog:
        hit = rng.random(n) < 0.25
        r[hit] *= rng.uniform(1.2, 2.0, hit.sum()) ** rng.choice([-1, 1], hit.sum())
    return list(r)


def _verdict(rng, true_ratio, hog):
    ratios, _ = gate_ratios(lambda n: _rounds(rng, true_ratio, n, hog), MIN_ROUNDS, 1.0, 0.10)
    return time_status(ratios, 1.0, 0.10)


@pytest.mark.parametrize("hog", [False, True])
def test_decision_on_synthetic_rounds(hog):
    rng = np.random.default_rng(12345)
    false_alarms = sum(_verdict(rng, 1.0, hog) == "regression" for _ in range(300))
    caught = sum(_verdict(rng, 1.5, hog) == "regression" for _ in range(300))
    # a point comparison of the median of 5 rounds (the old gate) on the same kind of samples
    old_alarms = sum(np.median(_rounds(rng, 1.0, 5, hog)) > 1.1 for _ in range(300))
    assert false_alarms == 0
    assert caught == 300
    if hog:
        assert old_alarms > 0  # the noise is real: the old gate cries wolf


def test_a_suspect_is_measured_again():
    calls = []

    def measure(n):
        calls.append(n)
        return [1.4] * n if len(calls) == 1 else [1.0] * n  # a burst of load, then quiet

    ratios, rechecked = gate_ratios(measure, 15, 1.0, 0.1)
    assert rechecked and calls == [15, 30] and time_status(ratios, 1.0, 0.1) == "same"
    calls.clear()
    assert gate_ratios(measure, 15, 1.5, 0.1) == ([1.4] * 15, False)  # within tolerance: once
    assert gate_ratios(measure, 15, None, 0.1)[1] is False  # nothing to compare with


def test_compare_judges_by_the_bounds_and_keeps_old_files_working():
    base = {"m:sqrt-n": {"feasible": True, "peak_predicted": 1, "peak_measured": 1, "peak_allocator": 1,
                         "time_ratio": 1.2}}
    noisy = dict(base["m:sqrt-n"], time_ratio=1.5, time_ratios=[1.0, 1.1, 1.2, 1.9, 2.0, 1.5, 1.5])
    slow = dict(base["m:sqrt-n"], time_ratio=1.9, time_ratios=[1.8, 1.9, 2.0, 1.9, 1.85, 1.95, 1.9])
    status = {c: [r[4] for r in compare({"m:sqrt-n": e}, base, 0.1) if r[1] == "time_ratio"][0]
              for c, e in (("noisy", noisy), ("slow", slow))}
    assert status == {"noisy": "same", "slow": "regression"}
    # a results file without samples: the point comparison as before
    plain = dict(base["m:sqrt-n"], time_ratio=1.5)
    assert [r[4] for r in compare({"m:sqrt-n": plain}, base, 0.1) if r[1] == "time_ratio"] == ["regression"]


MLP = """
name: gate
dims: {B: 256, D: 256, L: 6}
inputs:
  x: {shape: [B, D], init: normal}
  y: {shape: [B, D], init: normal}
blocks:
  layer:
    params:
      W: {shape: [D, D], init: xavier}
      b: {shape: [D], init: zeros}
    nodes:
      - {name: h, op: linear, inputs: [in, W, b]}
      - {name: a, op: tanh, inputs: [h]}
nodes:
  - {name: body, repeat: layer, times: L, input: x}
  - {name: loss, op: mse, inputs: [body, y]}
output: loss
"""

# Run in a child process with one BLAS thread (set before numpy loads; on a shared 2-core machine a
# multi-threaded BLAS spinning for its share is the largest noise there is): a baseline, the same
# code beside a CPU hog, then a planted 1.5x slowdown of the schedule that recomputes.
CHILD = """
import json, subprocess, sys, time
import ckpt.session
from ckpt.bench import compare, run_bench
from ckpt.execute import Executor
from ckpt.schedule import COMPUTE

class SlowerRecompute(Executor):
    def __init__(self, g, joint, steps, backend):
        super().__init__(g, joint, steps, backend)
        self.slow = sum(k == COMPUTE for k, _ in steps) > len(joint)

    def step(self, leaves, on_value=None, seed=None):
        t0 = time.process_time()
        r = super().step(leaves, on_value, seed)
        if self.slow:  # half as long again, spinning: CPU work like any regression
            end = time.process_time() + 0.5 * (time.process_time() - t0)
            while time.process_time() < end:
                pass
        return r

def bench(base=None):
    return run_bench([sys.argv[1]], ("store-all", "sqrt-n"), (), steps=3, progress=False, baseline=base,
                     time_tolerance=0.10)

def status(cur, base):
    return [r[4] for r in compare(cur, base, 0.10) if r[0] == "gate:sqrt-n" and r[1] == "time_ratio"][0]

base = bench()
hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
try:
    loaded = bench(base)
finally:
    hog.kill()
    hog.wait()
ckpt.session.Executor = SlowerRecompute
slowed = bench(base)
print(json.dumps({"base": base["gate:sqrt-n"]["time_ratio"], "loaded": loaded["gate:sqrt-n"]["time_ratio"],
                  "slowed": slowed["gate:sqrt-n"]["time_ratio"], "rechecked": slowed["gate:sqrt-n"]["rechecked"],
                  "loaded_status": status(loaded, base), "slowed_status": status(slowed, base)}))
"""


def test_end_to_end_slowdown_caught_and_hog_ignored(tmp_path):
    cfg = tmp_path / "gate.yaml"
    cfg.write_text(MLP)
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([ROOT] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    out = subprocess.run([sys.executable, "-c", CHILD, str(cfg)], env=env, capture_output=True, text=True,
                         timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["loaded_status"] == "same", r
    assert r["rechecked"] and r["slowed"] > 1.3 * r["base"], r
    assert r["slowed_status"] == "regression", r
