"""Cross-check of the rest of the inference family against exact values and Pyro 1.9.2.

RenyiELBO, TraceMeanField_ELBO, Importance / EmpiricalMarginal, Predictive and
TracePredictive, on models the test suite does not contain. Every check prints one line:

    name | svigraph | reference | |difference| | tolerance | PASS/FAIL

and the script exits non-zero if any check fails. References are, in order of preference:
closed forms (conjugacy, KL formulas, exhaustive enumeration of a discrete guide over every
K-tuple of particles), Pyro on the same model with the same seed (the two libraries draw the
same values in the same order, so losses and gradients are compared sample by sample), and
Monte Carlo means compared within 4 standard errors (seeds fixed, so a run is reproducible).

Pyro is imported only here; without it the Pyro rows are skipped. Runs in about a minute:
    python benchmarks/crosscheck_infer.py
"""

from __future__ import annotations

import itertools
import math
import os
import sys
import time
import warnings

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import torch  # noqa: E402

import svigraph as sg  # noqa: E402
from svigraph import distributions as dist  # noqa: E402
from svigraph.infer import (EmpiricalMarginal, Importance, Predictive, RenyiELBO, SVI,  # noqa: E402
                            Trace_ELBO, TraceMeanField_ELBO, TracePredictive)

try:
    import pyro
    import pyro.distributions as pdist
    import pyro.infer as pinfer
except ImportError:  # pragma: no cover - Pyro is optional
    pyro = None

torch.set_num_threads(1)
warnings.filterwarnings("ignore")

RESULTS = []
Z4 = 4.0  # tolerance in standard errors for Monte Carlo comparisons


def report(name, got, ref, tol, ok=None):
    """One line per check; ``ok`` overrides the |got - ref| <= tol test (for non-numbers)."""
    if ok is None:
        diff = abs(float(got) - float(ref))
        ok = diff <= tol
        line = (f"{name:<66} | {float(got):>12.6g} | {float(ref):>12.6g} | {diff:>10.3g} | "
                f"{tol:>9.3g} | {'PASS' if ok else 'FAIL'}")
    else:
        line = f"{name:<66} | {str(got):>12} | {str(ref):>12} | {'-':>10} | {str(tol):>9} | " \
               f"{'PASS' if ok else 'FAIL'}"
    RESULTS.append(ok)
    print(line, flush=True)
    return ok


def report_se(name, samples, ref, extra=0.0):
    """Mean of ``samples`` against ``ref`` within 4 standard errors (+ ``extra``)."""
    x = torch.as_tensor(samples, dtype=torch.float64)
    mean, se = x.mean(0), x.std(0) / math.sqrt(x.shape[0])
    ref = torch.as_tensor(ref, dtype=torch.float64)
    if mean.dim() == 0:
        return report(name, mean, ref, Z4 * float(se) + extra)
    ok = True
    for j in range(mean.numel()):
        ok &= report(f"{name}[{j}]", mean.flatten()[j], ref.flatten()[j],
                     Z4 * float(se.flatten()[j]) + extra)
    return ok


def report_two_means(name, a, b):
    """Two independent Monte Carlo means agree within 4 combined standard errors."""
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    se = math.sqrt(float(a.var()) / len(a) + float(b.var()) / len(b))
    return report(name, a.mean(), b.mean(), Z4 * se + 1e-9)


def raises(name, fn, exc_types, must_contain):
    try:
        fn()
    except exc_types as err:
        text = str(err)
        ok = all(s in text for s in must_contain)
        return report(name, "raised", "raise", f"says {must_contain}", ok=ok)
    except Exception as err:  # noqa: BLE001
        return report(name, f"{type(err).__name__}", "raise", "-", ok=False)
    return report(name, "no error", "raise", "-", ok=False)


def seed(n):
    torch.manual_seed(n)
    if pyro is not None:
        pyro.set_rng_seed(n)
    sg.set_rng_seed(n)


# =========================================================================================
# RenyiELBO
# =========================================================================================

def bound_of(w, alpha):
    """The K-particle bound of log weights w (..., K)."""
    beta = 1.0 - alpha
    return (torch.logsumexp(beta * w, -1) - math.log(w.shape[-1])) / beta


def expected_bound(log_w, log_q, alpha, k):
    """E[bound] over K independent draws of a finite guide: log_w, log_q over configurations.
    Differentiable in whatever log_w and log_q are."""
    n = log_w.shape[0]
    idx = torch.cartesian_prod(*[torch.arange(n)] * k).reshape(-1, k)
    return (log_q[idx].sum(1).exp() * bound_of(log_w[idx], alpha)).sum()


# --- (a) discrete model, finite guide: global categorical z, local Bernoulli b_i ------------
X_A = torch.tensor([1.3, -0.2])
PZ_A = torch.tensor([0.2, 0.5, 0.3])


def model_a(x):
    z = sg.sample("z", dist.Categorical(PZ_A))
    with sg.plate("data", 2):
        b = sg.sample("b", dist.Bernoulli(logits=-0.5 + 0.8 * z.float()))
        sg.sample("x", dist.Normal(b + 0.5 * z.float(), 1.0), obs=x)


