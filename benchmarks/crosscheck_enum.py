"""Cross-check svigraph's enumeration against Pyro 1.9.2 on small discrete models.

Every model is one function of the library (``L``: ``svigraph`` or ``pyro``) and its
distributions module (``D``), with fixed data and fixed initial parameters, so the same math
runs in both. For each model this compares

* ``TraceEnum_ELBO(max_plate_nesting=...).differentiable_loss(model, guide, ...)`` and the
  gradient wrt every parameter (the unconstrained leaves) to relative 1e-5, in float64;
  where Pyro refuses a model (an enumerated global variable over a subsampled plate), the
  svigraph value is compared with the exact formula instead;
* ``infer_discrete(temperature=0)``: the MAP equals Pyro's MAP and the brute-force argmax;
* ``infer_discrete(temperature=1)``: the frequency of each value of each variable over 4000
  draws is within 4 standard errors of the exact posterior marginal (brute force).

Pyro is imported only here (svigraph never imports it). Prints one line per check and exits
non-zero if any check fails.

    .venv/bin/python benchmarks/crosscheck_enum.py
"""

from __future__ import annotations

import functools
import itertools
import math
import sys
import time

import torch

import svigraph as sg
from svigraph import distributions as sgdist

assert "pyro" not in sys.modules, "svigraph must not import pyro"

import pyro  # noqa: E402  (after the check above)
import pyro.distributions as pdist  # noqa: E402
import pyro.infer  # noqa: E402
import pyro.poutine  # noqa: E402

torch.set_default_dtype(torch.float64)
torch.set_num_threads(1)

RTOL = 1e-5
ENUM = {"enumerate": "parallel"}
SEQ = {"enumerate": "sequential"}
LIBS = {"svigraph": (sg, sgdist), "pyro": (pyro, pdist)}


def fixed(seed, *shape, simplex=False, scale=1.0):
    """A fixed tensor from its own seed (the same in every library and run)."""
    g = torch.Generator().manual_seed(seed)
    if simplex:
        return _dirichlet(g, shape)
    return scale * torch.randn(shape, generator=g)


def _dirichlet(g, shape):
    x = -torch.log(torch.rand(shape, generator=g))  # Exp(1): normalized, a flat Dirichlet
    return x / x.sum(-1, keepdim=True)


def simplex_param(L, D, name, seed, *shape):
    """Probabilities from a real-valued logits param: the libraries' simplex transforms
    differ (so would the gradients wrt the unconstrained leaves), softmax is the same."""
    return L.param(name, fixed(seed, *shape, simplex=True).log()).softmax(-1)


def real_param(L, name, seed, *shape, scale=1.0):
    return L.param(name, fixed(seed, *shape, scale=scale))


def no_guide(L, D, *args):
    pass


# ---- models (L, D, *args) ------------------------------------------------------------------

def nested_model(L, D, data, other):
    """Enumerated sites at three plate levels (global, outer, outer x inner) and a sibling
    top-level plate whose enumerated site reads the global one."""
    p_a = simplex_param(L, D, "p_a", 1, 2)
    p_b = simplex_param(L, D, "p_b", 2, 2, 3)
    p_c = simplex_param(L, D, "p_c", 3, 3, 2)
    p_d = simplex_param(L, D, "p_d", 4, 2, 2)
    locs = real_param(L, "locs", 5, 2, 2, scale=2.0)
    b_locs = real_param(L, "b_locs", 6, 3)
    a = L.sample("a", D.Categorical(p_a), infer=ENUM)
    with L.plate("outer", data.shape[0], dim=-2):
        b = L.sample("b", D.Categorical(p_b[a]), infer=ENUM)
        L.sample("ob", D.Normal(b_locs[b], 1.0), obs=data.sum(-1, keepdim=True))
        with L.plate("inner", data.shape[1], dim=-1):
            c = L.sample("c", D.Categorical(p_c[b]), infer=ENUM)
            L.sample("x", D.Normal(locs[a, c], 1.0), obs=data)
    with L.plate("other", other.shape[0], dim=-1):
        d = L.sample("d", D.Categorical(p_d[a]), infer=ENUM)
        L.sample("y", D.Normal(locs[d, a], 1.5), obs=other)


