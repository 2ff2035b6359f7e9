"""TraceEnum_ELBO beyond model-side enumeration: guide-side enumeration (alone and mixed with
the model's), sequential enumeration, pathwise and score-function guide sites mixed in,
vectorized particles and the strict enumeration warning.

Exact references: the ELBO by brute force, sum over guide configurations of
q(config) (log p(x, config) - log q(config)), where log p(x, config) sums the model's
remaining discrete sites out by brute force too; gradients by autograd through it.
Enumerated estimates are deterministic, so they must match to float32 round-off (rtol 1e-5
on values, 1e-4 on gradients). Estimates with sampled sites are compared in mean, within
4 standard errors over a fixed-seed run."""

import pytest
import torch

import svigraph as sg
from svigraph import distributions as dist
from svigraph import handlers
from svigraph.constraints import unit_interval
from svigraph.errors import EnumerationWarning
from svigraph.infer import TraceEnum_ELBO, config_enumerate
from tests.reference import brute_log_marginal, guide_configurations, mean_grads

PAR = {"enumerate": "parallel"}
SEQ = {"enumerate": "sequential"}
X3 = torch.tensor([0.3, 1.8, -0.5])


def exact_enum_elbo(model, guide, *args):
    """sum_g q(g) (log sum_m p(x, g, m) - log q(g)), by brute force over g and m."""
    total = 0.0
    for values in guide_configurations(guide, *args):
        guide_tr = handlers.trace(handlers.condition(guide, data=values)).get_trace(*args)
        log_q = sum(s["fn"].log_prob(s["value"]).sum() for s in guide_tr.sample_sites())
        log_p = brute_log_marginal(handlers.condition(model, data=values), *args)
        total = total + log_q.exp() * (log_p - log_q)
    return total


def params():
    return [leaf for _, leaf in sg.get_param_store().named_parameters()]


def assert_exact(model, guide, reference_model, data, nesting=1, **kwargs):
    """Loss and gradients of TraceEnum_ELBO equal the brute-force ELBO's."""
    guide(data)  # create the params
    exact = exact_enum_elbo(reference_model, guide, data)
    loss = TraceEnum_ELBO(max_plate_nesting=nesting, **kwargs).differentiable_loss(
        model, guide, data)
    assert torch.allclose(-loss, exact, rtol=1e-5), (float(-loss), float(exact))
    got = torch.autograd.grad(-loss, params())
    want = torch.autograd.grad(exact, params())
    for g, w in zip(got, want):
        assert torch.allclose(g, w, rtol=1e-4, atol=1e-6), (g, w)
    return float(loss.detach())


# ---- models: `mode` is the guide's enumeration flag; the model's own latents are enumerated
# by config_enumerate in the estimate and by brute force in the reference

def global_local_model(x):
    z = sg.sample("z", dist.Bernoulli(0.4))
    with sg.plate("data", len(x)):
        k = sg.sample("k", dist.Categorical(torch.tensor([0.2, 0.5, 0.3])))
        m = sg.sample("m", dist.Bernoulli(0.3 + 0.4 * z))
        sg.sample("obs", dist.Normal(k.float() - z + m, 1.0), obs=x)


def global_local_guide(mode_z, mode_k=PAR):
    def guide(x):
        p = sg.param("p", torch.tensor(0.6), constraint=unit_interval)
        z = sg.sample("z", dist.Bernoulli(p), infer=mode_z)
        logits = sg.param("logits", torch.randn(2, 3))
        offsets = sg.param("offsets", torch.randn(len(x), 1))
        with sg.plate("data", len(x)):
            # indexing by z keeps its enumeration dim where it is (left of the plate dim)
            sg.sample("k", dist.Categorical(logits=logits[z.long()] + offsets), infer=mode_k)
    return guide


def chain_model(x):
    a = sg.sample("a", dist.Categorical(torch.tensor([0.5, 0.3, 0.2])))
    b = sg.sample("b", dist.Categorical(torch.tensor([[0.7, 0.3], [0.4, 0.6], [0.1, 0.9]])[a]))
    c = sg.sample("c", dist.Bernoulli(torch.tensor([0.25, 0.8])[b]))
    with sg.plate("data", len(x)):
        sg.sample("obs", dist.Normal(a.float() + 2.0 * c, 1.0), obs=x)


def chain_guide(mode):
    def guide(x):
        pa = sg.param("pa", torch.randn(3))
        pb = sg.param("pb", torch.randn(3, 2))
        pc = sg.param("pc", torch.randn(2))
        a = sg.sample("a", dist.Categorical(logits=pa), infer=mode)
        b = sg.sample("b", dist.Categorical(logits=pb[a]), infer=mode)
        sg.sample("c", dist.Bernoulli(logits=pc[b]), infer=mode)
    return guide