def guide_a(x):
    qz = sg.param("qz", torch.tensor([0.1, -0.3, 0.4]))
    qb = sg.param("qb", torch.tensor([0.2, -0.6]))
    c = sg.param("c", torch.tensor(0.3))
    z = sg.sample("z", dist.Categorical(logits=qz))
    with sg.plate("data", 2):
        sg.sample("b", dist.Bernoulli(logits=qb + c * z.float()))


def configs_a(qz, qb, c):
    """(log w, log q) of all 12 guide configurations (z, b_1, b_2), written out by hand."""
    ws, qs = [], []
    for z in range(3):
        for b in itertools.product((0.0, 1.0), repeat=2):
            b = torch.tensor(b)
            zf = float(z)
            log_p = torch.log(PZ_A[z]) \
                + torch.distributions.Bernoulli(logits=torch.tensor(-0.5 + 0.8 * zf)).log_prob(b).sum() \
                + torch.distributions.Normal(b + 0.5 * zf, 1.0).log_prob(X_A).sum()
            log_q = torch.log_softmax(qz, 0)[z] \
                + torch.distributions.Bernoulli(logits=qb + c * zf).log_prob(b).sum()
            ws.append(log_p - log_q)
            qs.append(log_q)
    return torch.stack(ws), torch.stack(qs)


def estimates(elbo, model, guide, params, n, *args):
    """n draws of (bound, gradient of the bound w.r.t. each param leaf)."""
    values, grads = [], []
    for _ in range(n):
        leaves = [sg.param(p).unconstrained() for p in params]
        loss = elbo.differentiable_loss(model, guide, *args)
        gs = torch.autograd.grad(loss, leaves, allow_unused=True)
        values.append(-float(loss))
        grads.append(torch.cat([(-g if g is not None else torch.zeros_like(leaf)).reshape(-1)
                                for g, leaf in zip(gs, leaves)]))
    return torch.tensor(values), torch.stack(grads)


def renyi_discrete():
    print("\n-- RenyiELBO (a): discrete model, finite guide, exact E[bound] by enumerating "
          "all K-tuples")
    params = ["qz", "qb", "c"]
    for alpha, k in itertools.product((0.0, 0.5, 2.0), (2, 5)):
        sg.clear_param_store()
        seed(10 + k)
        guide_a(X_A)
        leaves = [sg.param(p).unconstrained() for p in params]
        log_w, log_q = configs_a(*leaves)
        exact = expected_bound(log_w, log_q, alpha, k)
        exact_grad = torch.cat([g.reshape(-1) for g in torch.autograd.grad(exact, leaves)])
        n = 700 if k == 2 else 300
        vec = k == 5  # the K=5 runs vectorized (faster), K=2 one particle at a time
        opts = dict(vectorize_particles=True, max_plate_nesting=1) if vec else {}
        elbo = RenyiELBO(alpha=alpha, num_particles=k, **opts)
        values, grads = estimates(elbo, model_a, guide_a, params, n, X_A)
        tag = f"alpha={alpha:g} K={k} vec={vec}"
        report_se(f"renyi(a) E[bound] {tag}", values, exact.detach())
        report_se(f"renyi(a) grad {tag}", grads, exact_grad)
        if alpha == 0.5:  # vectorized and sequential particles agree in distribution
            other = RenyiELBO(alpha=alpha, num_particles=k,
                              **({} if vec else dict(vectorize_particles=True,
                                                     max_plate_nesting=1)))
            v2, g2 = estimates(other, model_a, guide_a, params, n, X_A)
            report_two_means(f"renyi(a) vec=True vs vec=False E[bound] {tag}", values, v2)
            for j in range(g2.shape[1]):
                report_two_means(f"renyi(a) vec=True vs vec=False grad[{j}] {tag}",
                                 grads[:, j], g2[:, j])

    # every site in the data plate: one weight per slice, the bound summed over slices
    print("-- RenyiELBO (a2): all sites in a plate: per-slice bounds summed")
    x3 = torch.tensor([0.4, 2.1, -1.0])

    def model(x):
        with sg.plate("data", 3):
            b = sg.sample("b", dist.Bernoulli(0.35))
            sg.sample("x", dist.Normal(2.0 * b, 1.0), obs=x)

    def guide(x):
        qb = sg.param("qb3", torch.tensor([0.0, 0.5, -0.5]))
        with sg.plate("data", 3):
            sg.sample("b", dist.Bernoulli(logits=qb))

    for alpha, k in ((0.0, 3), (2.0, 2)):
        sg.clear_param_store()
        guide(x3)
        leaf = sg.param("qb3").unconstrained()
        exact = 0.0
        for i in range(3):
            b = torch.tensor([0.0, 1.0])
            log_p = torch.distributions.Bernoulli(0.35).log_prob(b) + \
                torch.distributions.Normal(2.0 * b, 1.0).log_prob(x3[i])
            log_q = torch.distributions.Bernoulli(logits=leaf[i]).log_prob(b)
            exact = exact + expected_bound(log_p - log_q, log_q, alpha, k)
        (exact_grad,) = torch.autograd.grad(exact, [leaf])
        values, grads = estimates(RenyiELBO(alpha=alpha, num_particles=k), model, guide,
                                  ["qb3"], 600, x3)
        report_se(f"renyi(a2) E[sum_i bound_i] alpha={alpha:g} K={k}", values, exact.detach())
        report_se(f"renyi(a2) grad alpha={alpha:g} K={k}", grads, exact_grad)