def tree_model(L, D, data):
    """A tree of discrete variables per datum under an enumerated global root:
    r -> a -> (b -> d -> obs_d, c -> obs_c)."""
    p_r = simplex_param(L, D, "p_r", 11, 2)
    p_a = simplex_param(L, D, "p_a", 12, 2, 3)
    p_b = simplex_param(L, D, "p_b", 13, 3, 2)
    p_c = simplex_param(L, D, "p_c", 14, 3, 2)
    p_d = L.param("p_d", fixed(15, 2).sigmoid(), constraint=D.constraints.unit_interval)
    locs_c = real_param(L, "locs_c", 16, 2, 2, scale=2.0)
    r = L.sample("r", D.Categorical(p_r), infer=ENUM)
    with L.plate("data", data.shape[0], dim=-1):
        a = L.sample("a", D.Categorical(p_a[r]), infer=ENUM)
        b = L.sample("b", D.Categorical(p_b[a]), infer=ENUM)
        c = L.sample("c", D.Categorical(p_c[a]), infer=ENUM)
        d = L.sample("d", D.Bernoulli(p_d[b]), infer=ENUM)
        L.sample("obs_d", D.Normal(2.0 * d - 1.0, 1.0), obs=data[:, 0])
        L.sample("obs_c", D.Normal(locs_c[c, r], 1.0), obs=data[:, 1])


def hmm_model(L, D, data, history=1):
    """A batch of sequences (T, N) in a plate; ``history`` 1 or 2 (second-order chain)."""
    K = 3
    init = simplex_param(L, D, "init", 21, K)
    trans = simplex_param(L, D, "trans", 22, K, K)
    trans2 = simplex_param(L, D, "trans2", 23, K, K, K) if history == 2 else None
    locs = real_param(L, "locs", 24, K, scale=2.0)
    scale = L.param("scale", torch.tensor(1.3), constraint=D.constraints.positive)
    with L.plate("seqs", data.shape[1], dim=-1):
        prev = prev2 = None
        for t in L.markov(range(data.shape[0]), history=history):
            if t == 0:
                probs = init
            elif history == 1 or t == 1:
                probs = trans[prev]
            else:
                probs = trans2[prev2, prev]
            x = L.sample(f"x_{t}", D.Categorical(probs), infer=ENUM)
            L.sample(f"y_{t}", D.Normal(locs[x], scale), obs=data[t])
            prev2, prev = prev, x


def guide_enum_model(L, D, data):
    """z global (guide-enumerated), w local continuous (guide: Delta or Normal), c local
    enumerated in the model."""
    p_z = simplex_param(L, D, "p_z", 31, 3)
    p_c = simplex_param(L, D, "p_c", 32, 3, 2)
    locs = real_param(L, "locs", 33, 3, scale=2.0)
    c_locs = real_param(L, "c_locs", 34, 2)
    z = L.sample("z", D.Categorical(p_z))
    with L.plate("data", data.shape[0], dim=-1):
        w = L.sample("w", D.Normal(locs[z], 1.0))
        c = L.sample("c", D.Categorical(p_c[z]), infer=ENUM)
        L.sample("x", D.Normal(w + c_locs[c], 0.7), obs=data)


def guide_enum_delta(L, D, data, how="parallel"):
    q_z = simplex_param(L, D, "q_z", 41, 3)
    q_loc = real_param(L, "q_loc", 42, 3, data.shape[0])
    z = L.sample("z", D.Categorical(q_z), infer={"enumerate": how})
    with L.plate("data", data.shape[0], dim=-1):
        L.sample("w", D.Delta(q_loc[z, torch.arange(data.shape[0])]))


def guide_enum_normal(L, D, data):
    q_z = simplex_param(L, D, "q_z", 41, 3)
    q_loc = real_param(L, "q_loc", 42, 3, data.shape[0])
    q_scale = L.param("q_scale", torch.full((data.shape[0],), 0.5),
                      constraint=D.constraints.positive)
    z = L.sample("z", D.Categorical(q_z), infer=ENUM)
    with L.plate("data", data.shape[0], dim=-1):
        L.sample("w", D.Normal(q_loc[z, torch.arange(data.shape[0])], q_scale))


