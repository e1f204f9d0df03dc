"""Region plans PyTorch can execute, from the profile `ckpt import` recorded (no torch needed).

PyTorch's selective checkpointing has one level: a unit (a submodule, at any depth: `layers.3`,
`layers.3.attn`; a run of consecutive nn.Sequential items; or the whole model) is either left
alone or wrapped in a non-reentrant checkpoint whose policy keeps a chosen set of op outputs. A wrapped unit holds its
arguments and the outputs it keeps; in the backward it runs its forward again, every op whose
output is not kept, up to the op at which the last tensor it packed for backward is back (the
checkpoint's early stop: an op packs its inputs before it runs, so a final matrix product whose
input is packed is not recomputed).

The choice is one exact optimisation (a MILP under HiGHS, through scipy): binaries w[u] (unit u
wrapped), s[u, o] (u's policy keeps op o's output), and per storage h (held at the end of the
forward), with
    at most one wrapped unit over each op (units nest or overlap),   s[u, o] <= w[u],
    h >= 1 - sum of w over the units covering each region that packs the storage for backward,
    h >= w[u] for u's argument storages,   h >= s[u, o] for the storages o makes,
    sum of bytes x h <= the limit;
minimise the recompute, sum over units of cost(recomputed ops) x w[u] - cost(o) x s[u, o]. Held
bytes are counted by unique storage, as PyTorch holds them, so a kept output that is held anyway
(the next block's input) costs nothing. HiGHS is given no time limit (a plan never depends on the
clock) but a node limit, which is deterministic; where it stops the search, the plan is the best
found, still exact in its prediction.

The whole model as one unit is what lets a region plan do what torch.compile's min-cut
partitioner does: keep the matrix products' outputs and recompute everything else from them, with
no block boundary held; smaller units win where a block's own ops are all that must be recomputed.
"""

from ..errors import BudgetError

NODE_LIMIT = 5000


def cost(o):
    return o["flops"] + o["bytes"]  # FLOPs plus one unit per byte written, as ckpt's cost model


ROOT_NAME = "<model>"  # the unit that wraps the whole module: its forward is recomputed in one go


def inside(region, member):
    """Whether an op of `region` runs inside module `member` ("" is the root module)."""
    return member == "" or region == member or region.startswith(member + ".")


class Unit:
    """Members (module names, one or a Sequential run), the ops they run in forward order,
    and which of them a checkpoint around the unit recomputes."""

    def __init__(self, members, scope, ops, last, written=frozenset(), wrappable=True, spans=None):
        self.members, self.scope, self.ops = tuple(members), frozenset(scope), ops
        self.wrappable = wrappable
        self.name = ROOT_NAME if members == ("",) else members[0] if len(members) == 1 else \
            f"{members[0]}..{members[-1]}"
        if spans is None:
            self.rerun = [o for o in ops if last is None or o["i"] < last]
        else:  # per call (start, just past its last pack): each call's recompute stops on its own
            self.rerun = [o for o in ops if any(a <= o["i"] < b for a, b in spans)]
        self.keyed = {}  # op index -> (member, aten overload, occurrence within the member's call)
        for m in members:
            counts = {}
            for o in ops:
                if inside(o["region"], m):
                    k = counts.get(o["op"], 0)
                    counts[o["op"]] = k + 1
                    self.keyed[o["i"]] = (m, o["op"], k)
        self.full_cost = sum(cost(o) for o in self.rerun)
        # only an op that would be recomputed and makes a storage is worth keeping, and only one
        # whose output no later in-place op writes: the checkpoint's cache would hand the written
        # tensor back to the recompute (PyTorch refuses: "cached ... has been mutated")
        # A member called more than once (an RNN cell) is one checkpoint per call, each counting
        # its ops from 0: a kept op would be kept in every call, which one binary per op does not
        # model, so such a unit is checkpointed whole.
        self.keepable = [o for o in self.rerun if o["made"] and cost(o) > 0 and o["i"] not in written] \
            if spans is None or len(spans) == 1 else []