# --- (b) pathwise guides: the same draws as Pyro, sample by sample --------------------------
X_B = torch.tensor([0.5, 1.5, -0.3])


def pathwise_programs(lib, d):
    def model(x):
        z = lib.sample("z", d.Normal(0.0, 1.0))
        with lib.plate("data", 3):
            lib.sample("x", d.Normal(z, 1.0), obs=x)

    def guide(x):
        m = lib.param("m", torch.tensor(0.2))
        s = lib.param("s", torch.tensor(0.7), constraint=d.constraints.positive)
        lib.sample("z", d.Normal(m, s))

    def local_model(x):  # every site in the plate: Pyro keeps a weight per slice too
        with lib.plate("data", 3):
            z = lib.sample("z", d.Normal(0.0, 1.0))
            lib.sample("x", d.Normal(z, 0.5), obs=x)

    def local_guide(x):
        m = lib.param("lm", torch.tensor([0.1, 0.9, -0.2]))
        s = lib.param("ls", torch.tensor([0.5, 0.8, 1.2]), constraint=d.constraints.positive)
        with lib.plate("data", 3):
            lib.sample("z", d.Normal(m, s))

    return {"global": (model, guide, ["m", "s"]), "local": (local_model, local_guide,
                                                            ["lm", "ls"])}


def pyro_grads(names):
    store = pyro.get_param_store()
    out = []
    for n in names:
        leaf = store._params[n]
        out.append(leaf.grad.reshape(-1).clone())
        leaf.grad = None
    return torch.cat(out)


def renyi_vs_pyro():
    print("\n-- RenyiELBO (b): pathwise guides, same seed as Pyro, loss and gradient per sample")
    if pyro is None:
        print("   (Pyro not installed: skipped)")
        return
    sgp, pyp = pathwise_programs(sg, dist), pathwise_programs(pyro, pdist)
    for which in ("global", "local"):
        sm, sgd, names = sgp[which]
        pm, pgd, _ = pyp[which]
        for alpha, k, vec in itertools.product((0.0, 0.5, 2.0), (2, 5), (False, True)):
            opts = dict(vectorize_particles=True, max_plate_nesting=1) if vec else {}
            se_ = RenyiELBO(alpha=alpha, num_particles=k, **opts)
            pe = pinfer.RenyiELBO(alpha=alpha, num_particles=k, **opts)
            sg.clear_param_store()
            pyro.clear_param_store()
            dl, dg = 0.0, 0.0
            sgd(X_B)  # the params exist before the seeded draws
            pgd(X_B)
            for i in range(20):
                seed(100 + i)
                leaves = [sg.param(n).unconstrained() for n in names]
                loss = se_.differentiable_loss(sm, sgd, X_B)
                g1 = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, leaves)])
                seed(100 + i)
                l2 = pe.loss_and_grads(pm, pgd, X_B)
                g2 = pyro_grads(names)
                dl = max(dl, abs(float(loss) - l2) / max(1.0, abs(l2)))
                dg = max(dg, float((g1 - g2).abs().max() / g2.abs().max().clamp(min=1.0)))
            tag = f"{which} alpha={alpha:g} K={k} vec={vec}"
            report(f"renyi(b) max rel |loss - pyro| 20 draws {tag}", dl, 0.0, 1e-5)
            report(f"renyi(b) max rel |grad - pyro| 20 draws {tag}", dg, 0.0, 1e-4)