def local_guide_enum_model(L, D, data):
    """Guide-enumerated local variable in a plate, with a Delta site reading it, and a model
    enumerated variable inside the same plate."""
    p_z = simplex_param(L, D, "p_z", 51, 2)
    p_c = simplex_param(L, D, "p_c", 52, 2, 3)
    locs = real_param(L, "locs", 53, 2, scale=2.0)
    c_locs = real_param(L, "c_locs", 54, 3)
    with L.plate("data", data.shape[0], dim=-1):
        z = L.sample("z", D.Categorical(p_z))
        w = L.sample("w", D.Normal(locs[z], 1.0))
        c = L.sample("c", D.Categorical(p_c[z]), infer=ENUM)
        L.sample("x", D.Normal(w + c_locs[c], 0.8), obs=data)


def local_guide_enum_guide(L, D, data):
    q_z = simplex_param(L, D, "q_z", 55, data.shape[0], 2)
    q_loc = real_param(L, "q_loc", 56, 2, data.shape[0])
    with L.plate("data", data.shape[0], dim=-1):
        z = L.sample("z", D.Categorical(q_z), infer=ENUM)
        L.sample("w", D.Delta(q_loc[z, torch.arange(data.shape[0])]))


def sibling_mixed_model(L, D, data, other, with_d=False):
    """Guide-enumerated z and model-enumerated c | z in plate p1, then a sibling plate p2 at
    the same dim (with its own model-enumerated d when ``with_d``)."""
    p_z = simplex_param(L, D, "p_z", 57, 2)
    p_c = simplex_param(L, D, "p_c", 58, 2, 3)
    locs = real_param(L, "locs", 59, 3, 2, scale=2.0)
    with L.plate("p1", data.shape[0], dim=-1):
        z = L.sample("z", D.Categorical(p_z))
        c = L.sample("c", D.Categorical(p_c[z]), infer=ENUM)
        L.sample("x", D.Normal(locs[c, z], 1.0), obs=data)
    with L.plate("p2", other.shape[0], dim=-1):
        d = L.sample("d", D.Categorical(p_c[1]), infer=ENUM) if with_d else 1
        L.sample("y", D.Normal(locs[d, 0], 1.5), obs=other)


def sibling_mixed_guide(L, D, data, other):
    q_z = simplex_param(L, D, "q_z", 60, data.shape[0], 2)
    with L.plate("p1", data.shape[0], dim=-1):
        L.sample("z", D.Categorical(q_z), infer=ENUM)


def factorial_hmm(L, D, data):
    """Two independent chains in one markov loop, both read by each observation."""
    ta = simplex_param(L, D, "ta", 91, 2, 2)
    tb = simplex_param(L, D, "tb", 92, 3, 3)
    locs = real_param(L, "locs", 93, 2, 3, scale=2.0)
    with L.plate("seqs", data.shape[1], dim=-1):
        a = b = 0
        for t in L.markov(range(data.shape[0])):
            a = L.sample(f"a_{t}", D.Categorical(ta[a]), infer=ENUM)
            b = L.sample(f"b_{t}", D.Categorical(tb[b]), infer=ENUM)
            L.sample(f"y_{t}", D.Normal(locs[a, b], 1.0), obs=data[t])


def config_model(L, D, data):
    """config_enumerate marks s (Bernoulli, global) and k (local); loc has no finite support."""
    p_s = L.param("p_s", torch.tensor(0.3), constraint=D.constraints.unit_interval)
    weights = simplex_param(L, D, "weights", 61, 2, 3)
    locs = real_param(L, "locs", 62, 3, scale=2.0)
    loc = L.sample("loc", D.Normal(0.0, 3.0))
    s = L.sample("s", D.Bernoulli(p_s))
    with L.plate("data", data.shape[0], dim=-1):
        k = L.sample("k", D.Categorical(weights[s.long()]))
        L.sample("x", D.Normal(loc + locs[k], 1.0), obs=data)


def config_guide(L, D, data):
    q_s = L.param("q_s", torch.tensor(0.6), constraint=D.constraints.unit_interval)
    q_loc = L.param("q_loc", torch.tensor(0.4))
    L.sample("loc", D.Delta(q_loc))
    L.sample("s", D.Bernoulli(q_s))


