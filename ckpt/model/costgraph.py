"""Cost graphs as other tools write them: networkx node-link JSON, read into and written from the
joint graph that the planners plan.

Each node has `cost_cpu` (time or FLOPs, a number >= 0) and `cost_ram` (bytes of its output, an
integer >= 0), and may say `backward: true` (a gradient node: computed once, never recomputed).
An edge u -> v (under `links` or `edges`) means v reads u's output. The graph may carry
`resident_bytes` (memory live for the whole step, added to every peak). A node may state `ws`
(or `workspace`): bytes of temporaries it holds only while it is computed (absent: 0). Memory
model: a node's output is live from the step that computes it to the step of its last reader; the
memory at a step is the output being computed plus every older output still live; the peak is the
largest sum (and, counting workspace, that sum plus the workspace of the node being computed).
"""

import os

import networkx as nx

from ..errors import ConfigError
from ..jsonio import read_json
from ..sizes import MAX_BYTES, MAX_NODES


def load_cost_graph(path):
    return parse_cost_graph(read_json(path, "graph file"), file=path)


def parse_cost_graph(doc, file="<graph>"):
    def err(msg, key=None):
        return ConfigError(msg, file=file, key=key)

    if isinstance(doc, dict) and doc.get("format") == "ckpt-torch-plan":
        raise err("this is a plan for PyTorch (ckpt plan --emit torch): check it with `ckpt torch-check "
                  "MODEL.py:FACTORY --plan FILE`; plan the config that `ckpt import` wrote beside it")
    if isinstance(doc, dict) and "arg_order" in doc and "profile" in doc:
        raise err("this is what `ckpt import` records of the PyTorch model: plan the .yaml config it wrote beside it")
    if not isinstance(doc, dict) or "nodes" not in doc:
        raise err("a node-link graph needs a 'nodes' list (and 'links' or 'edges')")
    nodes, links = doc["nodes"], doc.get("links", doc.get("edges", []))
    if not isinstance(nodes, list) or not isinstance(links, list):
        raise err("'nodes' and 'links' (or 'edges') must be lists")
    if len(nodes) > MAX_NODES:
        raise err(f"the graph has {len(nodes)} nodes, more than the {MAX_NODES} ckpt handles")
    graph_attrs = doc.get("graph")
    if graph_attrs is None:
        graph_attrs = {}
    if not isinstance(graph_attrs, dict):
        raise err(f"'graph' must be a mapping of graph attributes, got {type(graph_attrs).__name__}", key="graph")
    name = graph_attrs.get("name")
    if name is None:
        name = os.path.basename(str(file))
    if not _id(name) or not str(name).isprintable():  # printed at the head of the report, on one line
        raise err(f"the graph's name must be a string without control characters, got {_short(name)}", key="graph")
    j = nx.DiGraph(name=str(name))
    position, total_ram, max_ws = {}, 0, 0
    for n, node in enumerate(nodes):
        if not isinstance(node, dict) or "id" not in node:
            raise err(f"node {n} has no 'id'", key=f"nodes[{n}]")
        if not _id(node["id"]):
            raise err(f"node id must be a string or an integer, got {type(node['id']).__name__}", key=f"nodes[{n}]")
        nid = str(node["id"])
        if not nid.isprintable():  # a newline or escape in an id would break the one-line messages naming it
            raise err(f"node id {_short(nid)} holds a control character", key=f"nodes[{n}]")
        if nid in position:
            raise err(f"repeated node id {nid!r}", key=f"node {nid}")
        cost = node.get("cost_cpu")
        ram = node.get("cost_ram")
        if not _number(cost) or cost < 0:
            raise err(f"cost_cpu must be a number >= 0, got {_short(cost)}", key=f"node {nid}")
        if not _number(ram) or ram < 0 or int(ram) != ram:
            raise err(f"cost_ram must be a whole number of bytes >= 0, got {_short(ram)}", key=f"node {nid}")
        ram = int(ram)
        total_ram += ram
        if total_ram > MAX_BYTES:
            raise err(f"cost_ram totals more than {MAX_BYTES} bytes (2**62), the most ckpt handles", key=f"node {nid}")
        back = node.get("backward", False)
        if not isinstance(back, bool):
            raise err(f"backward must be true or false, got {_short(back)}", key=f"node {nid}")
        ws = node.get("ws", node.get("workspace", 0))
        if not _number(ws) or ws < 0 or int(ws) != ws or ws > MAX_BYTES:
            raise err(f"ws must be a whole number of bytes from 0 to 2**62, got {_short(ws)}", key=f"node {nid}")
        max_ws = max(max_ws, int(ws))
        position[nid] = n
        j.add_node(nid, kind="backward" if back else "forward", ref=str(node.get("ref", nid)),
                   cost=float(cost), ram=int(ram), ws=int(ws))
    for n, link in enumerate(links):
        if not isinstance(link, dict) or "source" not in link or "target" not in link:
            raise err(f"edge {n} needs 'source' and 'target'", key=f"links[{n}]")
        if not _id(link["source"]) or not _id(link["target"]):
            raise err(f"edge {n}: source and target must be node ids", key=f"links[{n}]")
        u, v = str(link["source"]), str(link["target"])
        for end in (u, v):
            if end not in position:
                raise err(f"edge {n} names unknown node {end!r}", key=f"links[{n}]")
        j.add_edge(u, v)
    if not j:
        raise err("the graph has no nodes")
    try:  # one pass: the sort itself finds a cycle, find_cycle only names it
        order = list(nx.lexicographical_topological_sort(j, key=position.__getitem__))
    except nx.NetworkXUnfeasible:
        cycle = nx.find_cycle(j)
        raise err("cycle: " + " -> ".join([u for u, _ in cycle] + [cycle[0][0]])) from None
    if not any("backward" in node for node in nodes):
        _infer_backward(j, order)
    # forward nodes first, as the planners expect; a file in topological order keeps its order
    j.graph["order"] = [x for x in order if j.nodes[x]["kind"] == "forward"] + \
                       [x for x in order if j.nodes[x]["kind"] == "backward"]
    for x in j.graph["order"]:
        if j.nodes[x]["kind"] == "forward" and any(j.nodes[u]["kind"] == "backward" for u in j.predecessors(x)):
            raise err("a forward node reads a backward node's output", key=x)
    resident = graph_attrs.get("resident_bytes", 0)
    if not _number(resident) or resident < 0 or int(resident) != resident or resident + total_ram > MAX_BYTES:
        raise err(f"resident_bytes must be a whole number of bytes >= 0 (at most 2**62 with cost_ram), got "
                  f"{_short(resident)}", key="graph")
    if resident + total_ram + max_ws > MAX_BYTES:  # a peak is their sum at most: it stays exact in 64 bits
        raise err(f"resident_bytes, cost_ram and the largest ws total more than {MAX_BYTES} bytes (2**62), the most "
                  "ckpt handles", key="graph")
    j.graph["resident"] = int(resident)
    return j


