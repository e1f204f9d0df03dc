"""Loading time against graph size: a YAML MLP of L layers (a repeat block) loaded, built and
lowered, and a node-link cost graph of n forward and n gradient nodes parsed, at sizes that
double. Linear loading shows as a time ratio near 2 per doubling (quadratic would be 4). Also
times the refusal of `times: 1000000000` (counted before expanding), of L=60,000 layers (240,003
model nodes, under the limit; 360,002 joint nodes, over it: counted from the names before
expanding), and that count alone at L=41,666 (249,998 joint nodes: counted, then loaded).

    python scripts/bench_loading.py [--repeats 3]
"""

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from ckpt.errors import ConfigError  # noqa: E402
from ckpt.model import build_graph, lower, parse_config  # noqa: E402
from ckpt.model.costgraph import parse_cost_graph  # noqa: E402

MLP = """name: deep
dims: {{B: 4, D: 8, L: {L}}}
inputs:
  x: {{shape: [B, D], init: normal}}
  y: {{shape: [B, D], init: normal}}
blocks:
  layer:
    params:
      W: {{shape: [D, D], init: xavier}}
      b: {{shape: [D], init: zeros}}
    nodes:
      - {{name: h, op: linear, inputs: [in, W, b]}}
      - {{name: a, op: relu, inputs: [h]}}
nodes:
  - {{name: body, repeat: layer, times: L, input: x}}
  - {{name: loss, op: mse, inputs: [body, y]}}
output: loss
"""


def chain_graph(n):
    nodes = [{"id": f"f{i}", "cost_cpu": 1.0, "cost_ram": 64} for i in range(n)]
    nodes += [{"id": f"b{i}", "cost_cpu": 1.0, "cost_ram": 64, "backward": True} for i in range(n)]
    links = [{"source": f"f{i}", "target": f"f{i + 1}"} for i in range(n - 1)]
    links += [{"source": f"b{i + 1}", "target": f"b{i}"} for i in range(n - 1)]
    links += [{"source": f"f{i}", "target": f"b{i}"} for i in range(n)]
    return {"nodes": nodes, "links": links}


def median_time(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    print("YAML MLP (repeat block): load + build + lower")
    prev = None
    for L in (2500, 5000, 10000):
        text = MLP.format(L=L)
        holder = {}

        def load():
            holder["j"] = lower(build_graph(parse_config(text)))
        t = median_time(load, args.repeats)
        ratio = f"  x{t / prev:.2f} for x2 layers" if prev else ""
        print(f"  L={L:>6}  joint nodes {len(holder['j']):>7}  {t:7.2f} s{ratio}")
        prev = t
    print("cost graph (node-link JSON, already decoded): parse")
    prev = None
    for n in (25000, 50000, 100000):
        doc = chain_graph(n)
        t = median_time(lambda: parse_cost_graph(doc), args.repeats)
        ratio = f"  x{t / prev:.2f} for x2 nodes" if prev else ""
        print(f"  nodes {2 * n:>7}  {t:7.2f} s{ratio}")
        prev = t
    t0 = time.perf_counter()
    try:
        parse_config(MLP.format(L=1000000000))
    except ConfigError as e:
        print(f"times: 1000000000 refused in {time.perf_counter() - t0:.3f} s: {e}")
    found = []

    def refuse():
        try:
            parse_config(MLP.format(L=60000))
        except ConfigError as e:
            found.append(e)
    t = median_time(refuse, args.repeats)
    print(f"L=60000 refused in {t:.2f} s: {found[-1]}")
    from ckpt.model import config
    text = MLP.format(L=41666)

    def count():
        loader = config._Loader(text)
        try:
            reader = config._Reader("<config>", loader.get_single_data(), {})
        finally:
            loader.dispose()
        reader.read_dims()
        found.append(reader.joint_nodes())
    t = median_time(count, args.repeats)
    print(f"L=41666 ({found[-1]} joint nodes, within the limit): the early count takes {t:.2f} s before loading")


if __name__ == "__main__":
    main()