def subsample_local_model(L, D, data, idx):
    weights = simplex_param(L, D, "weights", 71, 3)
    trans = simplex_param(L, D, "trans", 72, 3, 2)
    locs = real_param(L, "locs", 73, 2, scale=2.0)
    with L.plate("data", data.shape[0], subsample=idx, dim=-1) as i:
        k = L.sample("k", D.Categorical(weights), infer=ENUM)
        j = L.sample("j", D.Categorical(trans[k]), infer=ENUM)
        L.sample("x", D.Normal(locs[j] + 0.5 * k, 1.0), obs=data[i])


def subsample_global_model(L, D, data, idx):
    weights = simplex_param(L, D, "weights", 81, 3)
    locs = real_param(L, "locs", 82, 3, scale=2.0)
    z = L.sample("z", D.Categorical(weights), infer=ENUM)
    with L.plate("data", data.shape[0], subsample=idx, dim=-1) as i:
        L.sample("x", D.Normal(locs[z], 1.0), obs=data[i])


# ---- running the loss in each library --------------------------------------------------------

def bind(fn, lib, **kw):
    L, D = LIBS[lib]
    return functools.partial(fn, L, D, **kw)


def loss_and_grads(lib, model, guide, args, nesting, seed=0, wrap=None):
    """(loss, {param: grad of the loss wrt its unconstrained leaf}) in ``lib``."""
    L, _ = LIBS[lib]
    m, g = bind(model, lib), bind(guide, lib)
    if wrap is not None:
        m, g = wrap(lib, m, g)
    L.clear_param_store()
    elbo = L.infer.TraceEnum_ELBO(max_plate_nesting=nesting, strict_enumeration_warning=False)
    if lib == "svigraph":
        elbo.differentiable_loss(m, g, *args)  # compile first: the checked call draws once
    L.set_rng_seed(seed)
    loss = elbo.differentiable_loss(m, g, *args)
    named = dict(L.get_param_store().named_parameters())
    names = sorted(named)
    grads = torch.autograd.grad(loss, [named[n] for n in names], allow_unused=True)
    return loss.detach(), {n: (gr if gr is not None else torch.zeros_like(named[n]))
                           for n, gr in zip(names, grads)}


def rel(a, b):
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


RESULTS = []


def report(name, sg_value, ref_value, diff, ok, note=""):
    RESULTS.append(ok)
    print(f"{'PASS' if ok else 'FAIL'}  {name:<44} svigraph {sg_value:>14.8f}  "
          f"ref {ref_value:>14.8f}  max rel diff {diff:.2e}{('  ' + note) if note else ''}",
          flush=True)


def compare_with_pyro(name, model, guide, args, nesting, wrap=None):
    try:
        s_loss, s_grads = loss_and_grads("svigraph", model, guide, args, nesting, wrap=wrap)
    except Exception as err:  # a failure of svigraph is a FAIL, reported with its message
        report(name, math.nan, math.nan, math.inf, False, f"svigraph raised {err!r}"[:300])
        return
    p_loss, p_grads = loss_and_grads("pyro", model, guide, args, nesting, wrap=wrap)
    diffs = {"loss": rel(s_loss, p_loss)}
    if set(s_grads) != set(p_grads):
        report(name, float(s_loss), float(p_loss), math.inf, False,
               f"params differ: {sorted(s_grads)} vs {sorted(p_grads)}")
        return
    for n in s_grads:
        diffs[n] = rel(s_grads[n], p_grads[n])
    worst = max(diffs, key=diffs.get)
    report(name, float(s_loss), float(p_loss), diffs[worst], diffs[worst] < RTOL,
           f"(worst: {worst})" if diffs[worst] >= RTOL else "")


def both_refuse(name, model, guide, args, nesting):
    """A model both libraries refuse: guide enumeration more local than some model
    enumeration (Pyro's rule, which svigraph keeps: see compiler/validate.py)."""
    errors = {}
    for lib in LIBS:
        try:
            loss_and_grads(lib, model, guide, args, nesting)
        except Exception as err:  # noqa: BLE001 - the refusal is what is checked
            errors[lib] = f"{type(err).__name__}: {str(err).splitlines()[0]}"
    ok = len(errors) == 2
    report(f"{name} (both refuse)", float("svigraph" in errors), float("pyro" in errors),
           0.0 if ok else 1.0, ok, errors.get("svigraph", "svigraph accepted it")[:90])


# ---- the loss checks ------------------------------------------------------------------------