def tree_model(x):
    root = sg.sample("root", dist.Bernoulli(0.5))
    left = sg.sample("left", dist.Bernoulli(0.2 + 0.6 * root))
    right = sg.sample("right", dist.Categorical(torch.tensor([[0.6, 0.3, 0.1],
                                                              [0.1, 0.2, 0.7]])[root.long()]))
    with sg.plate("data", len(x)):
        sg.sample("obs", dist.Normal(left - right.float(), 1.0), obs=x)


def tree_guide(mode):
    def guide(x):
        w = sg.param("w", torch.randn(5))
        root = sg.sample("root", dist.Bernoulli(logits=w[0]), infer=mode)
        sg.sample("left", dist.Bernoulli(logits=w[1] + w[2] * root), infer=mode)
        zero = 0.0 * root
        sg.sample("right", dist.Categorical(logits=torch.stack([w[3] * root, w[4] + zero,
                                                                -w[3] + zero], -1)),
                  infer=mode)
    return guide


TRANS = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.3, 0.3, 0.4]])


def markov_model(x):
    z = 0
    for t in sg.markov(range(len(x))):
        z = sg.sample(f"z{t}", dist.Categorical(TRANS[z]))
        sg.sample(f"x{t}", dist.Normal(z.float(), 1.0), obs=x[t])


def markov_guide(mode):
    def guide(x):
        logits = sg.param("logits", torch.randn(3, 3))
        z = 0
        for t in sg.markov(range(len(x))):  # the guide's dims are reused too
            z = sg.sample(f"z{t}", dist.Categorical(logits=logits[z]), infer=mode)
    return guide


X22 = torch.tensor([[0.1, -0.2], [2.1, 1.8]])


def nested_model(x):
    with sg.plate("groups", 2, dim=-2):
        u = sg.sample("u", dist.Bernoulli(0.4))
        with sg.plate("items", 2, dim=-1):
            v = sg.sample("v", dist.Bernoulli(0.3 + 0.5 * u))
            w = sg.sample("w", dist.Bernoulli(0.5))
            sg.sample("obs", dist.Normal(2.0 * u + v - w, 1.0), obs=x)


def nested_guide(x):
    pu = sg.param("pu", torch.randn(2, 1))
    pv = sg.param("pv", torch.randn(2, 2, 2))
    with sg.plate("groups", 2, dim=-2):
        u = sg.sample("u", dist.Bernoulli(logits=pu), infer=PAR)
        with sg.plate("items", 2, dim=-1):
            sg.sample("v", dist.Bernoulli(logits=torch.where(u.bool(), pv[1], pv[0])), infer=PAR)


# ---- exact: guide-side and mixed enumeration --------------------------------------------------

def test_guide_and_model_enumeration_mixed():
    assert_exact(config_enumerate(global_local_model), global_local_guide(PAR),
                 global_local_model, X3)


@pytest.mark.parametrize("shape", ["chain", "tree", "markov_chain"])
def test_guide_enumeration_of_chains_and_trees(shape):
    model, guide = {"chain": (chain_model, chain_guide), "tree": (tree_model, tree_guide),
                    "markov_chain": (markov_model, markov_guide)}[shape]
    assert_exact(model, guide(PAR), model, X3)


def test_nested_plates_guide_and_model_enumeration():
    assert_exact(config_enumerate(nested_model), nested_guide, nested_model, X22, nesting=2)


def test_vectorized_particles_with_enumeration():
    """Particles in a plate at -max_plate_nesting-1, enumeration dims left of it: with every
    latent enumerated each particle is exact, so their mean is too."""
    assert_exact(config_enumerate(global_local_model), global_local_guide(PAR),
                 global_local_model, X3, num_particles=3, vectorize_particles=True)


def test_guide_enumeration_printed_plan():
    plan = sg.compile(config_enumerate(global_local_model), global_local_guide(PAR), X3,
                      loss=TraceEnum_ELBO(max_plate_nesting=1))
    assert [plan.sites[n].estimator for n in ("z", "k", "m", "obs")] == \
        ["enumerate", "enumerate", "enumerate", "observed"]
    assert plan.guide_enum == ("z", "k")
    assert [t.key for t in plan.enum_terms] == [("model", "m"), ("model", "obs")]
    reads = dict((t.key, t.reads) for t in plan.terms)
    assert reads[("guide", "k")] == ("z", "k") and reads[("model", "k")] == ("k",)
    assert dict((t.key, t.reads) for t in plan.enum_terms)[("model", "obs")] == ("z", "k", "m")
    text = str(plan)
    assert "marg = sum_product[m](model:m, model:obs) over plates data" in text
    assert "E_q[z, k]: each term (and marg) weighted by q" in text
    # the contraction keeping the guide's variables is planned with the plan, and printed
    assert plan.contraction is not None and set(plan.contraction.sum_vars) == {"m"}
    assert "contraction: logsumexp m[" in text and "einsum" in text and "peak" in text