def _infer_backward(j, order):
    """A training graph written without `backward` flags (Checkmate's plain form): find the loss and
    mark what follows it as gradient nodes. The loss splits the graph (every other node is its
    ancestor or its descendant), and so does the gradient seed, which reads the loss alone; forward
    and backward articulation points split it too, so the loss is the latest split node followed by
    such a seed after which every node reads some node after the loss (gradients read gradients).
    (A network whose loss reads a residual add directly, with no head, is cut one step late, at
    the add's gradient: still correct.) Failing that, the smallest split node that holds bytes (a
    loss is a scalar). Without one, every node stays forward and recomputable, which is still
    correct, only with less to plan."""
    n = len(order)
    # x at position i splits the graph when it is the only sink of order[:i+1] (every node before
    # it reaches it) and the only source of order[i:] (it reaches every node after it)
    sinks, alone_sink = set(), []
    for x in order:
        sinks -= set(j.predecessors(x))
        sinks.add(x)
        alone_sink.append(len(sinks) == 1)
    sources, alone_source = set(), []
    for x in reversed(order):
        sources -= set(j.successors(x))
        sources.add(x)
        alone_source.append(len(sources) == 1)
    alone_source.reverse()
    split = [alone_sink[i] and alone_source[i] and 0 < i < n - 1 for i in range(n)]
    seeded = [i for i in range(n - 1) if split[i] and split[i + 1] and j.nodes[order[i]]["ram"]
              and list(j.predecessors(order[i + 1])) == [order[i]]]
    # After the seed every gradient node reads another gradient node; a candidate after which some
    # node reads only what comes before the candidate's seed is a gradient of the backward pass.
    position = {x: i for i, x in enumerate(order)}
    last_pred = [max((position[u] for u in j.predecessors(x)), default=-1) for x in order]
    least_after = [n] * (n + 1)  # least_after[p]: min of last_pred over positions >= p
    for p in reversed(range(n)):
        least_after[p] = min(least_after[p + 1], last_pred[p])
    clean = [i for i in seeded if least_after[min(i + 2, n)] > i]
    if seeded:
        x = order[(clean or seeded)[-1]]
    else:
        held = [i for i in range(n) if split[i] and j.nodes[order[i]]["ram"]]
        if not held:
            return
        x = order[min(held, key=lambda i: (j.nodes[order[i]]["ram"], i))]
    after = False
    for y in order:
        if after:
            j.nodes[y]["kind"] = "backward"
        after = after or y == x
    j.graph["loss"] = x


def _short(x):
    text = repr(x)
    return text if len(text) <= 40 else text[:37] + "..."


def _id(x):
    return isinstance(x, (str, int)) and not isinstance(x, bool)


def _number(x):
    """A JSON number ckpt can compute with: finite, and not so large that a float overflows."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and abs(x) <= 1e300


def cost_graph_doc(joint):
    """The joint graph as node-link JSON (what networkx.node_link_data writes), nodes in order."""
    nodes = [{"id": x, "cost_cpu": joint.nodes[x]["cost"], "cost_ram": joint.nodes[x]["ram"],
              "ws": joint.nodes[x].get("ws", 0),
              "backward": joint.nodes[x]["kind"] == "backward", "ref": joint.nodes[x]["ref"]}
             for x in joint.graph["order"]]
    links = [{"source": u, "target": v} for x in joint.graph["order"] for u, v in sorted(joint.in_edges(x))]
    return {"directed": True, "multigraph": False,
            "graph": {"name": joint.graph.get("name", ""), "resident_bytes": joint.graph.get("resident", 0)},
            "nodes": nodes, "links": links}