def loss_checks():
    data = fixed(100, 3, 4, scale=2.0)
    other = fixed(101, 4, scale=2.0)
    compare_with_pyro("nested plates, enum at 3 levels + sibling", nested_model, no_guide,
                      (data, other), 2)
    compare_with_pyro("tree of discrete variables in a plate", tree_model, no_guide,
                      (fixed(102, 5, 2, scale=2.0),), 1)
    for T, history in ((5, 1), (30, 1), (40, 1), (10, 2)):
        seqs = fixed(103 + T, T, 3, scale=2.0)
        compare_with_pyro(f"HMM markov, 3 seqs, T={T}, history={history}",
                          functools.partial(hmm_model, history=history), no_guide, (seqs,), 1)
    x = fixed(110, 4, scale=2.0)
    compare_with_pyro("guide enum (parallel) + Delta + model enum", guide_enum_model,
                      guide_enum_delta, (x,), 1)
    compare_with_pyro("guide enum (parallel) + pathwise Normal", guide_enum_model,
                      guide_enum_normal, (x,), 1)
    compare_with_pyro("local guide enum in a plate + Delta", local_guide_enum_model,
                      local_guide_enum_guide, (fixed(111, 5, scale=2.0),), 1)
    compare_with_pyro("guide+model enum in p1, sibling p2 same dim", sibling_mixed_model,
                      sibling_mixed_guide, (fixed(114, 3, scale=2.0), other), 1)
    both_refuse("guide enum in p1, model enum in sibling p2",
                functools.partial(sibling_mixed_model, with_d=True), sibling_mixed_guide,
                (fixed(114, 3, scale=2.0), other), 1)
    compare_with_pyro("factorial HMM (2 chains), T=12", factorial_hmm, no_guide,
                      (fixed(115, 12, 2, scale=2.0),), 1)
    compare_with_pyro("guide enum (sequential) + Delta + model enum", guide_enum_model,
                      functools.partial(guide_enum_delta, how="sequential"), (x,), 1)

    def configure(lib, m, g):
        L, _ = LIBS[lib]
        return L.infer.config_enumerate(m), L.infer.config_enumerate(g)

    compare_with_pyro("config_enumerate (model and guide)", config_model, config_guide,
                      (fixed(112, 6, scale=2.0),), 1, wrap=configure)
    big = fixed(113, 7, scale=2.0)
    for idx in ([1, 4, 6], [0, 1, 2, 3, 4, 5, 6]):
        compare_with_pyro(f"subsampled plate, local enum, idx={idx}",
                          subsample_local_model, no_guide, (big, torch.tensor(idx)), 1)
    subsample_global_check(big)


def subsample_global_check(data):
    """An enumerated global variable over a subsampled plate: Pyro refuses it (enumerated
    sites with different scales); svigraph gives the scaled estimate
    logsumexp_z(log p(z) + N/n sum_{i in S} log p(x_i | z)): check value and gradients."""
    idx = torch.tensor([0, 3, 5])
    name = "subsampled plate, global enum (exact formula)"
    try:
        pyro_note = "pyro: ran"
        loss_and_grads("pyro", subsample_global_model, no_guide, (data, idx), 1)
    except Exception as err:
        pyro_note = f"pyro refuses: {str(err).splitlines()[0][:60]}"
    loss, grads = loss_and_grads("svigraph", subsample_global_model, no_guide, (data, idx), 1)
    store = sg.get_param_store()
    leaves = dict(store.named_parameters())
    log_weights, locs = store["weights"].log_softmax(-1), store["locs"]
    lp = torch.distributions.Normal(locs[:, None], 1.0).log_prob(data[idx]).sum(-1)
    exact = -torch.logsumexp(log_weights + len(data) / len(idx) * lp, 0)
    names = sorted(leaves)
    want = dict(zip(names, torch.autograd.grad(exact, [leaves[n] for n in names])))
    diff = max([rel(loss, exact.detach())] + [rel(grads[n], want[n]) for n in names])
    report(name, float(loss), float(exact.detach()), diff, diff < RTOL, pyro_note)


# ---- infer_discrete ---------------------------------------------------------------------------

