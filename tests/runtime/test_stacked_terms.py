"""Stacked log densities (runtime.stacked_terms) equal the site-by-site ones.

Sites in a loop are computed as one ``log_prob`` of their stacked parameters. Each value
must equal the per-site value exactly; losses and gradients must equal those of the
site-by-site path (forced by raising ``MIN_GROUP``) for the same random draws; and a group
whose sites stop fitting (another class, other attributes) falls back to per-site terms.
"""

import pytest
import torch

import runtime.stacked_terms as stacked_terms
import svigraph as sg
from runtime.terms import site_log_prob
from svigraph import distributions as dist
from svigraph.constraints import positive
from svigraph.infer import Trace_ELBO, TraceEnum_ELBO, TraceGraph_ELBO
from tests.models import hmm_model, no_guide

N = 6
DATA = torch.tensor([0.3, -1.2, 2.0, 0.7, 1.1, -0.4])


def chain_model(data):
    z = torch.tensor(0.0)
    for i in range(N):
        z = sg.sample(f"z{i}", dist.Normal(z, 1.0))
        sg.sample(f"x{i}", dist.Normal(z, 0.5), obs=data[i])


def chain_guide(data, score_every=2):
    for i in range(N):
        loc = sg.param(f"loc{i}", torch.tensor(0.1 * i))
        scale = sg.param(f"scale{i}", torch.tensor(0.8), constraint=positive)
        d = dist.Normal(loc, scale)
        sg.sample(f"z{i}", d.with_rsample(False) if i % score_every == 0 else d)


HMM_DATA = torch.tensor([[0.1, -1.0, 2.0], [1.2, -0.3, 0.8], [-1.5, 0.4, 1.1], [0.9, 1.3, -0.2],
                         [0.0, -0.7, 1.6]])


def loss_and_grads(elbo, model, guide, data, seed=0):
    sg.set_rng_seed(seed)
    loss = elbo.differentiable_loss(model, guide, data)
    leaves = elbo.param_leaves()
    return loss.detach(), torch.autograd.grad(loss, leaves)


CASES = [
    ("chain-trace", Trace_ELBO, chain_model, chain_guide, DATA),
    ("chain-tracegraph", TraceGraph_ELBO, chain_model, chain_guide, DATA),
    ("hmm-enum", lambda: TraceEnum_ELBO(max_plate_nesting=1), hmm_model, no_guide, HMM_DATA),
]


@pytest.mark.parametrize("name, make_elbo, model, guide, data", CASES, ids=[c[0] for c in CASES])
def test_stacked_equals_site_by_site(name, make_elbo, model, guide, data, monkeypatch):
    sg.clear_param_store()
    elbo = make_elbo()
    loss_and_grads(elbo, model, guide, data)  # first step: creates params, validates plan
    plan = elbo.last_plan
    loss, grads = loss_and_grads(elbo, model, guide, data, seed=1)
    assert stacked_terms._LAYOUTS.get(plan), "the loop's sites should stack"
    monkeypatch.setattr(stacked_terms, "MIN_GROUP", 10 ** 9)
    stacked_terms._LAYOUTS.pop(plan)
    ref_loss, ref_grads = loss_and_grads(elbo, model, guide, data, seed=1)
    assert stacked_terms._LAYOUTS.get(plan) == ()
    assert torch.equal(loss, ref_loss)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-6, atol=1e-7)


def broadcast_obs_model(data):
    """Scalar observations in a loop inside a plate at dim -2: each site's own log density
    is a scalar, its plate-expanded one (4, 1): the stack is expanded to more dims."""
    loc = sg.param("loc", torch.tensor(0.2))
    with sg.plate("rows", 4, dim=-2):
        for i in range(3):
            sg.sample(f"x{i}", dist.Normal(loc, 1.0), obs=data[i])


def test_stacked_rows_expanded_to_more_dims_equal_site_by_site(monkeypatch):
    sg.clear_param_store()
    elbo = Trace_ELBO()
    loss_and_grads(elbo, broadcast_obs_model, no_guide, DATA)
    plan = elbo.last_plan
    (group,) = stacked_terms._LAYOUTS[plan]
    assert len(group.out_shape) > len(group.own_shape)
    trace = sg.handlers.trace(broadcast_obs_model).get_trace(DATA)
    result = stacked_terms._group_log_probs(group, [trace.nodes[n] for n in group.names])
    assert result is not None
    for name, value in zip(group.names, result.unbound()):
        assert value.shape == (4, 1) and torch.equal(value, site_log_prob(trace.nodes[name]))
    loss, grads = loss_and_grads(elbo, broadcast_obs_model, no_guide, DATA)
    monkeypatch.setattr(stacked_terms, "MIN_GROUP", 10 ** 9)
    stacked_terms._LAYOUTS.pop(plan)
    ref_loss, ref_grads = loss_and_grads(elbo, broadcast_obs_model, no_guide, DATA)
    assert torch.equal(loss, ref_loss)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-6, atol=1e-7)


