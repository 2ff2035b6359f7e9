"""infer_discrete: the MAP (temperature 0) equals the brute-force argmax of the joint over
every assignment of the enumerated sites; samples (temperature 1) match the exact posterior
marginals, a pairwise joint and the whole joint; the HMM's MAP path equals a hand-written
Viterbi; values have the plate batch shapes; mistakes get errors naming site, dims and fix.

Each model draws its own parameters from a fixed seed (distinct continuous values, so the
argmax is unique; the tests check the runner-up is at least 1e-3 behind). Statistical
bounds: every empirical frequency within 4 standard errors of the exact probability (a
false alarm has probability ~6e-5 per comparison), chi-square of the whole joint below its
1e-4 quantile.
"""

import math

import pytest
import torch

import svigraph as sg
from svigraph import distributions as dist
from svigraph import handlers
from svigraph.errors import EnumerationError
from svigraph.infer import config_enumerate, infer_discrete
from tests.reference import guide_configurations

ENUM = {"enumerate": "parallel"}


def _simplex(*shape):
    return torch.distributions.Dirichlet(torch.ones(shape[-1])).sample(shape[:-1])


# ---- models: each factory fixes random parameters; (model, data, max plate nesting) ----------

def mixture_model(seed=1):
    torch.manual_seed(seed)
    weights, locs = _simplex(3), 3.0 * torch.randn(3)
    data = torch.tensor([-2.0, 0.1, 3.0, 2.5])
    observed = torch.tensor([True, True, False, True])  # one point masked out

    def model(x):
        with sg.plate("data", len(x), dim=-1):
            k = sg.sample("k", dist.Categorical(weights), infer=ENUM)
            sg.sample("obs", dist.Normal(locs[k], 1.5).mask(observed), obs=x)
        return k

    return model, data, 1


def chain_model(seed=2, length=4):
    torch.manual_seed(seed)
    init, trans, locs = _simplex(3), _simplex(3, 3), 2.0 * torch.randn(3)
    data = 2.0 * torch.randn(length)

    def model(x):
        z = sg.sample("z0", dist.Categorical(init), infer=ENUM)
        sg.sample("x0", dist.Normal(locs[z], 1.0), obs=x[0])
        for t in range(1, len(x)):
            z = sg.sample(f"z{t}", dist.Categorical(trans[z]), infer=ENUM)
            sg.sample(f"x{t}", dist.Normal(locs[z], 1.0), obs=x[t])

    return model, data, 0


def tree_model(seed=3):
    torch.manual_seed(seed)
    pa, pb, pc, pd = _simplex(2), _simplex(2, 3), _simplex(2, 2), _simplex(3, 2)
    lb, lc, ld = torch.randn(3), torch.randn(2), torch.randn(2)
    data = torch.tensor([0.3, -0.8, 1.1])

    def model(x):
        a = sg.sample("a", dist.Categorical(pa), infer=ENUM)
        b = sg.sample("b", dist.Categorical(pb[a]), infer=ENUM)
        c = sg.sample("c", dist.Categorical(pc[a]), infer=ENUM)
        d = sg.sample("d", dist.Categorical(pd[b]), infer=ENUM)
        sg.sample("xb", dist.Normal(lb[b], 1.0), obs=x[0])
        sg.sample("xc", dist.Normal(lc[c], 1.0), obs=x[1])
        sg.sample("xd", dist.Normal(ld[d] + lc[c], 1.0), obs=x[2])

    return model, data, 0


def nested_model(seed=4):
    torch.manual_seed(seed)
    pu, pv, locs = torch.rand(()), _simplex(2, 3), 2.0 * torch.randn(3)
    data = torch.tensor([[0.1, 2.2], [-1.3, 0.7]])

    def model(x):
        with sg.plate("groups", 2, dim=-2):
            u = sg.sample("u", dist.Bernoulli(pu), infer=ENUM)
            with sg.plate("items", 2, dim=-1):
                v = sg.sample("v", dist.Categorical(pv[u.long()]), infer=ENUM)
                sg.sample("obs", dist.Normal(locs[v] + u, 1.0), obs=x)

    return model, data, 2