def renyi_refusal_and_minibatch():
    print("\n-- RenyiELBO: alpha=1, minibatches")
    raises("renyi alpha=1 refused, pointing to Trace_ELBO", lambda: RenyiELBO(alpha=1.0),
           (ValueError,), ["Trace_ELBO"])

    # minibatch over a plate every site is in (random subsample_size): unbiased for the sum
    # over ALL datapoints of the per-datapoint K-particle bounds
    x = torch.tensor([0.3, 1.9, -0.7, 1.1])

    def model(x):
        with sg.plate("data", 4, subsample_size=2) as i:
            b = sg.sample("b", dist.Bernoulli(0.4))
            sg.sample("x", dist.Normal(1.5 * b, 1.0), obs=x[i])

    def guide(x):
        qb = sg.param("mqb", torch.tensor([0.2, 0.9, -0.8, 0.4]))
        with sg.plate("data", 4, subsample_size=2) as i:
            sg.sample("b", dist.Bernoulli(logits=qb[i]))

    alpha, k = 0.5, 3
    sg.clear_param_store()
    seed(3)
    guide(x)
    leaf = sg.param("mqb").unconstrained()
    b = torch.tensor([0.0, 1.0])
    exact = 0.0
    for i in range(4):
        log_q = torch.distributions.Bernoulli(logits=leaf[i]).log_prob(b)
        log_p = torch.distributions.Bernoulli(0.4).log_prob(b) + \
            torch.distributions.Normal(1.5 * b, 1.0).log_prob(x[i])
        exact = exact + expected_bound(log_p - log_q, log_q, alpha, k)
    (exact_grad,) = torch.autograd.grad(exact, [leaf])
    for vec in (False, True):
        opts = dict(vectorize_particles=True, max_plate_nesting=1) if vec else {}
        values, grads = estimates(RenyiELBO(alpha=alpha, num_particles=k, **opts), model, guide,
                                  ["mqb"], 1500, x)
        report_se(f"renyi minibatch common plate E[est] = sum_n bound_n vec={vec}", values,
                  exact.detach())
        report_se(f"renyi minibatch common plate grad vec={vec}", grads, exact_grad)

    # a global latent outside the subsampled plate: the documented estimate is the bound of
    # the minibatch-rescaled model (scale N/B inside w), averaged over the random minibatches
    def gmodel(x):
        z = sg.sample("z", dist.Bernoulli(0.5))
        with sg.plate("data", 4, subsample_size=2) as i:
            sg.sample("x", dist.Normal(2.0 * z, 1.0), obs=x[i])

    def gguide(x):
        q = sg.param("gq", torch.tensor(0.3))
        sg.sample("z", dist.Bernoulli(logits=q))

    alpha, k = 0.0, 3
    sg.clear_param_store()
    gguide(x)
    leaf = sg.param("gq").unconstrained()
    z = torch.tensor([0.0, 1.0])
    log_q = torch.distributions.Bernoulli(logits=leaf).log_prob(z)
    subsets = list(itertools.combinations(range(4), 2))
    exact = 0.0
    for s in subsets:
        log_lik = sum(torch.distributions.Normal(2.0 * z, 1.0).log_prob(x[j]) for j in s)
        log_w = torch.distributions.Bernoulli(0.5).log_prob(z) + 2.0 * log_lik - log_q
        exact = exact + expected_bound(log_w, log_q, alpha, k) / len(subsets)
    (exact_grad,) = torch.autograd.grad(exact, [leaf])
    for vec in (False, True):
        opts = dict(vectorize_particles=True, max_plate_nesting=1) if vec else {}
        values, grads = estimates(RenyiELBO(alpha=alpha, num_particles=k, **opts), gmodel,
                                  gguide, ["gq"], 1500, x)
        report_se(f"renyi minibatch global latent E[est] = avg_B bound(rescaled) vec={vec}",
                  values, exact.detach())
        report_se(f"renyi minibatch global latent grad vec={vec}", grads, exact_grad)


# =========================================================================================
# TraceMeanField_ELBO
# =========================================================================================

def mf_programs(lib, d):
    def model(x):
        s = lib.sample("s", d.Gamma(2.0, 2.0))
        p = lib.sample("p", d.Beta(2.0, 3.0))
        with lib.plate("data", 3):
            z = lib.sample("z", d.Normal(0.0, 1.0))
            lib.sample("x", d.Normal(z + p, s), obs=x)

    def guide(x):
        a = lib.param("ga", torch.tensor(3.0), constraint=d.constraints.positive)
        b = lib.param("gb", torch.tensor(2.5), constraint=d.constraints.positive)
        c1 = lib.param("c1", torch.tensor(1.5), constraint=d.constraints.positive)
        c0 = lib.param("c0", torch.tensor(2.0), constraint=d.constraints.positive)
        m = lib.param("zm", torch.tensor([0.1, -0.2, 0.5]))
        sd = lib.param("zs", torch.tensor([0.6, 0.9, 0.4]), constraint=d.constraints.positive)
        lib.sample("s", d.Gamma(a, b))
        lib.sample("p", d.Beta(c1, c0))
        with lib.plate("data", 3):
            lib.sample("z", d.Normal(m, sd))

    return model, guide, ["ga", "gb", "c1", "c0", "zm", "zs"]


X_MF = torch.tensor([0.9, -0.4, 1.7])