def test_each_stacked_value_equals_its_sites_log_prob():
    sg.clear_param_store()
    trace = sg.handlers.trace(sg.handlers.seed(chain_model, rng_seed=0)).get_trace(DATA)
    sites = {name: site for name, site in trace.nodes.items() if site["type"] == "sample"}
    groups = stacked_terms._plan_groups({"model": sites}, [("model", n) for n in sites])
    assert [len(g.names) for g in groups] == [2 * N]  # every z and x: scalar Normals
    for group in groups:
        result = stacked_terms._group_log_probs(group, [sites[n] for n in group.names])
        for name, value in zip(group.names, result.unbound()):
            assert torch.equal(value, site_log_prob(sites[name]))


def test_two_sites_of_one_kind_are_not_stacked_three_are():
    """Groups start at ``MIN_GROUP`` = 3 sites: two stacked cost more than apart."""
    sg.clear_param_store()
    trace = sg.handlers.trace(sg.handlers.seed(chain_model, rng_seed=0)).get_trace(DATA)
    sites = {name: site for name, site in trace.nodes.items() if site["type"] == "sample"}
    for count, groups in ((2, 0), (3, 1)):
        names = [("model", f"x{i}") for i in range(count)]
        assert len(stacked_terms._plan_groups({"model": sites}, names)) == groups, count


def test_a_site_that_changes_class_falls_back_to_per_site_terms():
    sg.clear_param_store()
    trace = sg.handlers.trace(sg.handlers.seed(chain_model, rng_seed=0)).get_trace(DATA)
    sites = {name: site for name, site in trace.nodes.items() if site["type"] == "sample"}
    (group,) = [g for g in stacked_terms._plan_groups({"model": sites},
                                                      [("model", f"x{i}") for i in range(N)])]
    changed = dict(sites)
    changed["x3"] = dict(sites["x3"], fn=dist.Laplace(sites["x3"]["fn"].loc, 0.5))
    assert stacked_terms._group_log_probs(group, [changed[n] for n in group.names]) is None


def test_unstackable_distributions_are_left_alone():
    """A class whose state is not batch-shaped tensors (Beta keeps a Dirichlet) never
    groups, however many sites share its shapes."""
    def model():
        for i in range(4):
            sg.sample(f"p{i}", dist.Beta(2.0, 3.0), obs=torch.tensor(0.25 + 0.1 * i))
    trace = sg.handlers.trace(model).get_trace()
    sites = dict(trace.nodes.items())
    assert stacked_terms._plan_groups({"model": sites}, [("model", n) for n in sites]) == ()


def test_a_subclass_with_its_own_log_prob_is_left_alone():
    class Tempered(dist.Normal):
        def log_prob(self, value):
            return 0.5 * super().log_prob(value).sum()  # not elementwise

    def model():
        for i in range(3):
            sg.sample(f"x{i}", Tempered(0.0, 1.0), obs=torch.tensor(0.1 * i))
    sites = dict(sg.handlers.trace(model).get_trace().nodes.items())
    assert stacked_terms._plan_groups({"model": sites}, [("model", n) for n in sites]) == ()


def test_a_group_whose_batch_shape_changes_falls_back():
    """The structure key fixes value shapes, not parameter shapes: sites whose loc is (3,)
    on one step and a scalar on the next keep one plan, and the stacked path must not
    reuse the first step's layout (it would broadcast along the wrong axis)."""
    values = torch.tensor([[0.5, -1.0, 2.0], [1.5, 0.2, -0.3], [0.0, 0.7, 1.1]])
    calls = []

    def model():
        vector = not calls
        calls.append(1)
        for i in range(3):
            loc = torch.tensor([0.1, 0.2, 0.3]) if vector else torch.tensor(0.4 * i)
            sg.sample(f"x{i}", dist.Normal(loc, 1.0).to_event(0), obs=values[i])

    sg.clear_param_store()
    elbo = Trace_ELBO()
    def guide():
        pass

    elbo.loss(model, guide)  # first run: traced, compiled, layout planned
    loss = elbo.loss(model, guide)
    assert len(elbo._cache(model, guide)) == 1  # one plan for both runs
    expected = -sum(float(dist.Normal(0.4 * i, 1.0).log_prob(values[i]).sum())
                    for i in range(3))
    assert loss == pytest.approx(expected, rel=1e-6)


