#!/usr/bin/env python3
"""Planner quality (issue 12): one table per aim, ckpt's budget plan against exact optima, simple
baselines and its own targets, with the time each plan took.

    python scripts/bench_planner.py [--quick] [--only 1,3,5] [--time-limit 120]

Exact optima (the Checkmate MILP with a long time limit and no node limit) are solved once and
cached in benchmarks/planner_optima.json, keyed by graph, budget fraction and the graph's content
hash, so reruns are fast; a changed graph (or cost model) is solved again. `--quick` runs a small
subset (under two minutes) that uses only cached optima. Fractions are of store-all's managed
peak; the budget passed to the planner is the whole peak (resident + fraction x managed), rounded
down to the byte. Memory figures for the large plans come from a child process (its peak RSS).
"""

import argparse
import json
import math
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [ROOT, HERE, os.path.join(ROOT, "tests")]

from ckpt.errors import BudgetError  # noqa: E402
from ckpt.jsonio import write_json_atomic  # noqa: E402
from ckpt.model.costgraph import cost_graph_doc  # noqa: E402
from ckpt.plan import JointIndex, plan, smallest_peak  # noqa: E402
from ckpt.plan.keepset import keep_schedule  # noqa: E402
from ckpt.plan.milp import solve_milp  # noqa: E402
from ckpt.session import load_model  # noqa: E402
from ckpt.simulate import simulate  # noqa: E402
from helpers import revolve_count, uniform_chain_joint  # noqa: E402
import planner_graphs as pg  # noqa: E402

CACHE = os.path.join(ROOT, "benchmarks", "planner_optima.json")
CONFIGS = os.path.join(ROOT, "configs")
FRACS = (0.9, 0.8, 0.7, 0.6, 0.5)
MILP_MAX = 160  # joint nodes: the exact runs are made up to here (HiGHS finds nothing far beyond)
MILP_NODE_LIMIT = 10 ** 9  # no work limit: the long time limit alone bounds the exact runs


# ---- shared pieces ------------------------------------------------------------------------------
class G:
    """A graph under test: its joint graph, index and store-all reference."""

    def __init__(self, name, joint, ix=None):
        self.name, self.joint = name, joint
        self.ix = ix or JointIndex(joint)
        self.resident = joint.graph.get("resident", 0)
        sa = simulate(joint, keep_schedule(self.ix, self.ix.residuals), check=False)
        self.sa_managed, self.sa_cost = sa.peak_managed_ws, sa.cost
        self.hash = pg.content_hash(joint)

    def managed(self, frac):
        return int(frac * self.sa_managed)

    def budget(self, frac):
        return self.resident + self.managed(frac)

    def ratio(self, cost):
        return cost / self.sa_cost if self.sa_cost else 1.0

    @property
    def size(self):
        return len(self.ix.order)


def config_graph(name, overrides=None):
    m = load_model(os.path.join(CONFIGS, name + ".yaml"), overrides or {})
    label = name + ("" if not overrides else " " + ",".join(f"{k}={v}" for k, v in overrides.items()))
    return G(label, m.joint, m.index)


class PlanTimeout(Exception):
    pass


def _alarm(signum, frame):
    raise PlanTimeout()


# seconds (--plan-timeout): a plan past this is reported as timed out (the aims are all under
# 10 s); the planner's own time limit is capped to the same, and --quick uses 20 s, so that a run
# ends in bounded time whatever the planner does
PLAN_TIMEOUT = {"value": 120, "child_margin": 60}  # margin: a child's loading time beyond its plan


def ckpt_plan(g, budget, time_limit=120.0):
    """(plan or None, simulation or None, seconds, error text)."""
    t0 = time.perf_counter()
    limit = PLAN_TIMEOUT["value"]
    time_limit = min(time_limit, limit)
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(limit)
    try:
        p, sim = plan(g.joint, "budget", budget, time_limit=time_limit, ix=g.ix)
    except BudgetError as e:
        return None, None, time.perf_counter() - t0, str(e)
    except PlanTimeout:
        return None, None, time.perf_counter() - t0, f"timed out after {limit} s"
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    return p, sim, time.perf_counter() - t0, ""