def mean_field():
    print("\n-- TraceMeanField_ELBO")
    sm, sgd, names = mf_programs(sg, dist)
    sg.clear_param_store()
    sgd(X_MF)
    plan = TraceMeanField_ELBO().compile(sm, sgd, X_MF)
    est = {n: plan.sites[n].estimator for n in ("s", "p", "z")}
    report("mf plan: s, p, z all analytic_kl", est, "analytic_kl", "-",
           ok=all(e == "analytic_kl" for e in est.values()))

    if pyro is not None:
        pm, pgd, _ = mf_programs(pyro, pdist)
        pyro.clear_param_store()
        dl, dg = 0.0, 0.0
        sel, pel = TraceMeanField_ELBO(), pinfer.TraceMeanField_ELBO()
        for i in range(20):
            seed(200 + i)
            leaves = [sg.param(n).unconstrained() for n in names]
            loss = sel.differentiable_loss(sm, sgd, X_MF)
            g1 = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, leaves)])
            seed(200 + i)
            l2 = pel.loss_and_grads(pm, pgd, X_MF)
            g2 = pyro_grads(names)
            dl = max(dl, abs(float(loss) - l2) / max(1.0, abs(l2)))
            dg = max(dg, float((g1 - g2).abs().max() / g2.abs().max().clamp(min=1.0)))
        report("mf vs Pyro TraceMeanField: max rel |loss diff|, 20 same-seed draws", dl, 0.0, 1e-5)
        report("mf vs Pyro TraceMeanField: max rel |grad diff|, 20 same-seed draws", dg, 0.0, 1e-4)

    # E[mean-field loss] = E[Trace_ELBO loss] (the KL only replaces an expectation)
    seed(5)
    mfe, tre = TraceMeanField_ELBO(), Trace_ELBO()
    mf = torch.tensor([mfe.loss(sm, sgd, X_MF) for _ in range(1500)])
    tr = torch.tensor([tre.loss(sm, sgd, X_MF) for _ in range(1500)])
    report_two_means("mf E[loss] vs Trace_ELBO E[loss] (1500 each)", mf, tr)

    # latents only, no data: the loss is the sum of the KLs exactly (deterministic)
    def kl_model():
        sg.sample("s", dist.Gamma(2.0, 2.0))
        sg.sample("p", dist.Beta(2.0, 3.0))
        with sg.plate("data", 3):
            sg.sample("z", dist.Normal(0.0, 1.0))
        sg.sample("v", dist.Normal(torch.zeros(2), torch.tensor([1.0, 2.0])).to_event(1))

    def kl_guide():
        sgd(X_MF)
        sg.sample("v", dist.Normal(torch.tensor([0.3, -0.1]), torch.tensor([0.5, 1.5])).to_event(1))

    kl = torch.distributions.kl_divergence
    TD = torch.distributions
    ps = {n: sg.param(n).detach() for n in names}
    exact = (kl(TD.Gamma(ps["ga"], ps["gb"]), TD.Gamma(2.0, 2.0))
             + kl(TD.Beta(ps["c1"], ps["c0"]), TD.Beta(2.0, 3.0))
             + kl(TD.Normal(ps["zm"], ps["zs"]), TD.Normal(0.0, 1.0)).sum()
             + kl(TD.Normal(torch.tensor([0.3, -0.1]), torch.tensor([0.5, 1.5])),
                  TD.Normal(torch.zeros(2), torch.tensor([1.0, 2.0]))).sum())
    got = TraceMeanField_ELBO().loss(kl_model, kl_guide)
    report("mf latents-only loss = sum of torch kl_divergence", got, exact, 1e-5)

    # derived pairs (and torch's) against 200k-sample Monte Carlo of E_q[log q - log p]
    pairs = [
        ("Beta||Beta", dist.Beta(1.7, 0.8), dist.Beta(2.0, 3.0)),
        ("Gamma||Gamma", dist.Gamma(3.0, 2.5), dist.Gamma(2.0, 0.7)),
        ("LogNormal||Gamma", dist.LogNormal(0.3, 0.6), dist.Gamma(2.0, 1.5)),
        ("LogNormal||HalfNormal", dist.LogNormal(-0.2, 0.4), dist.HalfNormal(1.3)),
        ("LogNormal||Exponential", dist.LogNormal(0.1, 0.5), dist.Exponential(0.8)),
        ("LogNormal||LogNormal", dist.LogNormal(0.4, 0.7), dist.LogNormal(-0.1, 1.2)),
        ("Gamma||LogNormal", dist.Gamma(2.5, 1.5), dist.LogNormal(0.2, 0.9)),
        ("Exponential||Gamma", dist.Exponential(1.3), dist.Gamma(1.5, 2.0)),
        ("Weibull||Gamma", dist.Weibull(1.2, 1.8), dist.Gamma(2.0, 1.0)),
        ("Gamma||Weibull", dist.Gamma(2.0, 1.0), dist.Weibull(1.2, 1.8)),
        ("Beta||Beta batched (2,)", dist.Beta(torch.tensor([0.6, 4.0]), torch.tensor([1.5, 2.0])),
         dist.Beta(torch.tensor([1.0, 2.0]), 1.0)),
    ]
    for label, q, p in pairs:
        def one_model(p=p):
            sg.sample("u", p.to_event(q.batch_shape.__len__()) if q.batch_shape else p)

        def one_guide(q=q):
            sg.sample("u", q.to_event(q.batch_shape.__len__()) if q.batch_shape else q)

        elbo = TraceMeanField_ELBO()
        plan = elbo.compile(one_model, one_guide)
        if plan.sites["u"].estimator != "analytic_kl":
            report(f"mf KL {label}: analytic", plan.sites["u"].estimator, "analytic_kl", "-",
                   ok=False)
            continue
        got = elbo.loss(one_model, one_guide)
        seed(7)
        u = q.sample((200000,))
        lw = (q.log_prob(u) - p.log_prob(u)).reshape(200000, -1).sum(-1).double()
        report(f"mf KL {label} vs 200k MC (4 SE)", got, lw.mean(), Z4 * float(lw.std()) / 447.2)

    # refusal: a latent whose prior reads another latent
    def hier_model():
        mu = sg.sample("mu", dist.Normal(0.0, 1.0))
        sg.sample("y", dist.Normal(mu, 1.0))

    def hier_guide():
        sg.sample("mu", dist.Normal(0.0, 1.0))
        sg.sample("y", dist.Normal(0.0, 1.0))

    raises("mf refuses a prior reading another latent (names site, fix)",
           lambda: TraceMeanField_ELBO().loss(hier_model, hier_guide), (ValueError,),
           ["'y'", "'mu'", "Trace_ELBO"])

    # fallback: no closed form -> Monte Carlo, with a note in the printed plan
    def st_model():
        sg.sample("t", dist.Normal(0.0, 1.0))

    def st_guide():
        sg.sample("t", dist.StudentT(4.0, 0.2, 0.8))

    plan = TraceMeanField_ELBO().compile(st_model, st_guide)
    text = str(plan)
    report("mf StudentT||Normal falls back, note in str(plan)", plan.sites["t"].estimator,
           "not analytic", "-", ok=plan.sites["t"].estimator != "analytic_kl"
           and "no closed form" in text and "StudentT" in text)
    # and its estimate is still the ELBO: E[loss] = E_q[log q - log p] by MC
    seed(8)
    st_elbo = TraceMeanField_ELBO()
    vals = torch.tensor([st_elbo.loss(st_model, st_guide) for _ in range(1500)])
    q, p = torch.distributions.StudentT(4.0, 0.2, 0.8), torch.distributions.Normal(0.0, 1.0)
    u = q.sample((200000,))
    ref = (q.log_prob(u) - p.log_prob(u)).double()
    report_two_means("mf fallback StudentT||Normal E[loss] vs 200k MC KL", vals, ref)