def global_model(seed=5):
    torch.manual_seed(seed)
    pz, pw, locs = _simplex(3), torch.rand(3), 2.0 * torch.randn(3)
    data = torch.tensor([0.4, 2.9, -1.2])

    def model(x):
        z = sg.sample("z", dist.Categorical(pz), infer=ENUM)
        with sg.plate("data", len(x), dim=-1):
            w = sg.sample("w", dist.Bernoulli(pw[z]), infer=ENUM)
            sg.sample("obs", dist.Normal(locs[z] + 2.0 * w, 1.0), obs=x)

    return model, data, 1


def hmm_params(seed, states):
    torch.manual_seed(seed)
    trans = _simplex(states, states)
    locs = torch.linspace(-2.0, 2.0, states) + 0.3 * torch.randn(states)
    return trans, locs


def make_hmm(trans, locs):
    def model(xs):
        with sg.plate("sequences", xs.shape[1], dim=-1):
            z = 0
            for t in sg.markov(range(xs.shape[0])):
                z = sg.sample(f"z_{t}", dist.Categorical(trans[z]), infer=ENUM)
                sg.sample(f"x_{t}", dist.Normal(locs[z], 1.0), obs=xs[t])
    return model


def hmm_model(seed=6):
    trans, locs = hmm_params(seed, 2)
    data = torch.tensor([[-1.8, 0.3], [1.2, 2.1], [-0.2, -2.4], [0.9, 0.1]])  # (T=4, N=2)
    return make_hmm(trans, locs), data, 1


MODELS = {"mixture": mixture_model, "chain": chain_model, "tree": tree_model,
          "nested_plates": nested_model, "global_shared": global_model,
          "hmm_markov_plate": hmm_model}


# ---- brute force ---------------------------------------------------------------------------

def exact_posterior(model, *args):
    """Every assignment of the latent sites, and its posterior probability."""
    configs = guide_configurations(model, *args)
    logs = torch.stack([handlers.trace(handlers.condition(model, data=values))
                        .get_trace(*args).log_prob_sum() for values in configs])
    return configs, torch.softmax(logs, 0), logs


def in_particles(model, num, dim):
    """The model in a plate of ``num`` independent copies: one posterior draw per copy."""
    def run(*args):
        with sg.plate("particles", num, dim=dim):
            return model(*args)
    return run


def sample_values(model, data, nesting, num):
    """``num`` joint posterior draws: site -> tensor (num, elements of the site)."""
    runner = infer_discrete(in_particles(model, num, -nesting - 1),
                            first_available_dim=-nesting - 2)
    tr = handlers.trace(runner).get_trace(data)
    return {name: site["value"].reshape(num, -1) for name, site in tr.items()
            if site["type"] == "sample" and not site["is_observed"]}


# ---- MAP -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", MODELS)
def test_map_equals_brute_force_argmax(name):
    model, data, nesting = MODELS[name]()
    configs, probs, logs = exact_posterior(model, data)
    top2 = logs.topk(2).values
    assert top2[0] - top2[1] > 1e-3, "the test needs a unique argmax"
    best = configs[int(logs.argmax())]
    tr = handlers.trace(infer_discrete(model, first_available_dim=-nesting - 1,
                                       temperature=0)).get_trace(data)
    for site, want in best.items():
        got = tr[site]["value"]
        assert got.shape == want.shape, (site, got.shape, want.shape)
        assert torch.equal(got, want), (site, got, want)
    # the replayed trace scores the MAP at the brute-force maximum
    assert torch.allclose(tr.log_prob_sum(), top2[0], rtol=1e-5)