class RegionProfile:
    """The profile of one imported model: storages, who holds them, the ops, the candidate units."""

    def __init__(self, prof, regions, sequential):
        self.bytes = list(prof["storages"])
        for s in prof.get("output", []):
            self.bytes[s] = 0  # the loss is never counted as held (the census leaves it out)
        self.alive = list(prof["alive"])
        self.holders = {int(k): set(v) for k, v in prof["holders"].items()}
        self.inputs = {r: set(v) for r, v in prof["inputs"].items()}
        self.ops = [dict(o, i=i) for i, o in enumerate(prof["ops"])]
        self.last_pack = prof.get("last_pack")  # None in a profile from before early stop was modelled
        self.calls = prof.get("calls")  # per region, per call: [first op, past its last pack, past its last op]
        # in-place writes (`relu_`, `out += x`): storage -> positions of the ops that write it
        self.writes = {}
        for o in self.ops:
            for s in o.get("mutated", ()):
                self.writes.setdefault(s, []).append(o["i"])
        # ops whose output a later op writes in place: no policy may keep them
        self.written = frozenset(o["i"] for o in self.ops if any(j > o["i"] for s in o["made"]
                                                                 for j in self.writes.get(s, ())))
        self.top = [r for r in regions if r in self.inputs]
        self.regions = self.top + [r for r in prof.get("nested", []) if r in self.inputs]
        self.units = [self._unit((r,)) for r in self.regions]
        if self.last_pack is not None:
            # the whole model as one unit (its arguments are the inputs, resident anyway): what
            # reaches below every block's input, the least memory a checkpoint can hold
            self.inputs.setdefault("", set())
            self.units.append(self._unit(("",)))
        for run in _sequential_runs(self.top, set(sequential)):
            self.units += [self._unit(run[i:j]) for i in range(len(run)) for j in range(i + 2, len(run) + 1)]

    def _unit(self, members):
        scope = {r for r in self.regions + [""] for m in members if inside(r, m)}
        ops = [o for o in self.ops if o["region"] in scope]
        last = None
        if self.last_pack is not None:
            last = max((self.last_pack[r] for r in scope if r in self.last_pack), default=0)
        # a checkpoint saves its arguments with their version: one written in place from the unit
        # on (ReLU(inplace=True) wrapped alone, or a later `x += ...`) fails the backward
        first = ops[0]["i"] if ops else len(self.ops)
        wrappable = not any(j >= first for s in self.inputs.get(members[0], ()) for j in self.writes.get(s, ()))
        spans = None
        if self.calls is not None and all(m in self.calls for m in members):
            per = [self.calls[m] for m in members]
            if any(len(p) != len(per[0]) for p in per):
                wrappable = False  # Sequential items called unevenly: no one segment runs them
            else:
                spans = [(per[0][j][0], max(p[j][1] for p in per)) for j in range(len(per[0]))]
        return Unit(members, scope, ops, last, self.written, wrappable, spans)

    def unit(self, members):
        return next(u for u in self.units if u.members == tuple(members))

    # ---- evaluating a choice exactly: {unit: [ops kept]} ----
    def held(self, choice):
        wrapped = set().union(*(u.scope for u in choice)) if choice else set()
        held = {s for s in self.alive if not self.holders.get(s) or self.holders[s] - wrapped}
        for u, kept in choice.items():
            held |= self.inputs[u.members[0]]  # the checkpoint keeps its arguments
            for o in kept:
                held |= set(o["made"])
        return held

    def held_bytes(self, choice):
        return sum(self.bytes[s] for s in self.held(choice))

    @staticmethod
    def unit_cost(u, kept):
        return u.full_cost - sum(cost(o) for o in kept)

    @staticmethod
    def unit_flops(u, kept):
        """The FLOPs alone (what torch.utils.flop_counter counts) of the unit's recompute."""
        return sum(o["flops"] for o in u.rerun) - sum(o["flops"] for o in kept)

    def recompute(self, choice):
        return sum(self.unit_cost(u, kept) for u, kept in choice.items())

    # ---- the optimisation ----
    def solve(self, limit=None, least=False):
        """The choice of least recompute whose held bytes are <= limit (least=True: the choice of
        fewest held bytes, the least recompute among those); None where nothing fits."""
        import numpy as np
        from scipy.optimize import Bounds, LinearConstraint, milp
        from scipy.sparse import coo_matrix

        from .milp import quiet_stdout
        units = [u for u in self.units if u.wrappable and (u.rerun or self.inputs[u.members[0]])]
        col = {}  # ('w', ui) | ('s', op index) | ('h', storage) -> column
        for ui, u in enumerate(units):
            col[("w", ui)] = len(col)
        # one "kept" binary per op, shared by the units that may keep it (at most one of them is
        # wrapped): a far smaller model than one per (unit, op)
        keepers = {}
        for ui, u in enumerate(units):
            for o in u.keepable:
                keepers.setdefault(o["i"], []).append(ui)
        for i in sorted(keepers):
            col[("s", i)] = len(col)
        covering = {}
        for ui, u in enumerate(units):
            for r in u.scope:
                covering.setdefault(r, []).append(ui)
        fixed = set()  # storages held whatever is wrapped
        for s in self.alive:
            hs = self.holders.get(s)
            if not hs or any(r not in covering for r in hs):
                fixed.add(s)
        variable = {s for s in self.alive if s not in fixed}
        for u in units:
            variable |= self.inputs[u.members[0]] - fixed
        for i in keepers:
            variable |= set(self.ops[i]["made"]) - fixed
        for s in sorted(variable):
            col[("h", s)] = len(col)
        rows, cols, vals, lo, hi = [], [], [], [], []

        def row(terms, lb, ub):
            r = len(lo)
            for c, v in terms:
                rows.append(r)
                cols.append(c)
                vals.append(v)
            lo.append(lb)
            hi.append(ub)
        for r, uis in covering.items():
            if len(uis) > 1:
                row([(col[("w", ui)], 1) for ui in uis], -np.inf, 1)
        for s in self.alive:
            if s in variable:
                # freed only if each region that packs it is inside a wrapped unit that does not
                # take it as an argument (which would hold it): tighter than "inside a wrapped
                # unit", and the relaxation is the better for it
                for r in sorted(self.holders[s]):
                    row([(col[("h", s)], 1)] + [(col[("w", ui)], 1) for ui in covering[r]
                                                if s not in self.inputs[units[ui].members[0]]], 1, np.inf)
        for ui, u in enumerate(units):
            for s in sorted(self.inputs[u.members[0]] - fixed):
                row([(col[("h", s)], 1), (col[("w", ui)], -1)], 0, np.inf)
        for i, uis in sorted(keepers.items()):
            row([(col[("s", i)], 1)] + [(col[("w", ui)], -1) for ui in uis], -np.inf, 0)
            for s in sorted(set(self.ops[i]["made"]) - fixed):
                row([(col[("h", s)], 1), (col[("s", i)], -1)], 0, np.inf)
        n = len(col)
        recompute = np.zeros(n)
        held = np.zeros(n)
        integer = np.zeros(n)
        for key, c in col.items():
            if key[0] == "w":
                u = units[key[1]]
                recompute[c] = u.full_cost + 1e-3  # a wrap that saves nothing is not made
                integer[c] = 1
            elif key[0] == "s":
                recompute[c] = -cost(self.ops[key[1]])
                integer[c] = 1
            else:
                held[c] = self.bytes[key[1]]
        const = sum(self.bytes[s] for s in fixed)
        if least:
            total = float(recompute[recompute > 0].sum()) + 1.0
            objective = held + recompute / total  # fewest bytes first, then the least recompute
        else:
            if limit is None:
                return {}
            if limit < const:
                return None
            row([(c, held[c]) for c in range(n) if held[c]], -np.inf, limit - const)
            objective = recompute
        a = coo_matrix((vals, (rows, cols)), shape=(len(lo), n)).tocsr()
        with quiet_stdout():  # HiGHS may print even with disp off: keep `--json` output clean
            res = milp(objective, constraints=LinearConstraint(a, lo, hi) if lo else (), integrality=integer,
                       bounds=Bounds(np.zeros(n), np.ones(n)),
                       options={"node_limit": NODE_LIMIT, "disp": False, "mip_rel_gap": 1e-6})
        if res.x is None:
            return None
        x = res.x
        choice = {}
        for ui, u in enumerate(units):
            if x[col[("w", ui)]] > 0.5:
                choice[u] = [o for o in u.keepable if x[col[("s", o["i"])]] > 0.5]
        if limit is not None and not least and self.held_bytes(choice) > limit:
            return None  # the solver's tolerance let a byte through: never emit a plan that does not fit
        return choice


def _sequential_runs(regions, sequential):
    """Maximal runs of consecutive items (`blocks.3`, `blocks.4`, ...) of one nn.Sequential."""
    def parent(r):
        head, _, tail = r.rpartition(".")
        return head if tail.isdigit() and head in sequential else None
    runs, cur = [], []
    for r in regions:
        if cur and parent(r) is not None and parent(r) == parent(cur[-1]) and \
                int(r.rpartition(".")[2]) == int(cur[-1].rpartition(".")[2]) + 1:
            cur.append(r)
        else:
            if len(cur) > 1:
                runs.append(cur)
            cur = [r] if parent(r) is not None else []
    if len(cur) > 1:
        runs.append(cur)
    return runs


def plan_regions(rp, limit):
    """(choice, least held bytes) for a RegionProfile: the least-recompute choice whose held bytes
    fit `limit` (None: no limit, nothing wrapped); raises BudgetError (min_peak = the least held
    bytes) where none fits."""
    lowest = rp.solve(least=True)
    least = rp.held_bytes(lowest if lowest is not None else {})
    choice = rp.solve(limit)
    if choice is None:
        raise BudgetError(f"no region plan holds <= {limit} bytes: the least is {least}", min_peak=least)
    return choice, least