# =========================================================================================
# Importance, EmpiricalMarginal
# =========================================================================================
A0, B0 = 2.0, 3.0
FLIPS = torch.tensor([1.0, 1, 0, 1, 1, 1, 0, 1, 1, 0])
H, T = float(FLIPS.sum()), float(len(FLIPS) - FLIPS.sum())
LOG_EVIDENCE = (math.lgamma(A0 + H) + math.lgamma(B0 + T) - math.lgamma(A0 + B0 + H + T)) - \
    (math.lgamma(A0) + math.lgamma(B0) - math.lgamma(A0 + B0))
POST_A, POST_B = A0 + H, B0 + T
POST_MEAN = POST_A / (POST_A + POST_B)
POST_VAR = POST_A * POST_B / ((POST_A + POST_B) ** 2 * (POST_A + POST_B + 1))


def coin_programs(lib, d):
    def model(flips):
        p = lib.sample("p", d.Beta(A0, B0))
        with lib.plate("flips", len(flips)):
            lib.sample("obs", d.Bernoulli(p), obs=flips)
        return p

    def guide(flips):
        a = lib.param("qa", torch.tensor(4.0), constraint=d.constraints.positive)
        b = lib.param("qb", torch.tensor(4.0), constraint=d.constraints.positive)
        lib.sample("p", d.Beta(a, b))

    return model, guide


def log_normalizer_se(log_w):
    """Delta-method SE of log(mean(exp(w)))."""
    w = (log_w.double() - log_w.max()).exp()
    return float(w.std() / (w.mean() * math.sqrt(len(w))))