# ---- sequential enumeration ---------------------------------------------------------------------

@pytest.mark.parametrize("model, guide, reference", [
    (chain_model, chain_guide, chain_model),
    (config_enumerate(global_local_model), lambda mode: global_local_guide(mode, PAR),
     global_local_model),
], ids=["chain", "sequential_above_parallel"])
def test_sequential_equals_parallel(model, guide, reference):
    assert_exact(model, guide(SEQ), reference, X3)
    elbo = TraceEnum_ELBO(max_plate_nesting=1)
    sequential = elbo.differentiable_loss(model, guide(SEQ), X3)
    parallel = elbo.differentiable_loss(model, guide(PAR), X3)
    assert torch.allclose(sequential, parallel, rtol=1e-5)
    for s, p in zip(torch.autograd.grad(sequential, params()),
                    torch.autograd.grad(parallel, params())):
        assert torch.allclose(s, p, rtol=1e-4, atol=1e-6)


def test_sequential_loop_runs_each_combination_once():
    runs = []

    def guide(x):
        a = sg.sample("a", dist.Categorical(torch.tensor([0.5, 0.3, 0.2])), infer=SEQ)
        b = sg.sample("b", dist.Bernoulli(0.4), infer=SEQ)
        runs.append((int(a), int(b)))

    def model(x):
        sg.sample("a", dist.Categorical(torch.tensor([0.2, 0.3, 0.5])))
        sg.sample("b", dist.Bernoulli(0.5))

    TraceEnum_ELBO(max_plate_nesting=0).loss(model, guide, X3)
    assert sorted(set(runs)) == [(a, b) for a in range(3) for b in range(2)]
    assert len(runs) == 6 + 1  # each combination once, plus the tracing of the first


# ---- sampled guide sites mixed in ---------------------------------------------------------------

def test_pathwise_site_below_an_enumerated_one():
    """z ~ N(m_g, 1) drawn once per enumerated value of g: the ELBO has a closed form,
    sum_g q(g) (log p(g) - log q(g) - (m_g - 2g)^2 / 2), and the mean loss and gradient
    over many draws match it."""
    def model(x):
        g = sg.sample("g", dist.Bernoulli(0.3))
        sg.sample("z", dist.Normal(2.0 * g, 1.0))

    def guide(x):
        p = sg.param("p", torch.tensor(0.6), constraint=unit_interval)
        m = sg.param("m", torch.tensor([0.5, 1.0]))
        g = sg.sample("g", dist.Bernoulli(p), infer=PAR)
        sg.sample("z", dist.Normal(m[g.long()], 1.0))

    guide(None)
    p, m = sg.param("p"), sg.param("m")
    q = torch.stack([1 - p, p])
    prior = torch.tensor([0.7, 0.3]).log()
    exact = (q * (prior - q.log() - (m - torch.tensor([0.0, 2.0])) ** 2 / 2)).sum()
    names = ["p", "m"]
    want = torch.autograd.grad(exact, [sg.param(n).unconstrained() for n in names])
    elbo = TraceEnum_ELBO(max_plate_nesting=0)
    got, (value, value_se) = mean_grads(elbo.differentiable_loss, model, guide, names, 400, None)
    assert abs(float(value) - float(exact.detach())) < 4 * float(value_se) + 1e-6
    for name, w in zip(names, want):
        mean, se = got[name]
        assert torch.all((mean - w).abs() < 4 * se + 1e-6), (name, mean, se, w)


def score_model(x):
    c = sg.sample("c", dist.Bernoulli(0.5))
    z = sg.sample("z", dist.Categorical(torch.tensor([0.3, 0.3, 0.4])))
    with sg.plate("data", len(x)):
        m = sg.sample("m", dist.Bernoulli(0.3 + 0.4 * c))
        sg.sample("obs", dist.Normal(z.float() - c + m, 1.0), obs=x)