def id_tree(L, D, data):
    p_r = simplex_param(L, D, "p_r", 201, 2)
    p_a = simplex_param(L, D, "p_a", 202, 2, 2)
    p_b = simplex_param(L, D, "p_b", 203, 2, 3)
    locs = real_param(L, "locs", 204, 3, 2, scale=1.5)
    r = L.sample("r", D.Categorical(p_r), infer=ENUM)
    with L.plate("data", data.shape[0], dim=-1):
        a = L.sample("a", D.Categorical(p_a[r]), infer=ENUM)
        b = L.sample("b", D.Categorical(p_b[a]), infer=ENUM)
        L.sample("obs", D.Normal(locs[b, r], 1.0), obs=data)


def id_hmm(L, D, data):
    init = simplex_param(L, D, "init", 211, 3)
    trans = simplex_param(L, D, "trans", 212, 3, 3)
    locs = real_param(L, "locs", 213, 3, scale=1.5)
    x = None
    for t in L.markov(range(data.shape[0])):
        x = L.sample(f"x_{t}", D.Categorical(init if x is None else trans[x]), infer=ENUM)
        L.sample(f"y_{t}", D.Normal(locs[x], 1.0), obs=data[t])


def id_nested(L, D, data):
    p_a = simplex_param(L, D, "p_a", 221, 2)
    p_b = simplex_param(L, D, "p_b", 222, 2, 2)
    p_c = simplex_param(L, D, "p_c", 223, 2, 2)
    locs = real_param(L, "locs", 224, 2, 2, scale=1.5)
    a = L.sample("a", D.Categorical(p_a), infer=ENUM)
    with L.plate("outer", data.shape[0], dim=-2):
        b = L.sample("b", D.Categorical(p_b[a]), infer=ENUM)
        with L.plate("inner", data.shape[1], dim=-1):
            c = L.sample("c", D.Categorical(p_c[b]), infer=ENUM)
            L.sample("x", D.Normal(locs[c, a], 1.0), obs=data)


# (model, data, plate nesting, {site: (shape of its value, support size)})
ID_MODELS = {
    "tree (global root, plate of 2)": (id_tree, fixed(230, 2, scale=1.5), 1,
                                       {"r": ((), 2), "a": ((2,), 2), "b": ((2,), 3)}),
    "HMM markov T=4": (id_hmm, fixed(231, 4, scale=1.5), 0,
                       {f"x_{t}": ((), 3) for t in range(4)}),
    "nested plates 2x2": (id_nested, fixed(232, 2, 2, scale=1.5), 2,
                          {"a": ((), 2), "b": ((2, 1), 2), "c": ((2, 2), 2)}),
}


def brute_force_joint(model, data, sites):
    """(assignments, normalized posterior probabilities), by conditioning svigraph's model
    on every joint assignment of the enumerated sites."""
    sg.clear_param_store()
    m = bind(model, "svigraph")
    cells = [(name, pos, k) for name, (shape, k) in sites.items()
             for pos in itertools.product(*map(range, shape))]
    assignments, logps = [], []
    for combo in itertools.product(*[range(k) for _, _, k in cells]):
        values = {name: torch.zeros(shape, dtype=torch.long) for name, (shape, _) in sites.items()}
        for (name, pos, _), v in zip(cells, combo):
            values[name][pos] = v
        tr = sg.handlers.trace(sg.handlers.condition(m, data=values)).get_trace(data)
        assignments.append(values)
        logps.append(tr.log_prob_sum().detach())
    logps = torch.stack(logps)
    return assignments, (logps - torch.logsumexp(logps, 0)).exp()


def discrete_values(lib, model, data, nesting, temperature, sites):
    L, _ = LIBS[lib]
    m = bind(model, lib)
    infer_discrete = L.infer.infer_discrete
    handlers = sg.handlers if lib == "svigraph" else pyro.poutine
    run = infer_discrete(m, first_available_dim=-nesting - 1, temperature=temperature)
    tr = handlers.trace(run).get_trace(data)
    return {name: tr.nodes[name]["value"].long().reshape(sites[name][0]) for name in sites}