def importance():
    print("\n-- Importance / EmpiricalMarginal on the Beta-Bernoulli coin "
          f"(exact log p(x) = {LOG_EVIDENCE:.6f})")
    sm, sgd = coin_programs(sg, dist)
    sg.clear_param_store()
    seed(11)
    svi = SVI(sm, sgd, sg.optim.Adam({"lr": 0.05}), TraceMeanField_ELBO())
    for _ in range(300):
        svi.step(FLIPS)
    qa, qb = float(sg.param("qa")), float(sg.param("qb"))
    print(f"   fitted guide Beta({qa:.3f}, {qb:.3f}); exact posterior Beta({POST_A:g}, {POST_B:g})")
    n = 2000
    for label, guide in (("prior guide", None), ("fitted guide", sgd)):
        seed(12)
        post = Importance(sm, guide=guide, num_samples=n).run(FLIPS)
        log_w = torch.stack(post.log_weights)
        se = log_normalizer_se(log_w)
        report(f"importance {label}: log_normalizer vs exact (4 SE)",
               post.get_log_normalizer(), LOG_EVIDENCE, Z4 * se + 1e-6)
        ess = float(post.get_ESS())
        report(f"importance {label}: ESS in (0, {n}]", ess, n, "-", ok=0 < ess <= n)
        marg = EmpiricalMarginal(post, "p")
        # SE of a self-normalized weighted mean ~ sd / sqrt(ESS)
        se_mean = math.sqrt(POST_VAR / ess)
        report(f"importance {label}: EmpiricalMarginal mean vs posterior mean",
               marg.mean, POST_MEAN, Z4 * se_mean)
        # SE of the weighted variance: sqrt((m4 - var^2)/ESS), m4 of the Beta posterior
        a, b = POST_A, POST_B
        kurt_excess = 6 * ((a - b) ** 2 * (a + b + 1) - a * b * (a + b + 2)) / (
            a * b * (a + b + 2) * (a + b + 3))
        m4 = (kurt_excess + 3) * POST_VAR ** 2
        report(f"importance {label}: EmpiricalMarginal variance vs posterior var",
               marg.variance, POST_VAR, Z4 * math.sqrt((m4 - POST_VAR ** 2) / ess))
        ret = EmpiricalMarginal(post)  # the model returns p: the same marginal
        report(f"importance {label}: return-value marginal = site marginal", ret.mean,
               marg.mean, 1e-6)
        if pyro is not None:
            pm, pgd = coin_programs(pyro, pdist)
            pyro.clear_param_store()
            if guide is not None:
                pgd(FLIPS)
                pyro.get_param_store()["qa"] = torch.tensor(qa)
                pyro.get_param_store()["qb"] = torch.tensor(qb)
            seed(12)
            ppost = pinfer.Importance(pm, guide=None if guide is None else pgd,
                                      num_samples=n).run(FLIPS)
            plog_w = torch.stack([torch.as_tensor(w) for w in ppost.log_weights])
            report(f"importance {label}: Pyro log_normalizer (same seed)",
                   post.get_log_normalizer(), ppost.get_log_normalizer(), 1e-4)
            report(f"importance {label}: max |log w - Pyro log w| (same seed)",
                   float((log_w - plog_w).abs().max()), 0.0, 1e-4)
            report(f"importance {label}: Pyro ESS (same seed)", ess, float(ppost.get_ESS()),
                   1e-3 * n)
            pm_ = pinfer.EmpiricalMarginal(ppost, "p")
            report(f"importance {label}: Pyro EmpiricalMarginal mean", marg.mean, pm_.mean,
                   1e-5)
            report(f"importance {label}: Pyro EmpiricalMarginal variance", marg.variance,
                   pm_.variance, 1e-5)
            # a different seed: statistically equal estimates of log p(x)
            seed(99)
            ppost2 = pinfer.Importance(pm, guide=None if guide is None else pgd,
                                       num_samples=n).run(FLIPS)
            plog_w2 = torch.stack([torch.as_tensor(w) for w in ppost2.log_weights])
            se2 = math.sqrt(se ** 2 + log_normalizer_se(plog_w2) ** 2)
            report(f"importance {label}: Pyro log_normalizer (other seed, 4 SE)",
                   post.get_log_normalizer(), ppost2.get_log_normalizer(), Z4 * se2)

    # TracePredictive on an Importance posterior: predictive P(obs=1) = posterior mean
    seed(13)
    post = Importance(sm, guide=None, num_samples=1500).run(FLIPS)
    tp = TracePredictive(sm, post, num_samples=1500).run(FLIPS)
    ret = EmpiricalMarginal(tp)  # the return value p, drawn from the posterior
    report("TracePredictive(Importance) return-value mean vs posterior mean", ret.mean,
           POST_MEAN, Z4 * math.sqrt(POST_VAR / 1500) + Z4 * math.sqrt(
               POST_VAR / float(post.get_ESS())))

    def pred_model(n):
        p = sg.sample("p", dist.Beta(A0, B0))
        with sg.plate("flips", n):
            return sg.sample("obs", dist.Bernoulli(p))

    def pred_cond(n):  # the same model, conditioned for the posterior
        p = sg.sample("p", dist.Beta(A0, B0))
        with sg.plate("flips", n):
            return sg.sample("obs", dist.Bernoulli(p), obs=FLIPS)

    seed(14)
    post = Importance(pred_cond, num_samples=1500).run(len(FLIPS))
    tp = TracePredictive(pred_model, post, num_samples=2000).run(len(FLIPS))
    obs = EmpiricalMarginal(tp, "obs").enumerate_support()
    report("TracePredictive new flips shape", tuple(obs.shape), (2000, len(FLIPS)), "-",
           ok=tuple(obs.shape) == (2000, len(FLIPS)))
    per_draw = obs.mean(-1)
    # predictive mean of a flip = posterior mean (SE from the draws + IS error)
    report("TracePredictive P(new flip=1) vs posterior mean", per_draw.mean(), POST_MEAN,
           Z4 * float(per_draw.std()) / math.sqrt(2000)
           + Z4 * math.sqrt(POST_VAR / float(post.get_ESS())))


# =========================================================================================
# Predictive
# =========================================================================================
XP = torch.tensor([-1.0, 0.0, 0.5, 2.0])


def pred_programs(lib, d):
    def model(x, y=None):
        a = lib.sample("a", d.Normal(0.0, 1.0))
        b = lib.sample("b", d.Normal(0.0, 1.0))
        sd = lib.sample("sd", d.LogNormal(-1.0, 0.2))
        with lib.plate("data", len(x)):
            lib.sample("y", d.Normal(a + b * x, sd), obs=y)
        return a + b

    def guide(x, y=None):
        lib.sample("a", d.Normal(1.0, 0.1))
        lib.sample("b", d.Normal(-0.5, 0.2))
        lib.sample("sd", d.LogNormal(-1.0, 0.1))

    return model, guide