HMM_LONG = torch.linspace(-2.0, 2.0, 40 * 3).reshape(40, 3).sin() * 2.0


def spy_on_stacks(monkeypatch):
    """Record, per contraction, how many scan groups got their factors as whole stacks and
    whether the per-site restack found any; returns the list it appends to."""
    import runtime.executor as executor
    import runtime.scan as scan

    seen = []
    real_execute, real_restack = executor.execute, scan.restack

    def execute(*args, stacks=None, **kwargs):
        seen.append(("stacks", len(stacks or ())))
        return real_execute(*args, stacks=stacks, **kwargs)

    def restack(tensors):
        out = real_restack(tensors)
        seen.append(("restack", len(tensors), out is not None))
        return out

    monkeypatch.setattr(executor, "execute", execute)
    monkeypatch.setattr(scan, "restack", restack)
    return seen


def test_a_scan_takes_the_stacked_log_densities_whole(monkeypatch):
    """An HMM long enough for the parallel scan: each role's factors reach the scan as a
    slice of their group's stacked log densities (no tensor per site), with the same loss
    and gradients as the site-by-site path (whose factors the scan stacks itself)."""
    seen = spy_on_stacks(monkeypatch)
    sg.clear_param_store()
    elbo = TraceEnum_ELBO(max_plate_nesting=1)
    loss_and_grads(elbo, hmm_model, no_guide, HMM_LONG)
    plan = elbo.last_plan
    assert "scan" in str(plan.contraction)
    seen.clear()
    loss, grads = loss_and_grads(elbo, hmm_model, no_guide, HMM_LONG, seed=1)
    # four roles' groups (z and x at odd and even steps) come whole; the initial vector
    # (z_0's factor, a site of its own, with x_0's) is stacked from its two tensors
    assert ("stacks", 4) in seen and ("restack", 2, False) in seen, seen
    assert not [s for s in seen if s[0] == "restack" and s[1] > 2], seen
    seen.clear()
    monkeypatch.setattr(stacked_terms, "MIN_GROUP", 10 ** 9)
    stacked_terms._LAYOUTS.pop(plan)
    ref_loss, ref_grads = loss_and_grads(elbo, hmm_model, no_guide, HMM_LONG, seed=1)
    assert ("stacks", 0) in seen and not any(s[-1] for s in seen if s[0] == "restack"), seen
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=1e-6)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-6, atol=1e-7)


def varied_hmm(data, how):
    """``hmm_model`` with step 7's observation masked (by the distribution's ``mask`` or
    by ``handlers.mask``); the caller may scale or mask the whole model."""
    trans = sg.param("trans", torch.tensor([[0.8, 0.2], [0.3, 0.7]]),
                     constraint=sg.constraints.simplex)
    locs = sg.param("locs", torch.tensor([-1.0, 1.0]))
    keep = torch.tensor([True, False, True])
    with sg.plate("seqs", data.shape[1], dim=-1):
        z = 0
        for t in sg.markov(range(data.shape[0])):
            z = sg.sample(f"z{t}", dist.Categorical(trans[z]), infer={"enumerate": "parallel"})
            x = dist.Normal(locs[z], 1.0)
            if t == 7 and how == "dist-mask":
                sg.sample(f"x{t}", x.mask(keep), obs=data[t])
            elif t == 7 and how == "handler-mask":
                with sg.handlers.mask(mask=keep):
                    sg.sample(f"x{t}", x, obs=data[t])
            else:
                sg.sample(f"x{t}", x, obs=data[t])


# how many of the four roles' groups reach the scan whole
WHOLE = {"plain": 4, "dist-mask": 3, "handler-mask": 0, "scaled": 0, "all-masked": 0}


