"""The Python API: the functions the command line itself calls, under short names.

    import ckpt
    m = ckpt.load("configs/gpt_small.yaml")          # a YAML config, a cost graph (.json), or an imported model
    p = ckpt.plan(m, budget="0.6x")                   # least recompute whose peak fits (also "512MiB" or bytes)
    sim = ckpt.simulate(m, p)                         # predicted peak and cost, no array allocated
    r = ckpt.run(m, p)                                # one measured step: loss, gradients, peaks, time
"""

import types

from .errors import ConfigError


def load(path, overrides=None, dtype=None):
    """A model: YAML config (what `ckpt import` writes included) or cost graph (plan only)."""
    from .session import load_model
    return load_model(path, overrides, dtype)


def plan(model, budget=None, strategy=None, time_limit=10.0):
    """A Plan (its `.steps` are the schedule). `budget`: bytes, "512MiB" or "0.6x" of store-all's
    peak; with a budget the strategy defaults to `budget`, without one to `store-all`."""
    from .plan import plan as make_plan
    from .sizes import parse_budget
    if isinstance(budget, str):
        # a fraction of store-all's peak with workspace, as on the command line
        budget = parse_budget(budget, make_plan(model.joint, "store-all", ix=model.index)[1].peak_ws)
    strategy = strategy or ("budget" if budget is not None else "store-all")
    return make_plan(model.joint, strategy, budget, time_limit=time_limit, ix=model.index)[0]


def simulate(model, plan):
    """The simulator's walk of the plan: `.peak`, `.resident`, `.peak_managed`, `.cost`, `.time`
    (the predicted step time: cost and cache term), `.recomputes`."""
    from .simulate import simulate as sim
    return sim(model.joint, plan.steps)


def run(model, plan, steps=1, device="cpu"):
    """Run the plan for real (numpy, or cupy with device="cuda"): a RunResult with `.loss`,
    `.grads`, `.measured_managed`, `.resident`, `.allocator_peak` and `.time_s`."""
    from .backend import get_backend
    from .session import require_model, run_plan
    require_model(model, "run")
    if not hasattr(plan, "steps"):
        raise ConfigError("run takes a Plan from ckpt.plan(...)")
    return run_plan(model, plan.steps, get_backend(device), n_steps=steps)


# `ckpt.plan` and `ckpt.simulate` are also modules (ckpt/plan/, ckpt/simulate.py), which Python
# binds as attributes of `ckpt` once anything imports them; so that `ckpt.plan(model, ...)` and
# `ckpt.simulate(model, plan)` still call the functions above, those modules are made callable (a
# module may change its class to a ModuleType subclass). Their own contents are untouched.
class _CallableModule(types.ModuleType):
    def __call__(self, *args, **kwargs):
        return _CALLS[self.__name__](*args, **kwargs)


_CALLS = {"ckpt.plan": plan, "ckpt.simulate": simulate}


def callable_module(name):
    import importlib
    mod = importlib.import_module(name)
    if not isinstance(mod, _CallableModule):
        mod.__class__ = _CallableModule
    return mod


for _name in _CALLS:
    callable_module(_name)