class Optima:
    """Exact optima from the MILP with a long limit, cached by graph, fraction and content hash."""

    def __init__(self, time_limit, cached_only):
        self.time_limit, self.cached_only = time_limit, cached_only
        try:
            with open(CACHE, encoding="utf-8") as f:
                self.doc = json.load(f)
        except (OSError, ValueError):
            self.doc = {}

    def get(self, g, frac, incumbent=None):  # incumbent: a function, called only on a cache miss
        """{'status', 'cost', 'lower_bound', 'optimal', 'feasible', 'time_s'} or None when not cached
        in --quick mode. `incumbent`: (cost, source) of the cheapest schedule known to fit, given
        to HiGHS as a cutoff (it then searches only for cheaper ones, and "infeasible" proves the
        incumbent optimal); the cached optimum is a fact about the graph, however it was found."""
        key = f"{g.name}@{frac}"
        hit = self.doc.get(key)
        if hit and hit["hash"] == g.hash and hit["budget_managed"] == g.managed(frac):
            return hit
        if self.cached_only:
            return None
        inc = incumbent() if incumbent else None
        cutoff, source = inc if inc else (None, None)
        t0 = time.perf_counter()
        p, status = solve_milp(g.ix, g.managed(frac), time_limit=self.time_limit, node_limit=MILP_NODE_LIMIT,
                               cutoff=cutoff)
        took = time.perf_counter() - t0
        rec = {"hash": g.hash, "budget_managed": g.managed(frac), "status": status, "time_s": round(took, 2),
               "time_limit_s": self.time_limit, "joint_nodes": g.size, "cutoff_from": source}
        if p is not None:
            sim = simulate(g.joint, p.steps)
            assert sim.peak_managed_ws <= g.managed(frac), (g.name, frac)
            optimal = bool(p.notes.get("optimal"))
            rec.update(cost=sim.cost, lower_bound=p.lower_bound, optimal=optimal, feasible=True)
        elif status.startswith("infeasible") and cutoff is not None:
            rec.update(status="optimal (nothing below the cutoff)", cost=cutoff, lower_bound=cutoff, optimal=True,
                       feasible=True)
        elif status.startswith("infeasible"):
            rec.update(cost=None, lower_bound=None, optimal=True, feasible=False)
        else:  # the limit struck: the incumbent stands, unproved
            rec.update(cost=cutoff, lower_bound=None, optimal=False, feasible=True if cutoff is not None else None)
        self.doc[key] = rec
        try:  # keep entries another run wrote meanwhile
            with open(CACHE, encoding="utf-8") as f:
                self.doc = {**json.load(f), key: rec}
        except (OSError, ValueError):
            pass
        write_json_atomic(CACHE, self.doc, sort_keys=True)
        return rec


def incumbent(g, frac, sim):
    """(cost, source) of the cheapest schedule known to fit: ckpt's plan, the plain greedy, sqrt-n,
    store-all; None when none fits."""
    known = []
    if sim is not None:
        known.append((sim.cost, "ckpt"))
    gr = pg.plain_greedy(g.joint, g.ix, g.managed(frac))
    if gr is not None:
        known.append((gr[0], "greedy"))
    sq = simulate(g.joint, plan(g.joint, "sqrt-n", ix=g.ix)[0].steps, check=False)
    if sq.peak_managed_ws <= g.managed(frac):
        known.append((sq.cost, "sqrt-n"))
    return min(known) if known else None


def fmt_ratio(x):
    return "-" if x is None else f"{x:.4f}"


def fmt_pct(x):
    return "-" if x is None else f"{x:+.2%}"


def header(title, cols):
    print(f"\n== {title}")
    print(cols)
    print("-" * len(cols))


