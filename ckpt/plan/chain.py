"""Exact dynamic programming for chains: multi-level recompute over heterogeneous layers.

A chain is a joint graph whose forward nodes a_1..a_l form a path, and whose gradient nodes fall
into one group per op: group k reads grad(a_k) and some of {a_{k-1}, a_k}, writes grad(a_{k-1}) and
the gradients of op k's parameters. A final step L = l + 1 is the seed, reading a_l.

Opt(i, j, h, m) is the least forward cost to run groups j, j-1, ..., i+1 given a_i and grad(a_j)
live (and a_j when h), within m bytes for everything live in the subproblem; it ends with a_i and
grad(a_i) live. Three moves (Griewank's advance/takeshot/reverse, as in Beaumont et al. 2019):
  base   j = i+1: (re)compute a_j if group j reads it, run group j;
  direct group j does not read a_{j-1} and a_j is at hand: run it, then Opt(i, j-1, False, m);
  split  advance from a_i to a_k, keep a_k: Opt(k, j, h, m - x_i), then Opt(i, k, h', m) where
         h' says whether group k reads a_k (if not, a_k is dropped first).
Memory is counted in slots of a common unit: the gcd of all sizes when that gives few enough slots
(then the plan is exact to the byte), else a coarser unit with sizes rounded up (then feasible but
possibly a little off the optimum; the plan says so).
"""

import math
import time

import numpy as np

from ..schedule import COMPUTE, FREE, Plan

MAX_SLOTS = 512
MAX_CELLS = 4e7  # table cells (2 x rows x slots) beyond which the DP is not attempted
MAX_ROWS = 45_000  # subproblems (about 300 layers unless they repeat): each is a Python step
MAX_WORK = 1.5e8  # split points x slots: a few seconds of numpy; the slots coarsen to stay within it


