"""Hierarchical planning for networks made of blocks (the approach of Rockmate / HiRemate, over the
chain DP of Beaumont et al. 2019).

The forward graph is cut at its articulation points into a sequence of blocks: block s reads only
a_{s-1} (the previous block's output; none for the first) and resident leaves, and ends in a_s.
Its gradient nodes read only its own values, a_{s-1} and grad(a_s), and end in grad(a_{s-1}). Then:

1. For each distinct block (its structure: sizes, costs and edges; 96 identical layers are one),
   a small Pareto set of *options* is computed once: a keep-set found by the keep-set descent on
   the block alone, run as keep_schedule runs it. An option has a forward part (run the block,
   keep its keep-set), a backward part (recompute what was dropped, run the block's gradients),
   and four figures: the forward part's peak, the bytes it leaves, the backward part's peak and the
   cost of both. One more figure per block: the peak of running it without keeping anything.
2. A DP over the sequence of blocks, as the chain DP does for layers, chooses for every
   subsequence either to run its first block with one of its options and recurse on the rest, or
   to advance through the first blocks keeping only their outputs (whole blocks recomputed later:
   multi-level recompute) and split there. Memory is counted in slots, sizes rounded up, so every
   plan it gives fits; the schedule is walked byte by byte before it is offered.

The DP is exact over its family (options per block x checkpoints between blocks), not over every
schedule: it is one candidate among the planners, and the cheapest that fits wins.
"""

import math
from itertools import chain

import numpy as np

from ..model.joint import GRAD
from ..schedule import COMPUTE, FREE, Plan
from .basic import articulation_points
from .keepset import keep_schedule
from .search import Evaluator, State, _spread, descent, search, walk

MAX_BLOCKS = 100  # blocks after grouping: the DP does O(n^3 x slots) work
MAX_SLOTS = 2048  # the DP's work grows with them; rounding to fewer loses at tight budgets
MAX_OPTIONS = 32  # per distinct block, spread over the Pareto set (32 held the whole set on GPT layers)
OPTION_WORK = 1_500_000  # schedule steps walked to find options, all distinct blocks together
BUDGETS = 6  # budgets per distinct block at which the search adds an option (two kinds)


class Blocks:
    """The block view of a joint graph. `Blocks.of` gives one per way of grouping the blocks
    (see _groupings), or None when there are fewer than three blocks or some gradient node reads
    across a cut (a weight shared by two blocks, for one)."""

    @classmethod
    def of(cls, ix):
        joint = ix.joint
        if not ix.fwd or not ix.bwd:
            return None
        cuts = articulation_points(ix)
        if len(cuts) < 2:
            return None
        block_of, s = {}, 0
        cutset = set(cuts)
        for u in ix.fwd:
            block_of[u] = s
            if u in cutset:
                s += 1
        n = s + 1
        fwd = [[] for _ in range(n)]
        for u in ix.fwd:
            fwd[block_of[u]].append(u)
        outs = [f[-1] for f in fwd]
        bwd = [[] for _ in range(n)]
        bblock = {}
        for b in ix.bwd:
            ref = joint.nodes[b].get("ref")
            if ref in block_of:
                k = block_of[ref] + (1 if ref in cutset else 0)
            else:  # a leaf's gradient: with the block of the ops that read the leaf, which must agree
                ks = {block_of.get(joint.nodes[p].get("ref")) for p in ix.preds[b] if p not in ix.fwd_set}
                if len(ks) != 1 or None in ks:
                    return None
                k = ks.pop()
            bblock[b] = k
            bwd[k].append(b)
        for k in range(n):
            allowed_f = set(fwd[k]) | ({outs[k - 1]} if k else set())
            g_out = GRAD + outs[k] if k + 1 < n else None
            for b in bwd[k]:
                for p in ix.preds[b]:
                    if p in ix.fwd_set:
                        if p not in allowed_f:
                            return None
                    elif bblock.get(p) != k and p != g_out:
                        return None
        for k in range(n - 1):  # a gradient flowing in must come from the next block
            g = GRAD + outs[k]
            if g in bblock and bblock[g] != k + 1:
                return None
        # a view whose largest block holds most of the graph leaves the DP little to choose
        views = [cls(ix, F, B) for F, B in _groupings(ix, fwd, bwd)
                 if max(len(f) + len(b) for f, b in zip(F, B)) * 2 <= len(ix.order)]
        return views or None

    def __init__(self, ix, fwd, bwd):
        self.ix = ix
        self.fwd, self.bwd = fwd, bwd
        self.n = len(self.fwd)
        self.out = [f[-1] for f in self.fwd]
        bset = set(ix.bwd)
        self.parts = None  # (see _parts)
        self.options = _options  # how a block's options are found (chain_view: _chain_options)
        self.grad_out = [GRAD + self.out[k] if k + 1 < self.n and GRAD + self.out[k] in bset else None
                         for k in range(self.n)]