@pytest.mark.parametrize("how", list(WHOLE))
def test_a_masked_or_scaled_site_keeps_the_per_site_path(how, monkeypatch):
    """A masked distribution is a site of another class: its group's role is stacked site
    by site (the other roles come whole). A mask or a scale from a handler is not part of
    the structure key: each step checks for one, and a step with one runs its factors the
    site-by-site way, masked and scaled. Loss and gradients equal the path with no
    stacking at all."""
    def model(data):
        if how == "scaled":
            with sg.handlers.scale(scale=0.5):
                varied_hmm(data, how)
        elif how == "all-masked":  # every site the same mask: one (mask, scale) pair
            with sg.handlers.mask(mask=torch.tensor([True, False, True])):
                varied_hmm(data, how)
        else:
            varied_hmm(data, how)

    seen = stacked_step_equals_site_by_site(model, monkeypatch)
    assert [s for s in seen if s[0] == "stacks"] == [("stacks", WHOLE[how])], seen


def subsampled_hmm(data):
    """``hmm_model`` in a subsampled plate of sequences: every site has the plate's scale,
    which the contraction applies; the whole-stack path is taken all the same."""
    trans = sg.param("trans", torch.tensor([[0.8, 0.2], [0.3, 0.7]]),
                     constraint=sg.constraints.simplex)
    locs = sg.param("locs", torch.tensor([-1.0, 1.0]))
    with sg.plate("seqs", 6, subsample=torch.tensor([0, 2, 5]), dim=-1):
        z = 0
        for t in sg.markov(range(data.shape[0])):
            z = sg.sample(f"z{t}", dist.Categorical(trans[z]), infer={"enumerate": "parallel"})
            sg.sample(f"x{t}", dist.Normal(locs[z], 1.0), obs=data[t])


def test_a_subsampled_plate_scale_goes_with_the_stacks(monkeypatch):
    seen = stacked_step_equals_site_by_site(subsampled_hmm, monkeypatch)
    assert ("stacks", 4) in seen, seen


def stacked_step_equals_site_by_site(model, monkeypatch):
    """Take a step of ``model`` on ``HMM_LONG`` (after a first one), then the same step with
    nothing stacked; assert equal losses and gradients. Returns what ``spy_on_stacks`` saw
    during the stacked step."""
    seen = spy_on_stacks(monkeypatch)
    sg.clear_param_store()
    elbo = TraceEnum_ELBO(max_plate_nesting=1)
    loss_and_grads(elbo, model, no_guide, HMM_LONG)
    plan = elbo.last_plan
    seen.clear()
    loss, grads = loss_and_grads(elbo, model, no_guide, HMM_LONG, seed=1)
    stacked_seen = list(seen)
    monkeypatch.setattr(stacked_terms, "MIN_GROUP", 10 ** 9)
    stacked_terms._LAYOUTS.pop(plan)
    ref_loss, ref_grads = loss_and_grads(elbo, model, no_guide, HMM_LONG, seed=1)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=1e-6)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-6, atol=1e-7)
    return stacked_seen


def test_terms_of_whole_stacks_are_the_site_by_site_terms():
    """``LossParts.terms`` when the scan took stacks whole: the same keys in the same
    order, each equal to the site's own masked log density, cut from the stacks when read."""
    from runtime.executor import run_plan
    from svigraph.recording import record

    sg.clear_param_store()
    elbo = TraceEnum_ELBO(max_plate_nesting=1)
    loss_and_grads(elbo, hmm_model, no_guide, HMM_LONG)
    plan = elbo.last_plan
    run_model, run_guide = elbo._programs(hmm_model, no_guide)
    guide_rec, model_rec = record(run_model, run_guide, (HMM_LONG,), {})
    records = {"guide": guide_rec.sites, "model": model_rec.sites}
    parts = run_plan(plan, records)
    assert type(parts.terms) is not dict  # the whole-stack path, terms deferred
    keys = [t.key for t in plan.terms] + [t.key for t in plan.enum_terms]
    assert list(parts.terms) == keys and len(parts.terms) == len(keys)
    for key, value in parts.terms.items():
        assert torch.equal(value, site_log_prob(model_rec.sites[key[1]])), key