class Chain:
    """The chain view of a joint graph, or None from `Chain.of` when the graph is not a chain."""

    @classmethod
    def of(cls, ix):
        """Recognised from the structure alone, so cost graphs from other tools qualify too: the
        forward nodes form a path; one gradient node (the seed) reads only a_l; group k is the
        set of gradient nodes reading grad(a_k), of which exactly one (grad(a_{k-1})) is read by
        later gradient nodes, and group k reads at most a_{k-1} and a_k.

        A side value of a_k (a residual such as layernorm's statistics or dropout's mask: read by
        a_k alone and by group k, reading nothing a_k does not) is joined to a stage: to a_{k-1}'s
        when it reads a_{k-1} (computed just after it: the statistics of x live where x does, as
        group k reads both), else to a_k's (computed just before it: a mask); freed with it. The
        DP is then exact over that family only (a schedule that keeps a stage's value but not its
        side value is outside it), so it claims no more."""
        fwd, joint = ix.fwd, ix.joint
        if not fwd:
            return None
        fsuccs = {a: [] for a in fwd}
        for b in fwd:
            for u in ix.fpreds[b]:
                fsuccs[u].append(b)
        side = {}
        for u in fwd:
            if len(fsuccs[u]) == 1 and fsuccs[u][0] not in side:
                a = fsuccs[u][0]
                others = set(ix.fpreds[a]) - {u}  # a's path predecessor (none: u may be the path)
                if others and set(ix.fpreds[u]) <= others and len(ix.fpreds[a]) == 2:
                    side[a] = u
        spine = [a for a in fwd if a not in set(side.values())]
        if not spine:
            return None
        attach = {}  # stage value -> (side value, computed before it)
        for k, a in enumerate(spine):
            if [u for u in ix.fpreds[a] if u != side.get(a)] != ([] if k == 0 else [spine[k - 1]]):
                return None
            if a in side:
                owner = spine[k - 1] if ix.fpreds[side[a]] else a
                if owner in attach:
                    return None
                attach[owner] = (side[a], owner == a)
        fwd = spine

        def bpreds(b):
            return [u for u in ix.preds[b] if joint.nodes[u]["kind"] == "backward"]

        roots = [b for b in ix.bwd if not bpreds(b)]
        if len(roots) != 1 or ix.fpreds[roots[0]] != [fwd[-1]]:
            return None
        grad_of = {fwd[-1]: roots[0]}
        groups = {}
        for k in range(len(fwd), 0, -1):
            g = grad_of.get(fwd[k - 1])
            if g is None:  # k = 1, grad(a_1) read by nothing (below): group 1 is empty
                groups[k] = []
                continue
            members = [b for b in ix.breaders[g] if bpreds(b) == [g]]
            if len(members) != len(ix.breaders[g]):
                return None  # something else reads grad(a_k) too
            allowed = {fwd[k - 1]} | ({fwd[k - 2]} if k >= 2 else set())
            allowed |= {attach[a][0] for a in allowed if a in attach}
            if any(not set(ix.fpreds[b]) <= allowed for b in members):
                return None
            passing = [b for b in members if ix.breaders[b]]
            if k == 2 and not passing:
                # grad(a_1) read by nothing (the input needs no gradient: a cost graph's chain
                # often ends so): group 2 frees it as it goes, and group 1 is empty
                groups[k] = members
                continue
            if len(passing) != (1 if k >= 2 else 0):
                return None
            if k >= 2:
                grad_of[fwd[k - 2]] = passing[0]
            groups[k] = members
        if sum(len(m) for m in groups.values()) + 1 != len(ix.bwd):
            return None
        return cls(ix, fwd, groups, grad_of, attach)

    def __init__(self, ix, fwd, groups, grad_of, attach=None, keep=frozenset()):
        l = len(fwd)
        self.ix, self.fwd, self.l, self.L = ix, fwd, l, l + 1
        self._args = (ix, fwd, groups, grad_of, attach)
        self.side = attach or {}
        self.keep = keep  # side values kept apart from their stages (with_kept_sides)
        self.seed = grad_of[fwd[-1]]
        self.groups = [None] + [groups[k] for k in range(1, l + 1)] + [[self.seed]]
        sv = [self.side.get(a, (None, False)) for a in fwd]
        joined = [(s, first) if s not in keep else (None, False) for s, first in sv]
        self.x = [0] + [ix.ram[a] + (ix.ram[s] if s else 0) for a, (s, _) in zip(fwd, joined)] + [0]

        def held(a, s, first, once):
            """Workspace held while stage a is computed, beyond x: a joined side value is computed
            first or second, each with its own workspace; a kept one's bytes are in `reserve`,
            and its workspace counts only at its stage's first compute (`once`)."""
            if s in keep:
                return max(ix.ws[a], ix.ws[s]) if once else ix.ws[a]
            if not s:
                return ix.ws[a]
            return max(ix.ws[a], ix.ws[s] - ix.ram[a]) if first else max(ix.ws[a] - ix.ram[s], ix.ws[s])

        self.wsx = [0] + [held(a, s, first, False) for a, (s, first) in zip(fwd, sv)] + [0]
        self.wsx_first = [0] + [held(a, s, first, True) for a, (s, first) in zip(fwd, sv)] + [0]
        self.c = [0.0] + [ix.cost[a] + (ix.cost[s] if s else 0.0) for a, (s, _) in zip(fwd, joined)] + [0.0]
        self.gsz = [0] + [ix.ram[grad_of[a]] if a in grad_of else 0 for a in fwd] + [0]
        self.grad = [None] + [grad_of.get(a) for a in fwd] + [None]
        self.needs_in = [False] * (self.L + 1)
        self.needs_out = [False] * (self.L + 1)
        self.extra = [0] * (self.L + 1)
        # reserve[j]: bytes of the kept side values still to be read while groups j, j-1, ... run
        self.reserve = [0] * (self.L + 1)
        self.freed_after = {}  # kept side values: the gradient node after which each is freed
        for k in range(1, self.L + 1):
            reads = set().union(*[ix.fpreds[b] for b in self.groups[k]])
            sides = {joined[k - 2][0]} if k >= 2 else set()
            self.needs_in[k] = k >= 2 and bool(({fwd[k - 2]} | sides) & reads)
            sides = {joined[k - 1][0]} if k <= l else set()
            self.needs_out[k] = k <= l and bool(({fwd[k - 1]} | sides) & reads)
            held, peak = 0, 0
            for b in self.groups[k]:
                peak = max(peak, held + ix.ram[b] + ix.ws[b])
                if ix.breaders[b]:
                    held += ix.ram[b]
            self.extra[k] = peak
        for s in keep:  # freed after the last gradient node that reads it (with_kept_sides)
            k, b = next((k, b) for k in range(1, self.L + 1) for b in reversed(self.groups[k]) if s in ix.fpreds[b])
            self.freed_after.setdefault(b, []).append(s)
            for j in range(k, self.L + 1):
                self.reserve[j] += ix.ram[s]
        # computed[t]: bytes of the kept side values computed by the end of stage t's first
        # compute. Subproblems (i, L) are exactly those of the first forward pass (right parts
        # keep their j; left parts and direct moves end before L), where only these are live yet.
        self.computed = [0] * (self.L + 1)
        for t, a in enumerate(fwd, 1):
            s = self.side.get(a, (None, False))[0]
            if s in keep:
                for u in range(t, self.L + 1):
                    self.computed[u] += ix.ram[s]

    def with_kept_sides(self, which=lambda side, first: True):
        """This chain in a second family of schedules: each side value computed once, with its
        stage's first compute, and kept until the gradient that reads it has run; recomputing a
        stage leaves it alone. Side values are small and dear to recompute for their size (a
        dropout mask: a byte an element and a hash; layernorm's statistics: two numbers a row),
        and a gradient that reads only a mask no longer needs its stage's value. The DP counts the
        side values still to be read (`reserve`) as live throughout each subproblem after the
        first forward pass, and in that pass those computed so far (`computed`): its plans fit,
        and it is exact over neither family. `which(side, first)` picks the side values kept
        (first: computed before its stage's value, as a mask is); None where it picks none, or
        one that no gradient reads."""
        keep = frozenset(s for s, first in self.side.values() if which(s, first))
        if not keep or any(not any(s in self.ix.fpreds[b] for g in self.groups[1:] for b in g) for s in keep):
            return None
        ix, fwd, groups, grad_of, attach = self._args
        return Chain(ix, fwd, groups, grad_of, attach, keep=keep)

    def expand(self, steps):
        """Steps over stages as steps over values: a side value computed just before or just
        after its stage's value (see `of`), and freed with it; kept side values
        (`with_kept_sides`) at the stage's first compute only, and freed after their reader."""
        if not self.side:
            return steps
        out, done = [], set()
        for kind, v in steps:
            s, first = self.side.get(v, (None, False))
            if s is None or (s in self.keep and (kind != COMPUTE or v in done)):
                out.append((kind, v))  # a kept side value stays when its stage is freed or recomputed
            elif kind == COMPUTE:
                done.add(v)
                out += [(COMPUTE, s), (COMPUTE, v)] if first else [(COMPUTE, v), (COMPUTE, s)]
            else:
                out += [(FREE, v), (FREE, s)]
            if kind == COMPUTE:
                out += [(FREE, r) for r in self.freed_after.get(v, ())]
        return out

    @property
    def backward_cost(self):
        """Every schedule runs each gradient node once: the cost the DP leaves out."""
        return sum(self.ix.cost[b] for g in self.groups[1:] for b in g)

    def sizes(self, workspace=False):
        """The values' sizes, which set the slot unit; with `workspace`, also the figures that
        count workspace (whose odd sizes must not shrink the unit: they are rounded instead)."""
        more = self.wsx + self.wsx_first + self.extra if workspace else []
        return [s for s in self.x + self.gsz + self.reserve + more if s > 0]


