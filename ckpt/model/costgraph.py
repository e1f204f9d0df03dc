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

import math
import os

import networkx as nx

from ..errors import ConfigError
from ..jsonio import read_json


def load_cost_graph(path):
    return parse_cost_graph(read_json(path, "graph file"), file=path)


def parse_cost_graph(doc, file="<graph>"):
    def err(msg, key=None):
        return ConfigError(msg, file=file, key=key)

    if not isinstance(doc, dict) or "nodes" not in doc:
        raise err("a node-link graph needs a 'nodes' list (and 'links' or 'edges')")
    nodes, links = doc["nodes"], doc.get("links", doc.get("edges", []))
    if not isinstance(nodes, list) or not isinstance(links, list):
        raise err("'nodes' and 'links' (or 'edges') must be lists")
    graph_attrs = doc.get("graph") if isinstance(doc.get("graph"), dict) else {}
    j = nx.DiGraph(name=str(graph_attrs.get("name", os.path.basename(str(file)))))
    position = {}
    for n, node in enumerate(nodes):
        if not isinstance(node, dict) or "id" not in node:
            raise err(f"node {n} has no 'id'", key=f"nodes[{n}]")
        nid = str(node["id"])
        if nid in position:
            raise err(f"repeated node id {nid!r}", key=f"node {nid}")
        cost = node.get("cost_cpu")
        ram = node.get("cost_ram")
        if not _number(cost) or cost < 0:
            raise err(f"cost_cpu must be a number >= 0, got {cost!r}", key=f"node {nid}")
        if not _number(ram) or ram < 0 or int(ram) != ram:
            raise err(f"cost_ram must be a whole number of bytes >= 0, got {ram!r}", key=f"node {nid}")
        back = node.get("backward", False)
        if not isinstance(back, bool):
            raise err(f"backward must be true or false, got {back!r}", key=f"node {nid}")
        ws = node.get("ws", node.get("workspace", 0))
        if not _number(ws) or ws < 0 or int(ws) != ws:
            raise err(f"ws must be a whole number of bytes >= 0, got {ws!r}", key=f"node {nid}")
        position[nid] = n
        j.add_node(nid, kind="backward" if back else "forward", ref=str(node.get("ref", nid)),
                   cost=float(cost), ram=int(ram), ws=int(ws))
    for n, link in enumerate(links):
        if not isinstance(link, dict) or "source" not in link or "target" not in link:
            raise err(f"edge {n} needs 'source' and 'target'", key=f"links[{n}]")
        u, v = str(link["source"]), str(link["target"])
        for end in (u, v):
            if end not in position:
                raise err(f"edge {n} names unknown node {end!r}", key=f"links[{n}]")
        j.add_edge(u, v)
    if not nx.is_directed_acyclic_graph(j):
        cycle = nx.find_cycle(j)
        raise err("cycle: " + " -> ".join([u for u, _ in cycle] + [cycle[0][0]]))
    if not j:
        raise err("the graph has no nodes")
    order = list(nx.lexicographical_topological_sort(j, key=position.__getitem__))
    # forward nodes first, as the planners expect; a file in topological order keeps its order
    j.graph["order"] = [x for x in order if j.nodes[x]["kind"] == "forward"] + \
                       [x for x in order if j.nodes[x]["kind"] == "backward"]
    for x in j.graph["order"]:
        if j.nodes[x]["kind"] == "forward" and any(j.nodes[u]["kind"] == "backward" for u in j.predecessors(x)):
            raise err("a forward node reads a backward node's output", key=x)
    resident = graph_attrs.get("resident_bytes", 0)
    if not _number(resident) or resident < 0:
        raise err(f"resident_bytes must be a number >= 0, got {resident!r}", key="graph")
    j.graph["resident"] = int(resident)
    return j


def _number(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


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