def test_map_with_the_einsum_kernel_and_a_single_operand_summing_three_variables():
    """Engine-level: a factor over (a, b, c) alone sums all three in one contraction (they
    are drawn jointly), and forcing the max-shifted einsum kernel changes nothing."""
    from compiler.enumeration import Factor, plan_contraction
    from runtime.contract import execute
    from runtime.discrete import choose

    torch.manual_seed(7)
    sizes = {"a": 2, "b": 3, "c": 2, "d": 3}
    factors = [Factor("fabc", ("a", "b", "c")), Factor("fd", ("d", "i")),
               Factor("fcd", ("c", "d", "i"))]
    tensors = {"fabc": torch.randn(2, 3, 2), "fd": torch.randn(3, 2),
               "fcd": torch.randn(2, 3, 2)}
    for limit in (2 ** 18, 0):
        kwargs = dict(plate_sizes={"i": 2}, var_sizes=sizes, broadcast_limit=limit)
        plan = plan_contraction(factors, set(sizes), {"i"}, **kwargs)
        choices, log_max = choose(plan, tensors, temperature=0)
        _, log_z = choose(plan, tensors, temperature=1)
        assert torch.allclose(log_z, execute(plan, tensors), atol=1e-5)
        # brute force over a, b, c and the two copies of d (one per slice of plate i)
        best, best_value = None, -math.inf
        for a in range(2):
            for b in range(3):
                for c in range(2):
                    for d0 in range(3):
                        for d1 in range(3):
                            ds = (d0, d1)
                            v = float(tensors["fabc"][a, b, c]) + sum(
                                float(tensors["fd"][ds[i], i] + tensors["fcd"][c, ds[i], i])
                                for i in range(2))
                            if v > best_value:
                                best, best_value = (a, b, c, d0, d1), v
        got = tuple(int(choices[v].index) for v in "abc") + tuple(choices["d"].index.tolist())
        assert choices["d"].plates == ("i",)
        assert got == best
        assert float(log_max) == pytest.approx(best_value, abs=1e-5)


# ---- samples ---------------------------------------------------------------------------------

def _marginals(configs, probs):
    """site -> (elements, values) exact marginal probabilities, and the support per site."""
    out = {}
    for site in configs[0]:
        flat = torch.stack([c[site].reshape(-1) for c in configs])  # (configs, elements)
        values = torch.unique(flat)
        out[site] = (values, torch.stack([(probs[:, None] * (flat == v)).sum(0)
                                          for v in values], -1))
    return out


@pytest.mark.parametrize("name", MODELS)
def test_samples_match_exact_posterior_marginals(name):
    model, data, nesting = MODELS[name]()
    configs, probs, _ = exact_posterior(model, data)
    num = 4000
    draws = sample_values(model, data, nesting, num)
    for site, (values, exact) in _marginals(configs, probs).items():
        empirical = torch.stack([(draws[site] == v).double().mean(0) for v in values], -1)
        se = (exact * (1 - exact) / num).sqrt()
        assert ((empirical - exact).abs() <= 4 * se + 1e-9).all(), (site, empirical, exact)


def test_samples_match_a_pairwise_joint_and_the_whole_joint():
    """The chain's (z1, z2) joint, and a chi-square of the whole 81-state joint."""
    model, data, nesting = chain_model()
    configs, probs, _ = exact_posterior(model, data)
    num = 20000
    draws = sample_values(model, data, nesting, num)
    states = torch.stack([draws[f"z{t}"][:, 0] for t in range(4)], -1)  # (num, 4)
    code = (states * torch.tensor([27, 9, 3, 1])).sum(-1)
    exact_codes = torch.tensor([sum(int(c[f"z{t}"]) * 3 ** (3 - t) for t in range(4))
                                for c in configs])
    exact = torch.zeros(81, dtype=torch.float64).index_add_(0, exact_codes, probs.double())
    counts = torch.bincount(code, minlength=81).double()
    pair = counts.reshape(3, 3, 3, 3).sum((0, 3)) / num
    exact_pair = exact.reshape(3, 3, 3, 3).sum((0, 3))
    se = (exact_pair * (1 - exact_pair) / num).sqrt()
    assert ((pair - exact_pair).abs() <= 4 * se).all(), (pair, exact_pair)
    keep = exact * num >= 5  # chi-square over cells with enough expected counts
    rest = (~keep).sum() > 0
    observed = torch.cat([counts[keep], counts[~keep].sum().reshape(int(rest))])
    expected = torch.cat([exact[keep], exact[~keep].sum().reshape(int(rest))]) * num
    chi2 = float(((observed - expected) ** 2 / expected).sum())
    assert chi2 < _chi2_quantile(len(observed) - 1, z=3.72), chi2  # z=3.72: p = 1e-4