def _unit(sizes, budget, max_slots=None):
    """Slot size: the gcd of the sizable values (a scalar loss must not force 4-byte slots), made
    coarser when the budget would need more than `max_slots` (MAX_SLOTS) slots."""
    max_slots = max_slots or MAX_SLOTS
    if not sizes:
        return 1
    largest = max(sizes)
    big = [s for s in sizes if s * 64 >= largest]
    unit = math.gcd(*big)
    if budget // unit > max_slots:
        unit = math.ceil(budget / max_slots)
    return unit


def solve_chain(chain, budget_managed, coarse=True, least=True):
    """Returns a Plan (steps None when infeasible), or None when the table would be too large (or,
    with `coarse` false, when its slots would have to be coarser than the sizes' common unit).
    `least`: also emit the schedule of the least peak the DP reaches (notes min_steps).

    Sizes are rounded up to slots, so the plan always fits. When some size is not a whole number
    of slots, the DP runs again with sizes rounded down: a relaxation whose cost bounds every
    schedule's from below. Equal costs prove the plan optimal to the byte."""
    start = time.perf_counter()
    sizes = chain.sizes()
    L = chain.L
    if (chain.keep or _period(chain) is None) and (MAX_WORK // (L * (L + 1) * (L + 2) // 6) < 4 or
                                                   L * (L + 1) // 2 > MAX_ROWS):
        # every pair its own row: told before the L^2 rows are listed (10,000 layers: 7 GB), and
        # before a Python step per row runs (600 layers: 180,000 rows, a minute, 4 slots)
        return None
    lay = _Layout(chain)
    # the DP's work is (split points) x (slots) over all rows: fewer, coarser slots on long chains
    splits = sum(j - i for i, j in lay.pairs)
    max_slots = min(MAX_SLOTS, int(MAX_WORK // splits))
    if max_slots < 4:
        return None
    unit = _unit(sizes, budget_managed, max_slots)
    S = int(budget_managed // unit)
    if 2 * lay.n * (S + 1) > MAX_CELLS:
        return None
    rounded = any(s % unit for s in chain.sizes(workspace=True))
    if not coarse and unit > _unit(sizes, 0):
        return None  # slots coarser than the sizes: left to a planner that needs none (see coarse)
    # Values smaller than a slot (a scalar loss and its gradient) take no slot: their bytes are set
    # aside from the budget instead (S_up slots are then safe), and a plan for a slot or two more
    # is also taken when its real peak, walked byte by byte, still fits.
    tiny = sum(v for v in chain.x + chain.gsz if 0 < v < unit) + max([v for v in chain.extra if v < unit], default=0)
    S_up = int((budget_managed - tiny) // unit)
    T, C, lay, x = _table(chain, unit, S + 2, lambda v: 0 if v < 1 else math.ceil(v))
    top = lay.key(0, chain.L)
    finite = np.isfinite(T[0, top])
    plan = Plan("budget", None, solver="chain-dp")
    for m in range(S + 2, max(S_up, 0) - 1, -1):
        if finite[m]:
            steps = []
            _emit(chain, C, lay, x, steps, 0, chain.L, 0, m)
            if m <= S_up or peak_managed(chain.ix, steps) <= budget_managed:
                plan.steps, cost = steps, T[0, top, m]
                break
    feasible = np.flatnonzero(finite)
    min_managed = min_steps = None
    if len(feasible) and least:  # the least peak's schedule, for smallest_peak
        min_steps = []
        _emit(chain, C, lay, x, min_steps, 0, chain.L, 0, int(feasible[0]))
        min_managed = peak_managed(chain.ix, min_steps)
    lower, min_lower = None, min_managed
    if rounded:
        T2, _, _, _ = _table(chain, unit, S, math.floor)
        lower = T2[0, top, S]
        lf = np.flatnonzero(np.isfinite(T2[0, top]))
        min_lower = int(lf[0] * unit) if len(lf) else None
    exact = plan.steps is not None and (not rounded or lower == cost) and not chain.side
    exact_min = min_managed is not None and min_lower == min_managed and not chain.side
    if exact or plan.steps is None:
        plan.solver = "chain-dp"
    else:  # exact over a narrower family: stages with their side values, or slots rounded
        plan.solver = "chain-dp (residuals kept)" if chain.keep else \
            "chain-dp (rounded)" if rounded else "chain-dp (residuals with their layers)"
    if plan.steps is not None:
        if exact or (rounded and not chain.side):
            plan.lower_bound = float((cost if exact else lower) + chain.backward_cost)
        plan.notes["dp_cost"] = float(cost)
    plan.notes.update(exact=bool(exact), unit_bytes=int(unit), slots=S, min_managed=min_managed,
                      min_exact=bool(exact_min), min_steps=min_steps)
    plan.solve_time_s = time.perf_counter() - start
    return plan


def peak_managed(ix, steps):
    """The peak the budget bounds: each step's workspace counted while it runs."""
    live = peak = 0
    for kind, x in steps:
        if kind == COMPUTE:
            peak = max(peak, live + ix.ram[x] + ix.ws[x])
            live += ix.ram[x]
        else:
            live -= ix.ram[x]
    return peak


class _Layout:
    """Which table row holds subproblem (i, j). In general every pair has its own row. When the
    layers repeat with a short period p (Revolve's uniform chain: p = 1; linear, relu, linear,
    ...: p = 2) between the first stage (which reads the resident input) and a short tail (the
    loss), Opt(i, j) for 1 <= i < j <= l' depends only on i mod p and j - i: those subproblems
    share p * l' rows, the ones that start at the input or end in the tail keep their own, and the
    DP does O(l^2) work instead of O(l^3)."""

    def __init__(self, chain):
        L = self.L = chain.L
        self.periodic = False
        found = None if chain.keep else _period(chain)  # reserve[j] depends on j itself
        if found is None:
            self.n = (L + 1) ** 2
            self.pairs = [(i, i + d) for d in range(1, L + 1) for i in range(0, L - d + 1)]
            return
        p, lp = found
        self.periodic, self.p, self.lp = True, p, lp
        self.a = p * lp  # rows (0, j) for j <= l'
        self.b = self.a + lp + 1  # rows (i, j) for j > l', every i
        self.n = self.b + (L - lp) * (L + 1)
        self.pairs = []
        for d in range(1, L + 1):
            self.pairs += [(i0, i0 + d) for i0 in range(1, p + 1) if i0 + d <= lp]
            if d <= lp:
                self.pairs.append((0, d))
            self.pairs += [(j - d, j) for j in range(lp + 1, L + 1) if j - d >= 0]

    def key(self, i, j):
        """The row of (i, j): `left` for one k, in plain integers (it is called per subproblem)."""
        if not self.periodic:
            return i * (self.L + 1) + j
        if j > self.lp:
            return self.b + (j - self.lp - 1) * (self.L + 1) + i
        return self.a + j if i == 0 else ((i - 1) % self.p) * self.lp + (j - i - 1)

    def right(self, ks, j):
        """Rows of (k, j) for every k in ks (all k >= 1)."""
        if not self.periodic:
            return ks * (self.L + 1) + j
        if j > self.lp:
            return self.b + (j - self.lp - 1) * (self.L + 1) + ks
        return ((ks - 1) % self.p) * self.lp + (j - ks - 1)

    def left(self, i, ks):
        """Rows of (i, k) for every k in ks (all k > i)."""
        if not self.periodic:
            return i * (self.L + 1) + ks
        inner = self.a + ks if i == 0 else ((i - 1) % self.p) * self.lp + (ks - i - 1)
        return np.where(ks > self.lp, self.b + (ks - self.lp - 1) * (self.L + 1) + i, inner)


def _period(chain, periods=4, tails=4):
    """(p, l'): the shortest period p of the layers between stage 2 and stage l' (the last before a
    tail of at most `tails` stages), values a_1..a_l' included; None when the chain has none worth
    sharing (fewer than two periods)."""
    l = chain.l
    sig = [None] + [(chain.c[k], chain.gsz[k], chain.extra[k], chain.wsx[k], chain.needs_out[k], chain.needs_in[k])
                    for k in range(1, chain.L + 1)]
    for tail in range(0, min(tails, l) + 1):
        lp = l - tail
        for p in range(1, periods + 1):
            if lp < 2 * p + 2:
                break
            if all(sig[k] == sig[k + p] for k in range(2, lp - p + 1)) and \
                    all(chain.x[k] == chain.x[k + p] for k in range(1, lp - p + 1)):
                return p, lp
    return None


def _table(chain, unit, S, rnd, S_up=None):
    """The DP table over (h, subproblem row, m slots) and its choices, with sizes rounded by
    `rnd`; `_Layout` says which row holds which (i, j)."""
    S = S if S_up is None else max(S_up, 0)
    lay = _Layout(chain)

    def slots(b):
        return int(rnd(b / unit))

    x = [slots(v) for v in chain.x]
    R = [slots(v) for v in chain.reserve]
    done = np.array([slots(v) for v in chain.computed])
    wfirst = np.array([slots(v) for v in chain.wsx_first])
    w = [slots(v) for v in chain.wsx]
    gs = [slots(v) for v in chain.gsz]
    ex = [slots(v) for v in chain.extra]
    c = chain.c
    nin, nout = chain.needs_in, chain.needs_out
    INF = np.inf
    m = np.arange(S + 1)
    T = np.full((2, lay.n, S + 1), INF)
    C = np.full((2, lay.n, S + 1), -9, dtype=np.int32)  # -1 base, -2 direct, k - i split
    csum = np.concatenate([[0.0], np.cumsum(c[1:])])  # csum[k] = c_1 + ... + c_k
    nout_k = np.array(nout, dtype=bool)
    xa, wa = np.array(x), np.array(w)

    for i, j in lay.pairs:
        d = j - i
        row = lay.key(i, j)
        # P[k] for k in (i, j): the advance's peak above a_i from a_i to a_k
        if d > 1:
            ks = np.arange(i + 1, j)
            # in the first forward pass (j = L) the kept side values computed so far are live,
            # stage by stage; elsewhere all those still to be read are (Rj, below)
            first = j == chain.L and chain.keep
            P = np.maximum.accumulate(np.where(ks - 1 > i, xa[ks - 1], 0) + xa[ks] +
                                      (wfirst[ks] + done[ks] if first else wa[ks]))
            Rj = 0 if first else R[j]
            right, left = lay.right(ks, j), lay.left(i, ks)
            # the advance's cost and the left part, the same for both h: after the right part,
            # a_k stays live only if group k reads it
            reads = nout_k[i + 1:j]
            after = _rows(T[1], left) if reads.all() else _rows(T[0], left) if not reads.any() else \
                np.where(reads[:, None], _rows(T[1], left), _rows(T[0], left))
            rest = (csum[i + 1:j] - csum[i])[:, None] + after
            # the advance to a_k needs base + P[k] slots; P never falls, so the rows with one
            # threshold are a run: a slice each where there are few (a uniform chain has two)
            cuts = np.flatnonzero(np.diff(P)) + 1
            runs = list(zip(np.concatenate([[0], cuts]), np.concatenate([cuts, [len(P)]]))) if len(cuts) < 16 else None
        # a_j is live going in (h = 1) only in a left part ending where group j reads a_j, and in
        # that part's right parts, which end at the same j: elsewhere that half of the table is
        # never read (a uniform chain's groups read only a_{j-1}: half the work)
        for h in ((0, 1) if nout[j] else (0,)):
            base = x[i] + gs[j] + (x[j] if h else 0)
            best = np.full(S + 1, INF)
            choice = np.full(S + 1, -9, dtype=np.int32)
            if d == 1:
                A = x[j] if nout[j] else 0
                peak = max(base + (x[j] + w[j] if nout[j] and not h else 0), x[i] + gs[j] + A + ex[j])
                cost = c[j] if nout[j] and not h else 0.0
                ok = m >= peak + R[j]
                best[ok], choice[ok] = cost, -1
            else:
                if not nin[j] and (h or not nout[j]):
                    A = x[j] if nout[j] else 0
                    peak = max(base, x[i] + gs[j] + A + ex[j])
                    cand = np.where(m >= peak + R[j], T[0, lay.key(i, j - 1)], INF)
                    better = cand < best
                    best[better], choice[better] = cand[better], -2
                # split at every k at once: rows are k, columns are m (the right part runs with
                # a_i's slots taken)
                total = np.empty((len(ks), S + 1))
                total[:, :x[i]] = INF
                if x[i] <= S:
                    np.add(rest[:, x[i]:], _rows(T[h], right)[:, :S + 1 - x[i]], out=total[:, x[i]:])
                if runs is not None:
                    for a, b in runs:
                        total[a:b, :max(0, min(S + 1, base + Rj + int(P[a])))] = INF
                else:
                    total[m[None, :] < (base + Rj + P)[:, None]] = INF
                kbest = np.argmin(total, axis=0)
                cand = total[kbest, m]
                better = cand < best
                best[better], choice[better] = cand[better], (ks[kbest] - i)[better]  # k relative to i: rows are shared
            T[h, row], C[h, row] = best, choice

    return T, C, lay, x


def _rows(A, idx):
    """A[idx] for a vector of row numbers: a view where they run by one, up or down (rows shared
    by a periodic layout do), which spares the copy of a gather."""
    n = len(idx)
    if n and idx[-1] - idx[0] == n - 1 and (n < 3 or idx[1] - idx[0] == 1) and (np.diff(idx) == 1).all():
        return A[idx[0]:idx[-1] + 1]
    if n and idx[0] - idx[-1] == n - 1 and (np.diff(idx) == -1).all():
        return A[idx[-1]:idx[0] + 1][::-1]
    return A[idx]


def _emit(ch, C, lay, x, steps, i, j, h, m):
    """The schedule of subproblem (i, j, h, m) from the recorded choices. A stack of tasks rather
    than recursion: a long chain nests a split per layer."""
    fwd = ch.fwd
    tasks = [(i, j, h, m)]
    while tasks:
        task = tasks.pop()
        if task[0] == FREE:
            steps.append(task)
            continue
        i, j, h, m = task
        choice = int(C[h, lay.key(i, j), m])
        if choice == -9:
            raise AssertionError(f"chain DP: no choice recorded for ({i}, {j}, {h}, {m})")
        if choice in (-1, -2):
            live_out = bool(h)
            if ch.needs_out[j] and not h:
                steps.append((COMPUTE, fwd[j - 1]))
                live_out = True
            if live_out and not ch.needs_out[j]:
                steps.append((FREE, fwd[j - 1]))
                live_out = False
            for b in ch.groups[j]:
                steps.append((COMPUTE, b))
                if not ch.ix.breaders[b]:
                    steps.append((FREE, b))
            if j < ch.L and ch.grad[j] is not None:
                steps.append((FREE, ch.grad[j]))
            if live_out:
                steps.append((FREE, fwd[j - 1]))
            if choice == -2:
                tasks.append((i, j - 1, 0, m))
            continue
        k = i + choice  # splits are recorded relative to i (see _Layout)
        for t in range(i + 1, k + 1):
            steps.append((COMPUTE, fwd[t - 1]))
            if t - 1 > i:
                steps.append((FREE, fwd[t - 2]))
        # run (k, j) first, then (i, k): pushed in reverse
        if ch.needs_out[k]:
            tasks.append((i, k, 1, m))
        else:
            tasks.append((i, k, 0, m))
            tasks.append((FREE, fwd[k - 1]))
        tasks.append((k, j, h, m - x[i]))
    steps[:] = ch.expand(steps)