def maxrss_mb():
    """This process's peak RSS. On Linux from VmHWM: ru_maxrss survives exec, so a child would
    report its parent's peak at the fork when that is larger."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


# ---- child process: one plan of a config, for time and peak RSS --------------------------------
CHILD_MEMORY_CAP = 6 << 30  # bytes of address space: a planner that grows past this fails in the child


def child(args):
    # the machine is shared: a planner that grows without bound (issue 12 met 22 GB) must stop here
    resource.setrlimit(resource.RLIMIT_AS, (CHILD_MEMORY_CAP, CHILD_MEMORY_CAP))
    over = dict(kv.split("=", 1) for kv in args.set)
    over = {k: int(v) if v.lstrip("-").isdigit() else v for k, v in over.items()}
    t0 = time.perf_counter()
    m = load_model(args.child, over)
    load_s, rss_load = time.perf_counter() - t0, maxrss_mb()
    ix = m.index
    sa = simulate(m.joint, keep_schedule(ix, ix.residuals), check=False)
    resident = m.joint.graph.get("resident", 0)
    budget = args.budget_bytes if args.budget_bytes else resident + int(args.frac * sa.peak_managed_ws)
    out = {"joint_nodes": len(ix.order), "load_s": load_s, "rss_after_load_mb": rss_load, "budget": budget}
    t0 = time.perf_counter()
    try:
        p, sim = plan(m.joint, "budget", budget, time_limit=args.time_limit, ix=ix)
        out.update(solver=p.solver, overhead=(sim.cost - sa.cost) / sa.cost, peak=sim.peak_ws, fits=sim.peak_ws <= budget,
                   bound=(p.lower_bound - sa.cost) / sa.cost)
    except BudgetError as e:
        out.update(solver="-", overhead=None, error=str(e))
    except MemoryError:
        out.update(solver="-", overhead=None, error=f"out of memory (capped at {CHILD_MEMORY_CAP >> 30} GiB)")
    out.update(plan_s=time.perf_counter() - t0, rss_peak_mb=maxrss_mb())
    print(json.dumps(out))


def run_child(config, overrides=(), frac=None, budget_bytes=None, limit=None):
    """The child's plan gets the plan timeout (or `limit`) as its time limit, and the child a minute
    more."""
    limit = limit or PLAN_TIMEOUT["value"]
    timeout = limit + PLAN_TIMEOUT["child_margin"]
    cmd = [sys.executable, os.path.abspath(__file__), "--child", config, "--time-limit", str(limit)]
    for kv in overrides:
        cmd += ["--set", kv]
    cmd += ["--budget-bytes", str(budget_bytes)] if budget_bytes else ["--frac", str(frac)]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"no answer within {timeout} s"}
    if r.returncode:
        return {"error": (r.stderr.strip().splitlines() or ["exit %d" % r.returncode])[-1]}
    return json.loads(r.stdout.strip().splitlines()[-1])


# ---- aim 1: small Checkmate-style graphs against the exact optimum -------------------------------
def small_graphs(quick):
    specs = [("chain3_s11", pg.chain_config(3, 11)), ("transformer1_s7", pg.transformer_config(1, 7)),
             ("chain6_s1", pg.chain_config(6, 1)), ("resnet2_s5", pg.resnet_config(2, 5)),
             ("unet2_s1", pg.unet_config(2, 1)), ("chain8_s2", pg.chain_config(8, 2)),
             ("transformer2_s2", pg.transformer_config(2, 2))]
    if quick:
        specs = [s for s in specs if s[0] in ("chain6_s1", "transformer1_s7")]
    return [G(name, pg.joint_of(text)) for name, text in specs]


def aim1(opt, quick):
    header("Aim 1: small training graphs (20-80 joint nodes), ckpt vs the MILP optimum "
           f"(MILP limit {opt.time_limit:.0f} s; ratio = ckpt cost / optimum; cost in store-all units)",
           f"{'graph':<14} {'nodes':>5} {'frac':>5} {'ckpt':>8} {'optimum':>8} {'ratio':>7} {'opt status':<22} "
           f"{'ckpt solver':<34} {'ckpt s':>7} {'milp s':>7}")
    worst, missed = 1.0, []
    for g in small_graphs(quick):
        for frac in ((0.9, 0.6) if quick else FRACS):
            p, sim, t, err = ckpt_plan(g, g.budget(frac))
            o = opt.get(g, frac, lambda: incumbent(g, frac, sim))
            c = None if sim is None else g.ratio(sim.cost)
            oc = None if not o or o["cost"] is None else g.ratio(o["cost"])
            ratio = None if c is None or oc is None else c / oc
            if ratio is not None and (o["optimal"]):
                worst = max(worst, ratio)
            if sim is None and o and o["feasible"]:
                missed.append(f"{g.name}@{frac}")
            status = "not cached" if o is None else o["status"] + ("" if o["optimal"] or o["cost"] is None else
                                                                    " (not proved)")
            print(f"{g.name:<14} {g.size:>5} {frac:>5.1f} {fmt_ratio(c):>8} {fmt_ratio(oc):>8} {fmt_ratio(ratio):>7} "
                  f"{status[:22]:<22} {(p.solver if p else 'NO PLAN: ' + err[:24])[:34]:<34} {t:>7.2f} "
                  f"{(o or {}).get('time_s', float('nan')):>7.1f}", flush=True)
    print(f"worst ratio where the optimum is proved: {worst:.4f} (aim <= 1.005); "
          f"no plan where the optimum is feasible: {', '.join(missed) or 'none'}")


# ---- aim 2: gpt_large --------------------------------------------------------------------------
def aim2(quick):
    path = os.path.join(CONFIGS, "gpt_large.yaml")
    m = load_model(path)
    g = G("gpt_large", m.joint, m.index)
    L, s, b, h = 96, 2048, 1, 12288
    keep = frozenset(["x0"] + [f"body.{i}.out" for i in range(L)])
    bi = simulate(g.joint, keep_schedule(g.ix, keep, eager=False), check=False)
    megatron = g.resident + L * 34 * s * b * h
    header("Aim 2: gpt_large.yaml (joint nodes %d), planned in a child process" % g.size,
           f"{'budget':<28} {'bytes':>14} {'ckpt over':>10} {'bound':>7} {'block-in over':>13} {'solver':<34} {'plan s':>7} "
           f"{'RSS load MB':>11} {'RSS peak MB':>11}")
    bi_over = (bi.cost - g.sa_cost) / g.sa_cost
    for label, budget, ref in [("resident + L*34*s*b*h", megatron, None),
                               ("block inputs alone fit", g.resident + bi.peak_managed_ws, bi_over)]:
        r = run_child(path, budget_bytes=budget, limit=max(PLAN_TIMEOUT["value"], 180))
        over = r.get("overhead")
        print(f"{label:<28} {budget:>14} {fmt_pct(over):>10} {fmt_pct(r.get('bound')):>7} {fmt_pct(ref):>13} "
              f"{(r.get('solver') or r.get('error', '-'))[:34]:<34} {r.get('plan_s', float('nan')):>7.2f} "
              f"{r.get('rss_after_load_mb', float('nan')):>11.0f} {r.get('rss_peak_mb', float('nan')):>11.0f}",
              flush=True)
    print("aims: overhead <= 0.5% at the first budget; <= the block-input keep-set at the second; < 10 s; < 500 MB\n"
          "bound: no schedule computing each gradient once, in order, costs less (ckpt/plan/bound.py)")


# ---- aim 3: DAGs of 250-1,000 joint nodes against the plain greedy and the best known ----------
def aim3(opt, quick):
    graphs = [G("resnet50_like", pg.joint_of(pg.resnet50_config()))]
    sizes = [(250, 1)] if quick else [(250, 1), (250, 2), (500, 1), (500, 2), (1000, 1), (1000, 2)]
    graphs += [G(f"random{n}_s{seed}", pg.random_training_dag(n, seed)) for n, seed in sizes]
    header("Aim 3: DAGs of 250-1,000 joint nodes (costs as ratios to store-all; best = min of all run)",
           f"{'graph':<16} {'nodes':>5} {'frac':>4} {'ckpt':>7} {'greedy':>7} {'sqrt-n':>7} {'best':>7} "
           f"{'ck/gr':>6} {'ck/best':>7} {'bound':>7} {'ckpt s':>7} {'greedy s':>8} {'ckpt solver':<30}")
    worst_best, worst_greedy, slowest, worst_bound = 1.0, 0.0, 0.0, 1.0
    for g in graphs:
        for frac in ((0.7,) if quick else (0.8, 0.7)):
            p, sim, t, err = ckpt_plan(g, g.budget(frac))
            t0 = time.perf_counter()
            gr = pg.plain_greedy(g.joint, g.ix, g.managed(frac))
            tg = time.perf_counter() - t0
            sq = simulate(g.joint, plan(g.joint, "sqrt-n", ix=g.ix)[0].steps, check=False)
            known = [x for x in [sim.cost if sim else None, gr[0] if gr else None,
                                 sq.cost if sq.peak_managed_ws <= g.managed(frac) else None] if x is not None]
            best = min(known) if known else None
            c = g.ratio(sim.cost) if sim else None
            gc = g.ratio(gr[0]) if gr else None
            mc = g.ratio(sq.cost) if sq.peak_managed_ws <= g.managed(frac) else None
            bc = g.ratio(best) if best is not None else None
            r_gr = c / gc if c and gc else None
            r_best = c / bc if c and bc else None
            if best is not None:  # no plan from ckpt where something fits counts as infinitely worse
                worst_best = max(worst_best, r_best or math.inf)
            if gr is not None:
                worst_greedy = max(worst_greedy, r_gr or math.inf)
            slowest = max(slowest, t)
            if p is not None:
                worst_bound = max(worst_bound, sim.cost / p.lower_bound)
            print(f"{g.name:<16} {g.size:>5} {frac:>4.1f} {fmt_ratio(c):>7} {fmt_ratio(gc):>7} {fmt_ratio(mc):>7} "
                  f"{fmt_ratio(bc):>7} {fmt_ratio(r_gr):>6} {fmt_ratio(r_best):>7} "
                  f"{fmt_ratio(g.ratio(p.lower_bound) if p else None):>7} {t:>7.2f} {tg:>8.2f} "
                  f"{(p.solver if p else 'NO PLAN: ' + err)[:30]:<30}", flush=True)
    print(f"worst ckpt/best {worst_best:.4f} (aim <= 1.01); worst ckpt/bound {worst_bound:.4f} (the optimum is "
          f"between the two); worst ckpt/greedy {worst_greedy:.4f} (aim <= 1); "
          f"slowest plan {slowest:.2f} s (aim < 10 s); sqrt-n shown where it fits; no MILP: these graphs are "
          f"beyond its reach (design: nothing for 250+ nodes in two minutes)")


# ---- aim 4: cost graphs in the plain Checkmate form ---------------------------------------------
def aim4(quick):
    header("Aim 4: a cost graph without backward flags (plain Checkmate form), loaded with load_model, at 0.7",
           f"{'graph':<16} {'form':<22} {'nodes':>5} {'budget':>9} {'cost ratio':>10} {'solver':<40} {'time s':>7}")
    for name, joint in [("random250_s1", pg.random_training_dag(250, 1)),
                        ("resnet50_like", pg.joint_of(pg.resnet50_config()))]:
        doc = cost_graph_doc(joint)
        plain = json.loads(json.dumps(doc))
        for node in plain["nodes"]:
            del node["backward"]
        with tempfile.TemporaryDirectory() as tmp:
            for form, d in (("with backward flags", doc), ("plain (no flags)", plain)):
                path = os.path.join(tmp, f"{name}.json")
                with open(path, "w", encoding="utf-8") as f:
                    json.dump(d, f)
                m = load_model(path)
                g = G(name, m.joint, m.index)
                p, sim, t, err = ckpt_plan(g, g.budget(0.7))
                ratio = fmt_ratio(g.ratio(sim.cost) if sim else None)
                print(f"{name:<16} {form:<22} {g.size:>5} {g.budget(0.7):>9} {ratio:>10} "
                      f"{(p.solver if p else 'NO PLAN')[:40]:<40} {t:>7.2f}", flush=True)
                if err:
                    print(f"    {err}")


# ---- aim 5: chains ------------------------------------------------------------------------------
def aim5(quick):
    header("Aim 5a: uniform 1,000-layer chain (unit sizes), ckpt's forward computes vs Revolve's + 1",
           f"{'slots s':>7} {'managed budget':>14} {'ckpt fwd':>9} {'revolve+1':>9} {'ratio':>7} {'solver':<24} "
           f"{'time s':>7}")
    j = uniform_chain_joint(1000)
    g = G("chain1000", j)
    for s in ((20,) if quick else (5, 10, 20, 50)):
        p, sim, t, err = ckpt_plan(g, s + 2)
        want = revolve_count(1000, s) + 1
        got = sim.forward_computes if sim else None
        print(f"{s:>7} {s + 2:>14} {got if got is not None else '-':>9} {want:>9} "
              f"{fmt_ratio(got / want if got else None):>7} {(p.solver if p else 'NO PLAN: ' + err)[:24]:<24} "
              f"{t:>7.2f}",
              flush=True)
    print("aim: ratio 1.0000, < 1 s each")
    header("Aim 5b: configs/mlp_deep.yaml, planned in a child process",
           f"{'L':>6} {'nodes':>6} {'frac':>5} {'overhead':>9} {'bound':>8} {'solver':<34} {'plan s':>8} {'RSS load MB':>11} "
           f"{'RSS peak MB':>11}")
    cases = [(1000, 0.5)] if quick else [(1000, 0.5), (1000, 0.3), (10000, 0.5), (10000, 0.3)]
    for layers, frac in cases:
        r = run_child(os.path.join(CONFIGS, "mlp_deep.yaml"), [f"L={layers}"], frac=frac,
                      limit=max(PLAN_TIMEOUT["value"], 120) if layers > 1000 else None)
        print(f"{layers:>6} {r.get('joint_nodes', '-'):>6} {frac:>5.1f} {fmt_pct(r.get('overhead')):>9} "
              f"{fmt_pct(r.get('bound')):>8} "
              f"{(r.get('solver') or r.get('error', '-'))[:34]:<34} {r.get('plan_s', float('nan')):>8.2f} "
              f"{r.get('rss_after_load_mb', float('nan')):>11.0f} {r.get('rss_peak_mb', float('nan')):>11.0f}",
              flush=True)
    print("aim: L=10000 in < 2 GB")


# ---- aim 6: the example configs against sqrt-n and the MILP --------------------------------------
def aim6(opt, quick):
    header("Aim 6: example configs at 0.9x/0.7x/0.5x: ckpt vs sqrt-n (where it fits) and the MILP "
           f"({opt.time_limit:.0f} s limit)",
           f"{'config':<14} {'nodes':>5} {'frac':>4} {'ckpt over':>9} {'sqrt-n':>8} {'fits':>4} {'milp over':>9} "
           f"{'milp bound':>10} {'ckpt/milp':>9} {'ckpt bound':>10} {'milp status':<22} {'ckpt solver':<30} {'ckpt s':>6}")
    names = ["gpt_small"] if quick else ["unet_small", "gpt_small", "resnet_small"]
    for name in names:
        g = config_graph(name)
        sq = simulate(g.joint, plan(g.joint, "sqrt-n", ix=g.ix)[0].steps, check=False)
        for frac in ((0.7,) if quick else (0.9, 0.7, 0.5)):
            p, sim, t, err = ckpt_plan(g, g.budget(frac))
            o = opt.get(g, frac, lambda: incumbent(g, frac, sim)) if g.size <= MILP_MAX else None
            over = None if sim is None else g.ratio(sim.cost) - 1
            mo = None if not o or o.get("cost") is None else g.ratio(o["cost"]) - 1
            lb = None if not o or o.get("lower_bound") is None else g.ratio(o["lower_bound"]) - 1
            rel = None if sim is None or mo is None else sim.cost / o["cost"]
            status = (f"not run: > {MILP_MAX} nodes" if g.size > MILP_MAX else "not cached") if o is None \
                else o["status"]
            print(f"{name:<14} {g.size:>5} {frac:>4.1f} {fmt_pct(over):>9} {fmt_pct(g.ratio(sq.cost) - 1):>8} "
                  f"{'yes' if sq.peak_managed_ws <= g.managed(frac) else 'no':>4} {fmt_pct(mo):>9} {fmt_pct(lb):>10} "
                  f"{fmt_ratio(rel):>9} {fmt_pct(g.ratio(p.lower_bound) - 1 if p else None):>10} {status[:22]:<22} "
                  f"{(p.solver if p else 'NO PLAN: ' + err)[:30]:<30} {t:>6.2f}",
                  flush=True)
    print("aims: no worse than sqrt-n where it fits; ckpt/milp <= 1.01 where the MILP proved its optimum")


# ---- aim 7: determinism and the monotone frontier ------------------------------------------------
def _hog(seconds):
    return subprocess.Popen([sys.executable, "-c", f"import time\nt=time.time()\nwhile time.time()-t<{seconds}: pass"])


SWEEP_CAP = 120  # seconds per config in the frontier sweep; budgets after it are skipped (s)


def aim7(quick):
    header("Aim 7a: determinism (the same graph planned twice, the second beside a CPU hog)",
           f"{'graph':<26} {'frac':>4} {'steps':>6} {'identical':>9} {'quiet s':>8} {'busy s':>7} {'solver':<30}")
    cases = [("transformer2_s2", pg.joint_of(pg.transformer_config(2, 2)), 0.6)]
    if not quick:
        cases += [("unet_small", load_model(os.path.join(CONFIGS, "unet_small.yaml")).joint, 0.9),
                  ("gpt_small L=1", load_model(os.path.join(CONFIGS, "gpt_small.yaml"), {"L": 1}).joint, 0.6),
                  ("random500_s1", pg.random_training_dag(500, 1), 0.7)]
    for name, joint, frac in cases:
        g = G(name, joint)
        p1, _, t1, e1 = ckpt_plan(g, g.budget(frac))
        hogs = [_hog(max(5.0, 3 * t1 + 2)) for _ in range(os.cpu_count() or 1)]
        try:
            p2, _, t2, _ = ckpt_plan(g, g.budget(frac))
        finally:
            for h in hogs:
                h.kill()
                h.wait()
        same = "-" if p1 is None or p2 is None else "yes" if p1.steps == p2.steps else "NO"
        print(f"{name:<26} {frac:>4.1f} {len(p1.steps) if p1 else 0:>6} {same:>9} {t1:>8.2f} "
              f"{t2:>7.2f} {(p1.solver if p1 else 'NO PLAN: ' + e1)[:30]:<30}", flush=True)
    header("Aim 7b: monotone frontier, 10 budgets from smallest_peak to store-all's peak, every example config",
           f"{'config':<40} {'nodes':>5} {'least peak':>12} {'overheads (smallest -> store-all)':<60} "
           f"{'monotone':>8} {'time s':>7}")
    from conftest import SMALL  # noqa: E402  (tests/conftest.py: the suite's small dims)
    names = ["seed_example", "mlp_deep", "unet_small", "resnet_small", "gpt_small"]
    for name in (names[:2] if quick else names):
        for over in [SMALL[name]]:  # the suite's small dims: the joint graphs' shapes, at small sizes
            g = config_graph(name, over)
            t0 = time.perf_counter()
            least, exact = smallest_peak(g.joint, g.ix, time_limit=30)
            top = g.resident + g.sa_managed
            budgets = sorted({least + (top - least) * k // 9 for k in range(10)})
            overs = []
            saved = PLAN_TIMEOUT["value"]
            PLAN_TIMEOUT["value"] = min(saved, 30)  # ten plans per config: a slow planner shows as x
            for b in budgets:
                if time.perf_counter() - t0 > SWEEP_CAP:
                    overs.append("skip")
                    continue
                p, sim, t, err = ckpt_plan(g, b)
                overs.append(None if sim is None else g.ratio(sim.cost) - 1)
            PLAN_TIMEOUT["value"] = saved
            done = [o for o in overs if o != "skip"]
            mono = all(a is not None and b is not None and b <= a + 1e-12 for a, b in zip(done, done[1:]))
            text = " ".join("x" if o is None else "s" if o == "skip" else f"{o:.3f}" for o in overs)
            print(f"{g.name[:40]:<40} {g.size:>5} {least:>12}{'' if exact else '*'} {text[:60]:<60} "
                  f"{'yes' if mono else 'NO':>8} {time.perf_counter() - t0:>7.1f}", flush=True)
    print(f"(* least peak not proved exact; x: no plan at that budget, or none within 30 s; s: skipped, the "
          f"config's sweep past {SWEEP_CAP} s)")


def solve_optima(opt):
    """Fill the cache for aims 1 and 6 without planning with ckpt (incumbents from the plain greedy
    and sqrt-n): the slow part of a first run, done once."""
    graphs = [(g, FRACS) for g in small_graphs(False)]
    graphs += [(g, (0.9, 0.7, 0.5)) for g in (config_graph(n) for n in ("unet_small", "gpt_small", "resnet_small"))
               if g.size <= MILP_MAX]
    for g, fracs in graphs:
        for frac in fracs:
            t0 = time.perf_counter()
            o = opt.get(g, frac, lambda: incumbent(g, frac, None))
            print(f"{g.name}@{frac}: {o['status']} cost {o['cost']} ({time.perf_counter() - t0:.1f} s)", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a small subset using only cached optima (< 2 minutes)")
    ap.add_argument("--only", default="1,2,3,4,5,6,7", help="comma-separated aims to run (1-7)")
    ap.add_argument("--time-limit", type=float, default=120.0, help="seconds for each exact MILP run (cached)")
    ap.add_argument("--plan-timeout", type=int, default=120,
                    help="seconds after which one ckpt plan is reported as timed out (default 120)")
    ap.add_argument("--solve-optima", action="store_true", help="only fill the cache of exact optima (aims 1, 6)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--set", action="append", default=[], help=argparse.SUPPRESS)
    ap.add_argument("--frac", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--budget-bytes", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    only = {int(x) for x in args.only.split(",") if x}
    opt = Optima(args.time_limit, cached_only=args.quick)
    PLAN_TIMEOUT["value"] = 20 if args.quick else args.plan_timeout
    PLAN_TIMEOUT["child_margin"] = 20 if args.quick else 60
    if args.solve_optima:
        return solve_optima(opt)
    start = time.perf_counter()
    for k, fn in [(1, lambda: aim1(opt, args.quick)), (2, lambda: aim2(args.quick)),
                  (3, lambda: aim3(opt, args.quick)), (4, lambda: aim4(args.quick)), (5, lambda: aim5(args.quick)),
                  (6, lambda: aim6(opt, args.quick)), (7, lambda: aim7(args.quick))]:
        if k in only and (k != 2 or not args.quick):
            t0 = time.perf_counter()
            fn()
            print(f"(aim {k}: {time.perf_counter() - t0:.1f} s)", flush=True)
    print(f"\ntotal {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