def _chi2_quantile(df, z):
    """Wilson-Hilferty approximation of the chi-square quantile at standard normal z."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_samples_match_exact_marginals_tightly(name):
    """200,000 draws: every marginal within 4 standard errors (each about 0.001)."""
    model, data, nesting = MODELS[name]()
    configs, probs, _ = exact_posterior(model, data)
    num = 200000
    draws = sample_values(model, data, nesting, num)
    for site, (values, exact) in _marginals(configs, probs).items():
        empirical = torch.stack([(draws[site] == v).double().mean(0) for v in values], -1)
        se = (exact * (1 - exact) / num).sqrt()
        assert ((empirical - exact).abs() <= 4 * se + 1e-9).all(), (site, empirical, exact)


# ---- the HMM: Viterbi ------------------------------------------------------------------------

def viterbi(trans, locs, xs):
    """The most likely state path of each sequence, written out by hand: (T, N)."""
    log_trans = trans.log()
    emit = dist.Normal(locs, 1.0).log_prob(xs[..., None])  # (T, N, K)
    score = log_trans[0] + emit[0]  # the model starts from state 0's transition row
    back = []
    for t in range(1, xs.shape[0]):
        step = score[:, :, None] + log_trans  # (N, from, to)
        back.append(step.argmax(1))
        score = step.amax(1) + emit[t]
    state = score.argmax(-1)
    path = [state]
    for pointers in reversed(back):
        state = pointers.gather(1, state[:, None]).squeeze(1)
        path.append(state)
    return torch.stack(path[::-1])


def test_hmm_map_path_equals_hand_written_viterbi():
    trans, locs = hmm_params(8, 4)
    torch.manual_seed(9)
    xs = locs[torch.randint(0, 4, (60, 5))] + torch.randn(60, 5)
    model = make_hmm(trans, locs)
    tr = handlers.trace(infer_discrete(model, first_available_dim=-2, temperature=0)
                        ).get_trace(xs)
    path = torch.stack([tr[f"z_{t}"]["value"] for t in range(60)])
    assert path.shape == (60, 5)
    assert torch.equal(path, viterbi(trans, locs, xs))


def test_hmm_sampling_runs_in_memory_linear_in_length():
    """T = 500 under markov: enumeration reuses two dims (no site's log density has more
    than two enumeration dims), so the forward pass keeps O(T) small operands; every state
    is a valid index with the sequence plate's shape."""
    trans, locs = hmm_params(10, 3)
    xs = torch.randn(500, 2)
    enum_tr = handlers.trace(handlers.enum(make_hmm(trans, locs), first_available_dim=-2)
                             ).get_trace(xs)
    assert max(site["value"].dim() for site in enum_tr.values()) <= 3  # (K, 1, 1) at most
    tr = handlers.trace(infer_discrete(make_hmm(trans, locs), first_available_dim=-2)
                        ).get_trace(xs)
    values = torch.stack([tr[f"z_{t}"]["value"] for t in range(500)])
    assert values.shape == (500, 2) and values.min() >= 0 and values.max() <= 2