def block_views(ix):
    """Blocks.of, once per index (the options of each view are computed once, then reused by
    every budget)."""
    if "blocks" not in ix.views:
        ix.views["blocks"] = Blocks.of(ix) or []
    return ix.views["blocks"]


CHAIN_BLOCKS = 15  # blocks a long chain is cut into (chain_view): the DP's table stays small


def chain_view(chain):
    """A long chain (chain.py's Chain, without side values) as a Blocks view of CHAIN_BLOCKS runs
    of consecutive layers, with options found by _chain_options: where the chain DP's slots would
    be far coarser than the values (thousands of unlike layers), the blocks DP plans it instead,
    each keep-set counted to the byte inside its block. None for a chain of fewer than three
    blocks' worth of layers. Made once per index."""
    ix = chain.ix
    if "chain_blocks" not in ix.views:
        view = None
        l = chain.l
        if not chain.side and l >= 3 * 2:
            n = min(CHAIN_BLOCKS, l // 2)
            bounds = [l * s // n for s in range(n + 1)]
            F = [chain.fwd[a:b] for a, b in zip(bounds, bounds[1:])]
            B = [[x for k in range(a + 1, b + 1) for x in chain.groups[k]] for a, b in zip(bounds, bounds[1:])]
            B[-1].append(chain.seed)
            view = Blocks(ix, F, [sorted(b, key=ix.pos.__getitem__) for b in B])
            # the gradient a block passes to the one before: the chain knows it (cost graphs name
            # their nodes freely)
            view.grad_out = [chain.grad[b] for b in bounds[1:-1]] + [None]
            view.options = _chain_options
        ix.views["chain_blocks"] = view
    return ix.views["chain_blocks"]


def _signature(ix, F, B, prev, gin):
    """A block's structure, by position: two blocks with equal signatures have the same options."""
    idx = {u: i for i, u in enumerate(F + B)}
    idx[prev], idx[gin] = -1, -2
    return (ix.ram.get(prev, 0), ix.ram.get(gin, 0)) + tuple(
        (ix.ram[u], ix.ws[u], ix.cost[u], tuple(idx.get(p, -3) for p in ix.preds[u])) for u in F + B)


def _groupings(ix, fwd, bwd):
    """Ways to merge consecutive blocks, each (fwd lists, bwd lists): the blocks as cut (when at
    most MAX_BLOCKS), and the smallest group size that makes the groups repeat, at the offset that
    leaves the fewest distinct ones (a transformer's two halves of a layer become one layer again:
    a plan may then recompute the attention half's output from what it kept, inside the layer).
    A group's structure is the run of its blocks' structures, so groups are compared by those."""
    n = len(fwd)
    out = [(fwd, bwd)] if n <= MAX_BLOCKS else []
    ids = {}
    sid = [ids.setdefault(_signature(ix, fwd[k], bwd[k], fwd[k - 1][-1] if k else None, GRAD + fwd[k][-1]), len(ids))
           for k in range(n)]
    lo = max(2, math.ceil(n / MAX_BLOCKS))
    for size in range(lo, min(n // 3, lo + 8) + 1):
        best = None
        for offset in range(min(size, 8)):  # periods up to 8 blocks get aligned
            bounds = sorted({0, n} | set(range(offset or size, n, size)))
            if not 3 <= len(bounds) - 1 <= MAX_BLOCKS:
                continue
            key = (len({tuple(sid[a:b]) for a, b in zip(bounds, bounds[1:])}), len(bounds) - 1)
            if best is None or key < best[0]:
                best = (key, bounds)
        if best is not None and best[0][0] * 2 <= best[0][1]:  # most groups repeat another
            pairs = list(zip(best[1], best[1][1:]))
            out.append(([list(chain.from_iterable(fwd[a:b])) for a, b in pairs],
                        [list(chain.from_iterable(bwd[a:b])) for a, b in pairs]))
            break
    return out


class _Sub:
    """A block as a joint graph of its own, for keep_schedule and the descent: the block's input
    and the gradient flowing in are left out (the DP keeps them live around the block), and the
    gradient flowing out gets a reader outside, so that nothing in the block frees it."""

    def __init__(self, ix, F, B, grad_in_out):
        self.joint = ix.joint
        self.fwd, self.bwd = list(F), sorted(B, key=ix.pos.__getitem__)
        self.order = self.fwd + self.bwd
        self.fwd_set = frozenset(F)
        inside = set(self.order)
        self.pos = {x: ix.pos[x] for x in self.order}
        self.preds = {x: [p for p in ix.preds[x] if p in inside] for x in self.order}
        self.fpreds = {x: [p for p in ix.fpreds[x] if p in inside] for x in self.order}
        self.fsuccs = {u: [c for c in ix.fsuccs[u] if c in inside] for u in F}
        self.breaders = {x: [c for c in ix.breaders[x] if c in inside] for x in self.order}
        self.ram, self.ws, self.cost = ix.ram, ix.ws, ix.cost
        fpos = {u: i for i, u in enumerate(F)}
        self.last_fwd_reader = {u: max((fpos[c] for c in self.fsuccs[u]), default=-1) for u in F}
        self.residuals = {u for u in F if self.breaders[u]}
        self.n_breaders = {x: len(self.breaders[x]) for x in self.order}
        if grad_in_out is not None:
            self.n_breaders[grad_in_out] += 1  # read by the previous block


class _Carried(Evaluator):
    """A block's plans measured as the network sees them: what the forward part leaves live sits on
    top of `ballast` bytes (the rest of the network's) until the backward part starts, so that a
    budget bounds the bytes carried. The search then trades carried bytes for recompute."""

    def __init__(self, sub, work, ballast):
        super().__init__(sub, work)
        self.ballast = ballast

    def kept(self, state):
        return self.measure(state.steps(self.ix))[0] - self.ballast

    def measure(self, steps):
        peak, cost, at_peak = walk(self.ix, steps)
        live, held = 0, set()
        for kind, x in steps:
            if kind == COMPUTE and x not in self.ix.fwd_set:
                break
            live += self.ix.ram[x] if kind == COMPUTE else -self.ix.ram[x]
            (held.add if kind == COMPUTE else held.discard)(x)
        if live + self.ballast >= peak:
            return live + self.ballast, cost, frozenset(held)
        return peak, cost, at_peak


def _walk_from(ix, steps, live):
    """(peak with workspace, bytes live at the end, cost) of steps run with `live` bytes already live."""
    ram, ws, cost = ix.ram, ix.ws, ix.cost
    peak, total = live, 0.0
    for kind, x in steps:
        if kind == COMPUTE:
            peak = max(peak, live + ram[x] + ws[x])
            live += ram[x]
            total += cost[x]
        else:
            live -= ram[x]
    return peak, live, total


class _Block:
    """One block's parts: its forward without keeping (`plain`) and its options, as step lists."""

    def __init__(self, ix, F, B, prev, g_in, g_out):
        self.F, self.B, self.out, self.prev, self.g_in, self.g_out = F, B, F[-1], prev, g_in, g_out
        steps, live, last = [], set(), {}
        for i, u in enumerate(F):
            for p in ix.fpreds[u]:
                last[p] = i
        for i, u in enumerate(F):
            steps.append((COMPUTE, u))
            live.add(u)
            for p in ix.fpreds[u]:
                if p in live and last[p] == i and p != self.out:
                    steps.append((FREE, p))
                    live.discard(p)
            if u != self.out and last.get(u, -1) <= i and u in live:
                steps.append((FREE, u))
                live.discard(u)
        self.plain = steps
        self.plain_peak, _, self.plain_cost = _walk_from(ix, steps, 0)

    def option(self, ix, sub, state):
        """(forward steps, backward steps, the backward reads a_s, the backward reads a_{s-1}) of a
        keep-set (a State of the sub-graph), spliced for the whole graph: the output stays live after
        the forward part (the next block reads it; whoever runs the backward part frees it first
        when the part does not read it), and grad(a_s) is freed after its last reader."""
        steps = keep_schedule(sub, state.keep | {self.out}, hold=state.hold, refetch=state.refetch)
        first_b = next((n for n, (k, x) in enumerate(steps) if k == COMPUTE and x not in sub.fwd_set), len(steps))
        fwd = [st for st in steps[:first_b] if st != (FREE, self.out)]
        bwd = steps[first_b:]
        reads_out = len(fwd) == first_b or (FREE, self.out) in bwd
        if self.g_in is not None:
            last = max((n for n, (k, x) in enumerate(bwd) if k == COMPUTE and self.g_in in ix.preds[x]), default=-1)
            bwd = bwd[:last + 1] + [(FREE, self.g_in)] + bwd[last + 1:]
        reads_in = self.prev is not None and any(k == COMPUTE and self.prev in ix.preds[x] for k, x in bwd)
        return fwd, bwd, reads_out, reads_in


def _options(ix, blk, work):
    """The block's Pareto set: [(fwd peak, kept, bwd peak, cost, fwd steps, bwd steps, reads a_s,
    reads a_{s-1})], each figure in bytes above the block's input (the backward's counting
    grad(a_s) from its start, and a_s where the backward reads it)."""
    sub = _Sub(ix, blk.F, blk.B, blk.g_out)
    work = max(1, work // (4 * BUDGETS))  # shared by the descents and each search
    ev = Evaluator(sub, work)
    classes = [(u,) for u in sub.fwd]
    states = []
    for hold in (sub.fwd_set, frozenset()):
        states += [s for s, _, _ in descent(sub, ev, classes, hold)]
        states.append(State(frozenset(), hold))
    # the search at budgets spread between the least and the largest peak met so far, and at
    # budgets on the bytes carried from the forward into the backward
    peaks = [ev(s)[0] for s in states if ev(s)[0] < math.inf]  # inf: beyond the work left
    if not peaks:
        return []
    lo, hi = min(peaks), max(peaks)
    for i in range(1, BUDGETS):
        p = search(sub, lo + (hi - lo) * i // BUDGETS, work=work)
        if p is not None:
            states.append(p.notes["state"])
    carried = _Carried(sub, work, 2 * hi)
    kept = sorted({k for k in map(carried.kept, states) if k < math.inf})
    lo, hi = kept[0], kept[-1]
    targets = sorted({lo + (hi - lo) * i // BUDGETS for i in range(BUDGETS)} | set(_spread(kept, 2 * BUDGETS)))
    for k in targets:
        p = search(sub, carried.ballast + k, ev=_Carried(sub, work, carried.ballast))
        if p is not None:
            states.append(p.notes["state"])
    return _pareto(ix, blk, sub, states)


def _pareto(ix, blk, sub, states):
    """The options of `states` (keep-sets of the block's sub-graph) that no other beats on every
    figure, MAX_OPTIONS at most."""
    g_in = ix.ram[blk.g_in] if blk.g_in is not None else 0
    g_out = ix.ram[blk.g_out] if blk.g_out is not None else 0
    x_out = ix.ram[blk.out]
    found = {}
    for s in states:
        fwd, bwd, reads_out, reads_in = blk.option(ix, sub, s)
        fpk, kept, fcost = _walk_from(ix, fwd, 0)
        start = kept + g_in - (0 if reads_out else x_out)
        bpk, end, bcost = _walk_from(ix, bwd, start)
        if end != g_out:  # the backward part must leave exactly grad(a_{s-1})
            continue
        key = (fpk, kept, max(bpk, kept + g_in), fcost + bcost, reads_out, reads_in)
        found.setdefault(key, (fwd, bwd))
    keys = sorted(found)
    pareto = [k for k in keys if not any(o != k and all(a <= b for a, b in zip(o, k)) for o in keys)]
    if len(pareto) > MAX_OPTIONS:  # spread over the set, cheapest and leanest both kept
        pareto.sort(key=lambda k: k[3])
        picks = {round(i * (len(pareto) - 1) / (MAX_OPTIONS - 1)) for i in range(MAX_OPTIONS)}
        pareto = [pareto[i] for i in sorted(picks)]
    return [(*k[:4], *found[k], *k[4:]) for k in pareto]


CHAIN_OPTIONS = 32  # keep-sets tried per block of a chain, spread over its values


def _chain_options(ix, blk, work):
    """A chain block's options without a search: on a chain, what to keep is mostly which values
    are dearest to recompute for their bytes, so the keep-sets are the dearest t values for t
    spread from none to all, and every second or third value; each is scheduled and measured as
    _options measures the search's (the gradients read the values, so recomputed values are held
    until their gradient has run). Walks a few hundred steps per keep-set; no clock, no search."""
    sub = _Sub(ix, blk.F, blk.B, blk.g_out)
    F = sub.fwd[:-1]  # the output is kept by every option
    dear = sorted(F, key=lambda u: (-(ix.cost[u] / max(ix.ram[u], 1)), sub.pos[u]))
    counts = sorted({round(i * len(F) / (CHAIN_OPTIONS - 1)) for i in range(CHAIN_OPTIONS)})
    keeps = [frozenset(dear[:t]) for t in counts] + [frozenset(F[o::k]) for k in (2, 3, 8) for o in range(k)]
    # recomputed values held until their gradient, or (for the least peaks, at tight budgets)
    # dropped at once and recomputed for each gradient from the nearest kept value
    states = [State(k, sub.fwd_set) for k in dict.fromkeys(keeps)]
    # (only where every eighth value or more is kept: a long gap recomputed per gradient is
    # quadratic, 220,000 steps for 667 layers)
    states += [State(k, frozenset()) for k in dict.fromkeys(keeps[-13:])]
    return _pareto(ix, blk, sub, states)


def _parts(blocks, work):
    """[(block, its options)] and each block's structure id, computed once per Blocks: the options
    do not depend on the budget."""
    if blocks.parts is None:
        ix = blocks.ix
        parts, sig_ids, cache = [], [], {}
        distinct = len({_signature(ix, blocks.fwd[k], blocks.bwd[k], blocks.out[k - 1] if k else None,
                                   blocks.grad_out[k]) for k in range(blocks.n)})
        work = work // distinct
        for k in range(blocks.n):
            F, B = blocks.fwd[k], blocks.bwd[k]
            prev = blocks.out[k - 1] if k else None
            g_in = blocks.grad_out[k]
            g_out = blocks.grad_out[k - 1] if k else None
            blk = _Block(ix, F, B, prev, g_in, g_out)
            sig = _signature(ix, F, B, prev, g_in)
            if sig not in cache:
                cache[sig] = (len(cache), blk, blocks.options(ix, blk, work))
            sid, rep, opts = cache[sig]
            if rep is not blk:  # the same structure: the representative's options, renamed
                name = dict(zip(rep.F + rep.B, F + B))
                name.update({rep.g_in: g_in} if rep.g_in is not None else {})
                opts = [(*o[:4], [(kd, name[x]) for kd, x in o[4]], [(kd, name[x]) for kd, x in o[5]], *o[6:])
                        for o in opts]
            parts.append((blk, opts))
            sig_ids.append(sid)
        blocks.parts = (parts, sig_ids, len(cache), sum(len(o) for _, _, o in cache.values()))
    return blocks.parts


def solve_blocks(blocks, budget_managed, work=OPTION_WORK):
    """A Plan (steps None when nothing in the family fits), the DP's least feasible peak noted."""
    ix, n = blocks.ix, blocks.n
    parts, sig_ids, distinct, options = _parts(blocks, work)
    plan = Plan("budget", None, solver="blocks-dp")
    plan.notes.update(blocks=n, distinct=distinct, options=options)
    if any(not opts for _, opts in parts):
        return plan
    sizes = [ix.ram[u] for u in ix.order if ix.ram[u] > 0]
    largest = max(sizes, default=1)
    unit = max(1, math.gcd(*[s for s in sizes if s * 64 >= largest]))
    if budget_managed // unit > MAX_SLOTS:
        unit = math.ceil(budget_managed / MAX_SLOTS)
    S = int(budget_managed // unit)
    T, C, fig = _table(blocks, parts, sig_ids, unit, S + 2)
    rows = fig[2]
    finite = np.isfinite(T[0, rows[1, n], -(S + 3):])
    for m in range(S + 2, -1, -1):
        if finite[m]:
            steps = _emit(blocks, parts, C, fig, m)
            peak = _walk_from(ix, steps, 0)[0]
            if peak <= budget_managed:
                plan.steps = steps
                break
    feasible = np.flatnonzero(finite)
    if len(feasible):
        plan.notes["min_steps"] = _emit(blocks, parts, C, fig, int(feasible[0]))
    plan.notes.update(unit_bytes=int(unit), slots=S)
    return plan


NONE = -(10 ** 6)  # no move recorded


def _table(blocks, parts, sig_ids, unit, S):
    """Opt(h, s, t, m), blocks numbered 1..n: the least cost to run the backward of blocks t..s,
    given a_{s-1} and grad(a_t) live, within m slots for everything live (those two included); it
    ends with grad(a_{s-1}) live, and a_{s-1} too when h (else a_{s-1} goes as soon as nothing in
    the subproblem needs it). C records the move: o >= 0 runs block s with option o first and
    recurses on s+1..t; -(k - s) advances to block k keeping only a_{k-1} and splits there.

    Subproblems over equal runs of blocks (the same structures, a_{s-1} and grad(a_t) of the same
    sizes) share a row: 96 identical layers need about 96 rows per start, not 96^2/2."""
    ix, n = blocks.ix, blocks.n

    def sl(b):
        return math.ceil(b / unit)

    X = [0] + [sl(ix.ram[u]) for u in blocks.out]
    G = [0] + [sl(ix.ram[g]) if g is not None else 0 for g in blocks.grad_out]
    G[n] = 0
    NP = np.array([0] + [sl(blk.plain_peak) for blk, _ in parts])
    CF = np.array([0.0] + [blk.plain_cost for blk, _ in parts])
    OP = [None] + [[(sl(o[0]), sl(o[1]), sl(o[2]), o[3], o[6], o[7]) for o in opts] for _, opts in parts]
    # rows[s, t]: the row of subproblem (s, t); row 0 is never written (all inf)
    rows = np.zeros((n + 2, n + 2), dtype=np.int64)
    runs, run_of, keys, todo = {}, {}, {}, []  # a run: (the run one block shorter, the last block)
    for d in range(n):
        for s in range(1, n - d + 1):
            t = s + d
            run = runs.setdefault((run_of[s, t - 1] if d else None, sig_ids[t - 1]), len(runs))
            run_of[s, t] = run
            key = (X[s - 1], G[t], run)
            if key not in keys:
                keys[key] = len(keys) + 1
                todo.append((s, t))
            rows[s, t] = keys[key]
    m = np.arange(S + 1)
    INF = np.inf
    # T[h, row, W + m] holds Opt(h, s, t, m); W columns of inf on the left make "m - b" a view
    W = S + 1
    T = np.full((2, len(keys) + 1, W + S + 1), INF)
    C = np.full((2, len(keys) + 1, S + 1), NONE, dtype=np.int32)
    Xa = np.array(X)

    def at(h, s, t, less=0):  # Opt(h, s, t, m - less) for every m (t may be an array)
        less = min(max(less, 0), W)
        return T[h, rows[s, t], W - less:W - less + S + 1]

    for s, t in todo:
        d = t - s
        base = X[s - 1]
        if d >= 1:  # advancing to block k: the right part does not depend on h
            ks = np.arange(s + 1, t + 1)
            rs = np.arange(s, t)
            P = np.maximum.accumulate(base + G[t] + np.where(rs > s, Xa[rs - 1], 0) + NP[rs])
            right = np.cumsum(CF[s:t])[:, None] + at(0, ks, t, base)
            right[m[None, :] < P[:, None]] = INF
        for h in (0, 1):
            best = np.full(S + 1, INF)
            choice = np.full(S + 1, NONE, dtype=np.int32)
            for o, (fp, kept, bp, cost, reads_out, reads_in) in enumerate(OP[s]):
                held = base if (h or reads_in) else 0  # a_{s-1} during the rest
                need = max(base + G[t] + fp, held + bp)
                if need > S:
                    continue
                if d == 0:
                    cand = np.full(S + 1, cost)
                else:
                    cand = cost + at(int(reads_out), s + 1, t, held + kept - X[s])
                cand[:need] = INF
                better = cand < best
                best[better], choice[better] = cand[better], o
            if d >= 1:
                total = right + at(h, s, ks - 1)
                kb = np.argmin(total, axis=0)
                cand = total[kb, m]
                better = cand < best
                best[better], choice[better] = cand[better], -(ks[kb] - s)[better]  # relative: rows are shared
            r = rows[s, t]
            T[h, r, W:], C[h, r] = best, choice
    return T, C, (X, OP, rows)


def _emit(blocks, parts, C, fig, m):
    X, OP, rows = fig
    steps, tasks = [], [(0, 1, blocks.n, m)]
    while tasks:
        task = tasks.pop()
        if task[0] == "steps":
            steps.extend(task[1])
            continue
        h, s, t, m = task
        ch = int(C[h, rows[s, t], m])
        blk, opts = parts[s - 1]
        free_in = [(FREE, blk.prev)] if blk.prev is not None and not h else []
        if ch >= 0:
            fwd, bwd, reads_out, reads_in = opts[ch][4:]
            fp, kept, bp, cost, _, _ = OP[s][ch]
            # the backward part frees a_s first when it does not read it, unless the subproblem
            # after a_s (told it need not keep a_s) already has
            lead = [(FREE, blk.out)] if not reads_out and t == s else []
            tasks.append(("steps", lead + bwd + (free_in if reads_in else [])))
            if t > s:
                held = X[s - 1] if (h or reads_in) else 0
                tasks.append((int(reads_out), s + 1, t, m - held - kept + X[s]))
            tasks.append(("steps", fwd + ([] if reads_in else free_in)))
        elif ch != NONE:
            k = s - ch
            adv = []
            for r in range(s, k):
                adv += parts[r - 1][0].plain
                if r > s:
                    adv.append((FREE, blocks.out[r - 2]))
            tasks.append((h, s, k - 1, m))
            tasks.append((0, k, t, m - X[s - 1]))
            tasks.append(("steps", adv))
        else:
            raise AssertionError(f"blocks DP: no choice recorded for ({h}, {s}, {t}, {m})")
    return steps