def score_guide(mode_c, mode_z):
    def guide(x):
        p = sg.param("p", torch.tensor(0.6), constraint=unit_interval)
        c = sg.sample("c", dist.Bernoulli(p).with_rsample(False), infer=mode_c)
        logits = sg.param("logits", torch.tensor([[0.1, 0.2, -0.3], [0.5, 0.0, 0.3]]))
        sg.sample("z", dist.Categorical(logits=logits[c.long()]), infer=mode_z)
    return guide


def _score_function_case(mode_c, mode_z, samples):
    guide = score_guide(mode_c, mode_z)
    names = ["p", "logits"]
    guide(X3)
    exact = exact_enum_elbo(score_model, guide, X3)
    want = torch.autograd.grad(exact, [sg.param(n).unconstrained() for n in names])
    plan = sg.compile(config_enumerate(score_model), guide, X3,
                      loss=TraceEnum_ELBO(max_plate_nesting=1))
    elbo = TraceEnum_ELBO(max_plate_nesting=1)
    got, (value, value_se) = mean_grads(elbo.differentiable_loss, config_enumerate(score_model),
                                        guide, names, samples, X3)
    assert abs(float(value) - float(exact.detach())) < 4 * float(value_se) + 1e-5
    for name, w in zip(names, want):
        mean, se = got[name]
        assert torch.all((mean - w).abs() < 4 * se + 1e-6), (name, mean, se, w)
    return plan


def test_score_function_site_above_guide_and_model_enumeration():
    """c is sampled (score function); z below it is enumerated in the guide, m in the model.
    c's cost set holds what is downstream of it, the contraction included (c feeds it)."""
    plan = _score_function_case(None, PAR, 500)
    assert plan.sites["c"].estimator == "score_function"
    assert ("model", "obs") in plan.sites["c"].cost and ("guide", "z") in plan.sites["c"].cost


@pytest.mark.slow
@pytest.mark.parametrize("mode_c, mode_z", [(PAR, None), (SEQ, None)],
                         ids=["score_below_parallel", "score_below_sequential"])
def test_score_function_site_below_enumeration(mode_c, mode_z):
    _score_function_case(mode_c, mode_z, 3000)


@pytest.mark.parametrize("baseline, options", [
    ({"use_decaying_avg_baseline": True}, {}),
    ({"use_loo_baseline": True}, {"num_particles": 4, "vectorize_particles": True}),
], ids=["decaying_average", "leave_one_out_over_vectorized_particles"])
def test_baselines_with_enumeration_stay_unbiased(baseline, options):
    """A score site above guide and model enumeration, with a baseline: the mean gradient
    is still the exact one (the baseline only lowers the variance)."""
    def guide(x):
        p = sg.param("p", torch.tensor(0.6), constraint=unit_interval)
        c = sg.sample("c", dist.Bernoulli(p).with_rsample(False), infer={"baseline": baseline})
        logits = sg.param("logits", torch.tensor([[0.1, 0.2, -0.3], [0.5, 0.0, 0.3]]))
        sg.sample("z", dist.Categorical(logits=logits[c.long()]), infer=PAR)

    names = ["p", "logits"]
    guide(X3)
    exact = exact_enum_elbo(score_model, guide, X3)
    want = torch.autograd.grad(exact, [sg.param(n).unconstrained() for n in names])
    elbo = TraceEnum_ELBO(max_plate_nesting=1, **options)
    got, _ = mean_grads(elbo.differentiable_loss, config_enumerate(score_model), guide, names,
                        300, X3)
    for name, w in zip(names, want):
        mean, se = got[name]
        assert torch.all((mean - w).abs() < 4 * se + 1e-6), (name, mean, se, w)


def test_rao_blackwellized_cost_set_leaves_out_upstream_terms():
    """A score site below an enumerated one is weighted only by terms downstream of it."""
    plan = sg.compile(config_enumerate(score_model), score_guide(PAR, None), X3,
                      loss=TraceEnum_ELBO(max_plate_nesting=1))
    cost = plan.sites["z"].cost
    assert ("guide", "c") not in cost and ("model", "c") not in cost
    assert ("guide", "z") in cost and ("model", "obs") in cost


# ---- the strict enumeration warning -------------------------------------------------------------

def test_warns_when_nothing_is_enumerated():
    def model(x):
        sg.sample("obs", dist.Normal(0.0, 1.0), obs=x)

    def guide(x):
        pass

    with pytest.warns(EnumerationWarning, match="no site marked for enumeration"):
        TraceEnum_ELBO(max_plate_nesting=1).loss(model, guide, X3)
    TraceEnum_ELBO(max_plate_nesting=1, strict_enumeration_warning=False).loss(model, guide, X3)