def predictive():
    print("\n-- Predictive")
    sm, sgd = pred_programs(sg, dist)
    seed(21)
    S = 2000
    post = {"a": 1.0 + 0.1 * torch.randn(S), "b": -0.5 + 0.2 * torch.randn(S)}
    exact_mean_y = (post["a"].mean() + post["b"].mean() * XP)
    configs = [
        ("posterior_samples, default sites", dict(posterior_samples=post)),
        ("posterior_samples, return_sites=[a,y,_RETURN]",
         dict(posterior_samples=post, return_sites=["a", "y", "_RETURN"])),
        ("posterior_samples, return_sites=None", dict(posterior_samples=post, return_sites=None)),
        ("guide, num_samples", dict(guide="guide", num_samples=S)),
        ("prior, num_samples", dict(num_samples=S)),
    ]
    sg_out = {}
    for label, kw in configs:
        for parallel in (False, True):
            kws = dict(kw, guide=sgd) if kw.get("guide") else dict(kw)
            seed(22)
            out = Predictive(sm, parallel=parallel, **kws)(XP)
            sg_out[label, parallel] = out
        seq, par = sg_out[label, False], sg_out[label, True]
        report(f"predictive {label}: parallel/sequential keys+shapes",
               sorted((k, tuple(v.shape)) for k, v in par.items()) ==
               sorted((k, tuple(v.shape)) for k, v in seq.items()), True, "-",
               ok=sorted((k, tuple(v.shape)) for k, v in par.items()) ==
               sorted((k, tuple(v.shape)) for k, v in seq.items()))
        if "y" in seq:
            for j in range(len(XP)):
                report_two_means(f"predictive {label}: y[{j}] parallel vs sequential",
                                 seq["y"].reshape(S, -1)[:, j], par["y"].reshape(S, -1)[:, j])
    # statistics against the exact predictive mean given the posterior samples
    y = sg_out[configs[0][0], False]["y"].reshape(S, -1)
    for j in range(len(XP)):
        # y_j = a + b x_j + sd eps: SE from the draws, reference from the given samples
        report_se(f"predictive y[{j}] mean vs mean(a + b x_j) of the samples", y[:, j],
                  exact_mean_y[j])
    # conditioned values are the given samples
    out = sg_out[configs[1][0], False]
    report("predictive return_sites a == posterior samples a", float((out["a"].reshape(-1)
           - post["a"]).abs().max()), 0.0, 0.0)
    report("predictive _RETURN == a + b", float((out["_RETURN"].reshape(-1)
           - post["a"] - post["b"]).abs().max()), 0.0, 1e-6)

    if pyro is None:
        return
    pm, pgd = pred_programs(pyro, pdist)
    for label, kw in configs:
        for parallel in (False, True):
            kws = dict(kw, guide=pgd) if kw.get("guide") else dict(kw)
            seed(22)
            pout = pinfer.Predictive(pm, parallel=parallel, **kws)(XP)
            out = sg_out[label, parallel]
            mine = sorted((k, tuple(v.shape)) for k, v in out.items())
            theirs = sorted((k, tuple(v.shape)) for k, v in pout.items())
            report(f"predictive vs Pyro {label} par={parallel}: keys+shapes", str(mine)[:12],
                   str(theirs)[:12], "-", ok=mine == theirs)
            if mine != theirs:
                print(f"      svigraph {mine}\n      pyro     {theirs}")
                continue
            if "y" in out:
                same = float((out["y"] - pout["y"]).abs().max())
                if same < 1e-5:
                    report(f"predictive vs Pyro {label} par={parallel}: same-seed y identical",
                           same, 0.0, 1e-5)
                else:
                    for j in range(len(XP)):
                        report_two_means(f"predictive vs Pyro {label} par={parallel}: y[{j}]",
                                         out["y"].reshape(S, -1)[:, j],
                                         pout["y"].reshape(S, -1)[:, j])


# =========================================================================================
# The seed page's signatures
# =========================================================================================

def seed_page():
    print("\n-- seed page 004: constructors as documented (imports changed)")
    import inspect
    sm, sgd = coin_programs(sg, dist)
    ok = True
    try:
        RenyiELBO(alpha=0, num_particles=2, max_plate_nesting=float("inf"),
                  max_iarange_nesting=None, vectorize_particles=False,
                  strict_enumeration_warning=True)
        post = Importance(sm, guide=None, num_samples=None)
        post.run(FLIPS)
        n_default = len(post.exec_traces)
        EmpiricalMarginal(post, sites=None, validate_args=None)
        EmpiricalMarginal(post, sites=["p"])
        tp = TracePredictive(sm, post, 5).run(FLIPS)
        ok = n_default == 10 and len(tp.exec_traces) == 5
        ok &= issubclass(Importance, sg.infer.TracePosterior) and \
            issubclass(TracePredictive, sg.infer.TracePosterior)
        params = list(inspect.signature(RenyiELBO).parameters)
        ok &= params[:2] == ["alpha", "num_particles"]
    except Exception as err:  # noqa: BLE001
        print(f"      {type(err).__name__}: {err}")
        ok = False
    report("seed page: RenyiELBO/Importance/EmpiricalMarginal/TracePredictive signatures",
           ok, True, "-", ok=ok)


def main():
    t0 = time.time()
    for section in (renyi_discrete, renyi_vs_pyro, renyi_refusal_and_minibatch, mean_field,
                    importance, predictive, seed_page):
        t = time.time()
        section()
        print(f"   ({time.time() - t:.1f}s)")
    failed = RESULTS.count(False)
    print(f"\n{len(RESULTS)} checks, {failed} failed, {time.time() - t0:.0f}s"
          + ("" if pyro is not None else " (Pyro not installed: Pyro rows skipped)"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