# ---- usage: shapes, return values, decorator, replayed latents -------------------------------

def test_values_have_the_shapes_of_prior_draws_and_the_model_returns_them():
    for factory in (mixture_model, nested_model, global_model, hmm_model):
        model, data, nesting = factory()
        prior = handlers.trace(model).get_trace(data)
        tr = handlers.trace(infer_discrete(model, first_available_dim=-nesting - 1)
                            ).get_trace(data)
        for name, site in prior.items():
            if site["type"] == "sample" and not site["is_observed"]:
                assert tr[name]["value"].shape == site["value"].shape, name
                assert tr[name]["value"].dtype == site["value"].dtype, name
    model, data, _ = mixture_model()
    returned = infer_discrete(model, first_available_dim=-2, temperature=0)(data)
    configs, _, logs = exact_posterior(model, data)
    assert torch.equal(returned, configs[int(logs.argmax())]["k"])


def test_decorator_form_and_config_enumerate():
    @infer_discrete(first_available_dim=-2, temperature=0)
    @config_enumerate
    def model(x):
        with sg.plate("data", len(x)):
            k = sg.sample("k", dist.Categorical(torch.tensor([0.5, 0.5])))
            sg.sample("obs", dist.Normal(torch.tensor([-3.0, 3.0])[k], 1.0), obs=x)
        return k

    assert model(torch.tensor([-2.5, 2.0, 4.0, -0.5])).tolist() == [0, 1, 1, 0]


def test_a_replayed_continuous_latent_conditions_the_discrete_posterior():
    """infer_discrete(replay(model, guide_trace)): the MAP given the guide's value of loc."""
    data = torch.tensor([-0.4, 1.7, 0.9])

    def model(x):
        loc = sg.sample("loc", dist.Normal(0.0, 2.0))
        with sg.plate("data", len(x)):
            k = sg.sample("k", dist.Bernoulli(0.5), infer=ENUM)
            sg.sample("obs", dist.Normal(loc * k, 0.5), obs=x)

    def guide(x):
        sg.sample("loc", dist.Normal(1.5, 0.1))

    guide_tr = handlers.trace(guide).get_trace(data)
    loc = guide_tr["loc"]["value"]
    tr = handlers.trace(infer_discrete(handlers.replay(model, trace=guide_tr),
                                       first_available_dim=-2, temperature=0)).get_trace(data)
    assert torch.equal(tr["loc"]["value"], loc)
    # per point: k = 1 iff N(x; loc, .5) > N(x; 0, .5), i.e. x closer to loc than to 0
    want = ((data - loc).abs() < data.abs()).float()
    assert torch.equal(tr["k"]["value"], want)


def test_observed_sites_stay_observed_and_params_are_used():
    def model(x):
        p = sg.param("p", torch.tensor(0.9), constraint=sg.constraints.unit_interval)
        with sg.plate("data", len(x)):
            k = sg.sample("k", dist.Bernoulli(p), infer=ENUM)
            sg.sample("obs", dist.Normal(k, 1.0), obs=x)

    data = torch.tensor([0.2, 0.4])
    tr = handlers.trace(infer_discrete(model, first_available_dim=-2, temperature=0)
                        ).get_trace(data)
    assert tr["obs"]["is_observed"] and torch.equal(tr["obs"]["value"], data)
    # the prior 0.9 outweighs data closer to 0: both points pick k = 1
    assert tr["k"]["value"].tolist() == [1.0, 1.0]


def test_without_enumerated_sites_it_warns_and_runs_the_model():
    from svigraph.errors import EnumerationWarning

    def model():
        return sg.sample("x", dist.Normal(0.0, 1.0))

    with pytest.warns(EnumerationWarning, match="no site marked"):
        value = infer_discrete(model, first_available_dim=-1)()
    assert value.shape == ()