def infer_discrete_checks(num_samples=4000):
    for name, (model, data, nesting, sites) in ID_MODELS.items():
        assignments, probs = brute_force_joint(model, data, sites)
        best_index = int(probs.argmax())
        best = assignments[best_index]
        top2 = probs.topk(2).values
        margin = float(top2[0] / top2[1])
        sg.clear_param_store()
        pyro.clear_param_store()
        try:
            got = discrete_values("svigraph", model, data, nesting, 0, sites)
        except Exception as err:
            report(f"infer_discrete MAP: {name}", math.nan, math.nan, math.inf, False,
                   f"svigraph raised {err!r}"[:300])
            continue
        ref = discrete_values("pyro", model, data, nesting, 0, sites)
        same_pyro = all(torch.equal(got[s], ref[s]) for s in sites)
        same_brute = all(torch.equal(got[s], best[s]) for s in sites)
        chosen = [i for i, a in enumerate(assignments)
                  if all(torch.equal(a[s], got[s]) for s in sites)]
        report(f"infer_discrete MAP: {name}", float(probs[chosen[0]]) if chosen else math.nan,
               float(probs[best_index]), 0.0 if same_pyro and same_brute else 1.0,
               same_pyro and same_brute,
               f"= pyro: {same_pyro}, = brute force: {same_brute}, top1/top2 {margin:.3f}")

        # temperature 1: marginal of every cell value vs exact
        exact = {}
        for values, p in zip(assignments, probs):
            for s, (shape, k) in sites.items():
                e = exact.setdefault(s, torch.zeros(shape + (k,)))
                e += p * torch.nn.functional.one_hot(values[s], k)
        counts = {s: torch.zeros(shape + (k,)) for s, (shape, k) in sites.items()}
        sg.clear_param_store()
        sg.set_rng_seed(7)
        m = bind(model, "svigraph")
        run = sg.infer.infer_discrete(m, first_available_dim=-nesting - 1, temperature=1)
        for _ in range(num_samples):
            tr = sg.handlers.trace(run).get_trace(data)
            for s, (shape, k) in sites.items():
                counts[s] += torch.nn.functional.one_hot(
                    tr.nodes[s]["value"].long().reshape(shape), k)
        worst_z, worst_site = 0.0, ""
        for s in sites:
            freq, p = counts[s] / num_samples, exact[s]
            se = (p * (1 - p) / num_samples).sqrt().clamp_min(1e-12)
            z = float(((freq - p).abs() / se).max())
            if z > worst_z:
                worst_z, worst_site = z, s
        report(f"infer_discrete samples: {name}", worst_z, 4.0, worst_z, worst_z < 4.0,
               f"(value: max |freq - exact| / SE over {num_samples} draws; worst {worst_site})")


def map_vs_pyro_checks():
    """MAP on models too large to brute-force: svigraph's equals Pyro's."""
    cases = [("HMM 3 seqs T=12 history=2", functools.partial(hmm_model, history=2),
              (fixed(120, 12, 3, scale=2.0),), 1, [f"x_{t}" for t in range(12)]),
             ("nested plates + sibling", nested_model,
              (fixed(100, 3, 4, scale=2.0), fixed(101, 4, scale=2.0)), 2, ["a", "b", "c", "d"]),
             ("tree in a plate of 5", tree_model, (fixed(102, 5, 2, scale=2.0),), 1,
              ["r", "a", "b", "c", "d"])]
    for name, model, args, nesting, names in cases:
        got = {}
        for lib in LIBS:
            L, _ = LIBS[lib]
            L.clear_param_store()
            handlers = sg.handlers if lib == "svigraph" else pyro.poutine
            run = L.infer.infer_discrete(bind(model, lib), first_available_dim=-nesting - 1,
                                         temperature=0)
            try:
                tr = handlers.trace(run).get_trace(*args)
            except Exception as err:
                got[lib] = err
                continue
            got[lib] = {n: tr.nodes[n]["value"].long() for n in names}
        ok = all(isinstance(v, dict) for v in got.values()) and all(
            got["svigraph"][n].shape == got["pyro"][n].shape
            and torch.equal(got["svigraph"][n], got["pyro"][n]) for n in names)
        cells = sum(v.numel() for v in got["pyro"].values())
        report(f"infer_discrete MAP = pyro: {name}", float(ok), 1.0, 0.0 if ok else 1.0, ok,
               f"({cells} values compared)" if ok else f"{got['svigraph']!r}"[:200])


def main():
    start = time.perf_counter()
    loss_checks()
    infer_discrete_checks()
    map_vs_pyro_checks()
    failed = RESULTS.count(False)
    print(f"{len(RESULTS) - failed} passed, {failed} failed "
          f"({time.perf_counter() - start:.1f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