def test_restack_only_takes_consecutive_rows_of_one_stack():
    base = torch.randn(5, 3, requires_grad=True) * 1.0
    group = stacked_terms.GroupLogProbs("model", tuple("abcde"), [{}] * 5, base, None)
    rows = group.unbound()
    assert torch.equal(stacked_terms.restack(list(rows[1:4])), base[1:4])
    assert stacked_terms.restack([rows[0], rows[2]]) is None          # not consecutive
    assert stacked_terms.restack([rows[1], rows[0]]) is None          # not in order
    assert stacked_terms.restack([rows[0], base[1].clone()]) is None  # not all from the stack
    other = stacked_terms.GroupLogProbs("model", tuple("abcde"), [{}] * 5, base, None)
    assert stacked_terms.restack([rows[0], other.unbound()[1]]) is None  # two stacks
    wide = stacked_terms.GroupLogProbs("model", tuple("abcde"), [{}] * 5, base, (2, 3))
    expanded = wide.unbound()
    assert all(r.shape == (2, 3) for r in expanded)
    assert torch.equal(stacked_terms.restack(list(expanded)), torch.stack(expanded))
    assert torch.equal(stacked_terms.restack(list(expanded[2:])), torch.stack(expanded[2:]))


def test_a_row_asked_for_alone_is_cut_alone_and_restacks_with_the_rest():
    """``StackedLogProbs.get``: the first row asked of a group is cut by itself (a scan
    that took the rest whole needs no split of the whole stack); a second splits it all.
    Rows cut either way restack as one slice."""
    base = torch.randn(4, 3, requires_grad=True) * 1.0
    group = stacked_terms.GroupLogProbs("model", tuple("abcd"), [{}] * 4, base, None)
    layout = stacked_terms._Layout([stacked_terms._Group("model", tuple("abcd"), None, 0, 0,
                                                         (3,), (), (3,), None)])
    stacked = stacked_terms.StackedLogProbs(layout, [group])
    first = stacked.get(("model", "b"))
    assert torch.equal(first, base[1]) and stacked._rows[0].__class__ is dict
    assert stacked.get(("model", "b")) is first
    rest = [stacked.get(("model", n)) for n in "acd"]
    assert type(stacked._rows[0]) is tuple
    assert all(torch.equal(r, base[i]) for r, i in zip(rest, (0, 2, 3)))
    assert torch.equal(stacked_terms.restack([rest[0], first, rest[1]]), base[:3])
    assert stacked.get(("model", "z")) is None and stacked.get(("guide", "a")) is None


def test_rows_that_are_one_tensor_are_broadcast_not_copied():
    """Every site enumerated at one dim shares its support tensor: the stack is a view of
    it (stride 0 along the sites), equal to torch.stack; distinct rows are stacked."""
    shared = torch.arange(3.0).reshape(3, 1)
    rows = stacked_terms._stack_rows([shared] * 4)
    assert rows.stride(0) == 0 and rows.data_ptr() == shared.data_ptr()
    assert torch.equal(rows, torch.stack([shared] * 4))
    distinct = [shared, shared.clone()]
    assert torch.equal(stacked_terms._stack_rows(distinct), torch.stack(distinct))
    assert stacked_terms._stack_rows(distinct).stride(0) != 0


def test_rows_that_view_one_number_are_broadcast_with_its_gradient():
    """Views of one 0-dim tensor (a constant scale, or a scalar param broadcast per site)
    stack as a broadcast of it: equal to torch.stack, and the same gradient reaches it;
    rows of another shape or another base are stacked."""
    sigma = torch.tensor(0.7, requires_grad=True)
    rows = [sigma.expand(2, 3) for _ in range(5)]
    stacked = stacked_terms._stack_rows(rows)
    assert stacked.stride() == (0, 0, 0) and torch.equal(stacked, torch.stack(rows))
    weights = torch.randn(5, 2, 3)
    (grad,) = torch.autograd.grad((stacked * weights).sum(), sigma)
    (ref,) = torch.autograd.grad((torch.stack(rows) * weights).sum(), sigma)
    assert torch.allclose(grad, ref, rtol=1e-6, atol=0)
    mixed = rows[:2] + [torch.tensor(0.7).expand(2, 3)]
    assert stacked_terms._stack_rows(mixed).stride(0) != 0
    misshapen = [sigma.expand(2, 3), sigma.expand(3, 2)]
    with pytest.raises(RuntimeError):  # torch.stack's own error, as for any misfit
        stacked_terms._stack_rows(misshapen)