def test_subsampled_plate_replays_the_same_subsample():
    """Each point's MAP component in a mixture with known parameters is its own argmax; the
    run that returns the values uses the subsample the values were chosen for."""
    weights, locs = torch.tensor([0.3, 0.3, 0.4]), torch.tensor([-3.0, 0.0, 3.0])
    data = torch.tensor([-3.0, 0.1, 2.9, -0.2, 3.3, -2.5, 1.4, 0.6])

    def model(x):
        with sg.plate("data", len(x), subsample_size=3) as idx:
            k = sg.sample("k", dist.Categorical(weights), infer=ENUM)
            sg.sample("obs", dist.Normal(locs[k], 1.0), obs=x[idx])
        return idx, k

    for _ in range(5):
        idx, k = infer_discrete(model, first_available_dim=-2, temperature=0)(data)
        joint = weights.log() + dist.Normal(locs, 1.0).log_prob(data[idx][:, None])
        assert torch.equal(k, joint.argmax(-1)), (idx, k)


def test_one_hot_sites_and_single_value_supports():
    """An event-shaped support (OneHotCategorical) comes back one-hot per slice; a support of
    one value (which no factor varies along) gets that value."""
    locs = torch.tensor([-3.0, 0.0, 3.0])

    def model(x):
        with sg.plate("data", 3):
            z = sg.sample("z", dist.OneHotCategorical(torch.tensor([0.2, 0.3, 0.5])),
                          infer=ENUM)
            one = sg.sample("one", dist.Categorical(torch.tensor([1.0])), infer=ENUM)
            sg.sample("obs", dist.Normal((z * locs).sum(-1) + one, 1.0), obs=x)

    tr = handlers.trace(infer_discrete(model, first_available_dim=-2, temperature=0)
                        ).get_trace(torch.tensor([-3.0, 0.2, 3.1]))
    assert torch.equal(tr["z"]["value"], torch.eye(3))
    assert torch.equal(tr["one"]["value"], torch.zeros(3, dtype=torch.long))

# ---- errors ----------------------------------------------------------------------------------

def test_first_available_dim_must_be_negative():
    model, _, _ = mixture_model()
    for bad in (None, 0, 2):
        with pytest.raises(EnumerationError, match="negative integer first_available_dim") as err:
            infer_discrete(model, first_available_dim=bad)
        assert "first_available_dim=-(max_plate_nesting + 1)" in str(err.value)
    with pytest.raises(ValueError, match="temperature must be 0"):
        infer_discrete(model, first_available_dim=-2, temperature=0.5)


def test_first_available_dim_colliding_with_a_plate_names_site_plate_and_fix():
    model, data, _ = nested_model()
    with pytest.raises(EnumerationError) as err:
        infer_discrete(model, first_available_dim=-2)(data)
    e = err.value
    assert e.site == "u" and e.plate == "groups"
    assert "plate 'groups' uses dim -2" in str(e) and "first_available_dim=-2" in str(e)
    assert "fix: pass first_available_dim=-3 or less" in str(e)


def test_a_sampled_latent_reading_enumerated_values_is_refused():
    def model(x):
        k = sg.sample("k", dist.Bernoulli(0.5), infer=ENUM)
        y = sg.sample("y", dist.Normal(3.0 * k, 1.0))  # neither enumerated nor replayed
        sg.sample("obs", dist.Normal(y, 1.0), obs=x)

    with pytest.raises(EnumerationError) as err:
        infer_discrete(model, first_available_dim=-1)(torch.tensor(1.0))
    assert err.value.site == "y" and "handlers.replay" in str(err.value)
    assert "value shape (2,)" in str(err.value)


def test_sequential_enumeration_is_refused():
    def model():
        sg.sample("k", dist.Bernoulli(0.5), infer={"enumerate": "sequential"})

    with pytest.raises(EnumerationError, match="sequential") as err:
        infer_discrete(model, first_available_dim=-1)()
    assert err.value.site == "k" and '"parallel"' in str(err.value)