def test_rows_indexed_alike_are_broadcast_with_their_gradient():
    """Rows made by indexing one table with one index tensor (an HMM's ``trans[z]`` at each
    step whose states are enumerated at one dim) stack as a broadcast of the first: equal
    to torch.stack, with the same gradient through one indexing node. Equal values made any
    other way are stacked: another index tensor, another table node, a table changed in
    place between the two, another kind of indexing."""
    table = torch.rand(4, 3, requires_grad=True)
    scaled = table * 2.0
    z = torch.arange(4).reshape(4, 1)
    rows = [scaled[z] for _ in range(5)]
    stacked = stacked_terms._stack_rows(rows)
    assert stacked.stride(0) == 0 and torch.equal(stacked, torch.stack(rows))
    weights = torch.randn(5, 4, 1, 3)
    (grad,) = torch.autograd.grad((stacked * weights).sum(), table, retain_graph=True)
    (ref,) = torch.autograd.grad((torch.stack(rows) * weights).sum(), table)
    torch.testing.assert_close(grad, ref, rtol=1e-6, atol=1e-7)
    changed = table * 2.0
    before = changed[z]
    changed.mul_(1.5)
    col = torch.arange(3).reshape(3, 1)
    columns = [scaled[:, col], scaled[:, col]]  # indices (None, col): a multi-index node
    assert stacked_terms._stack_rows(columns).stride(0) == 0
    for unlike in ([scaled[z], scaled[z.clone()]], [scaled[z], (table * 2.0)[z]],
                   [before, changed[z]], [scaled[1], scaled[1]],
                   [scaled[:, col], scaled[:, col.clone()]]):
        out = stacked_terms._stack_rows(unlike)
        assert out.stride(0) != 0 and torch.equal(out, torch.stack(unlike))


def test_views_of_the_same_entries_are_broadcast_others_stacked():
    """Views of one tensor (not tracked by autograd) at the same offset, shape and strides
    read the same entries: broadcast. Another offset, or views autograd tracks: stacked."""
    base = torch.arange(12.0).reshape(4, 3)
    same = [base[1], base[1], base[1]]
    assert stacked_terms._stack_rows(same).stride(0) == 0
    assert torch.equal(stacked_terms._stack_rows(same), torch.stack(same))
    shifted = [base[1], base[2]]
    assert torch.equal(stacked_terms._stack_rows(shifted), torch.stack(shifted))
    leaf = base.clone().requires_grad_()
    assert stacked_terms._stack_rows([leaf[1], leaf[1]]).stride(0) != 0
    own = [base[1], base[1].requires_grad_()]  # two variables, one memory
    assert stacked_terms._stack_rows(own).stride(0) != 0


def _index_nodes(loss):
    """The number of distinct IndexBackward0 nodes the loss's backward pass runs."""
    seen, stack, count = set(), [loss.grad_fn], 0
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        count += node.name() == "IndexBackward0"
        stack.extend(fn for fn, _ in node.next_functions)
    return count


def test_an_hmm_table_is_indexed_once_per_enumeration_dim(monkeypatch):
    """An HMM's steps index ``trans`` and ``locs`` with the states enumerated at one of two
    alternating dims: the loss's graph holds two indexing nodes per table per dim, where
    site by site it holds one per step, and the transitions' log density is computed once
    per dim; loss equal, gradients to float rounding."""
    sg.clear_param_store()
    elbo = TraceEnum_ELBO(max_plate_nesting=1)
    data = torch.randn(12, 3, generator=torch.Generator().manual_seed(0))
    loss_and_grads(elbo, hmm_model, no_guide, data)
    groups = []
    real = stacked_terms._group_log_probs
    monkeypatch.setattr(stacked_terms, "_group_log_probs",
                        lambda group, sites: groups.append(real(group, sites)) or groups[-1])
    sg.set_rng_seed(1)
    loss = elbo.differentiable_loss(hmm_model, no_guide, data)
    # the transitions' rows (same table, same states, same values) are one log density,
    # broadcast; the emissions' (other observations at each step) are one each
    once = sorted((g.stack.stride(0) == 0, g.names[0][0]) for g in groups)
    assert once == [(False, "x"), (False, "x"), (True, "z"), (True, "z")], once
    grads = torch.autograd.grad(loss, elbo.param_leaves(), retain_graph=True)
    few = _index_nodes(loss)
    monkeypatch.setattr(stacked_terms, "_equal_by_construction", lambda first, tensors: False)
    monkeypatch.setattr(stacked_terms, "_group_log_probs", real)
    sg.set_rng_seed(1)
    ref = elbo.differentiable_loss(hmm_model, no_guide, data)
    ref_grads = torch.autograd.grad(ref, elbo.param_leaves(), retain_graph=True)
    assert few <= 2 * 2 + 4 < _index_nodes(ref)  # (+ the first steps, outside the groups)
    assert torch.equal(loss, ref)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-6, atol=1e-7)
