"""The error catalogue, after Pyro's ``tests/infer/test_valid_models.py``.

Each valid model runs under every ELBO (``assert_ok``). Each mistake raises the right class
with its structured fields set, and a message that names the site (and the plate and the
shapes where they matter), carries a ``fix:`` line and stays under 20 lines
(``assert_error``). Cases where svigraph does not yet behave as it should are kept, asserting
the right behaviour.
"""

import pytest
import torch

import svigraph as sg
from svigraph import distributions as dist
from svigraph import errors
from svigraph.constraints import positive, unit_interval
from svigraph.infer import SVI, Trace_ELBO, TraceGraph_ELBO

ELBOS = [Trace_ELBO, TraceGraph_ELBO]


@pytest.fixture(params=ELBOS, ids=lambda cls: cls.__name__)
def elbo(request):
    return request.param()


# ---------------------------------------------------------------------------------------------
# helpers

def assert_ok(model, guide, elbo, *args):
    """A differentiable loss runs, is finite, and so is every gradient it produces."""
    loss = elbo.differentiable_loss(model, guide, *args)
    assert isinstance(loss, torch.Tensor) and loss.dim() == 0
    assert bool(torch.isfinite(loss)), loss
    if loss.requires_grad:
        loss.backward()
        for leaf in elbo.param_leaves():
            assert leaf.grad is None or bool(torch.isfinite(leaf.grad).all()), leaf.grad
    return loss


def check_message(err, *, site=None, plate=None, contains=()):
    """The message template of STYLE 3.7: names the site (and plate), has a fix, is short."""
    message = str(err)
    assert message.strip(), f"empty message from {type(err).__name__}"
    lines = message.splitlines()
    assert len(lines) < 20, message
    assert "fix:" in message, message
    if site is not None:
        assert repr(site) in message, message
    if plate is not None:
        assert repr(plate) in message or f"{plate}[" in message, message
    for text in contains:
        assert text in message, f"{text!r} not in:\n{message}"
    if isinstance(err, errors.SvigraphError):
        assert err.fix, "the structured fix is empty"
        assert lines[0] == err.headline and err.headline.strip()
        if site is not None:
            assert err.site == site, (err.site, site)
        if plate is not None:
            assert err.plate == plate, (err.plate, plate)


def assert_error(model, guide, elbo, error_class, *args, site, plate=None, contains=()):
    """``elbo.differentiable_loss`` raises ``error_class`` whose message follows the template."""
    with pytest.raises(error_class) as info:
        elbo.differentiable_loss(model, guide, *args)
    check_message(info.value, site=site, plate=plate, contains=contains)
    return info.value


def empty_guide(*args):
    pass


DATA = torch.tensor([0.5, -0.3, 1.2, 0.1, 0.9, -1.0])


def loc_guide(*args):
    sg.sample("mu", dist.Normal(sg.param("q_loc", torch.tensor(0.0)), 1.0))


# ---------------------------------------------------------------------------------------------
# valid models

def test_ok_simple_normal(elbo):
    """One latent, one observation."""
    def model(x):
        mu = sg.sample("mu", dist.Normal(0.0, 10.0))
        sg.sample("obs", dist.Normal(mu, 1.0), obs=x[0])
    assert_ok(model, loc_guide, elbo, DATA)


def test_ok_plated(elbo):
    """A vectorized data plate."""
    def model(x):
        mu = sg.sample("mu", dist.Normal(0.0, 10.0))
        with sg.plate("data", len(x)):
            sg.sample("obs", dist.Normal(mu, 1.0), obs=x)
    assert_ok(model, loc_guide, elbo, DATA)


def test_ok_subsampled_plate(elbo):
    """A subsampled plate: the guide and model see the same indices."""
    def model(x):
        mu = sg.sample("mu", dist.Normal(0.0, 10.0))
        with sg.plate("data", len(x), subsample_size=2) as idx:
            sg.sample("obs", dist.Normal(mu, 1.0), obs=x[idx])
    assert_ok(model, loc_guide, elbo, DATA)


def test_ok_sequential_plate(elbo):
    """Iterating over a plate, one site per index."""
    def model(x):
        mu = sg.sample("mu", dist.Normal(0.0, 10.0))
        for i in sg.plate("data", len(x)):
            sg.sample(f"obs_{i}", dist.Normal(mu, 1.0), obs=x[i])
    assert_ok(model, loc_guide, elbo, DATA)


def test_ok_nested_plates(elbo):
    """Two vectorized plates; the inner one is allocated dim -2."""
    def model(x):
        with sg.plate("rows", 2):
            with sg.plate("cols", 3):
                z = sg.sample("z", dist.Normal(0.0, 1.0))
                sg.sample("obs", dist.Normal(z, 1.0), obs=x.reshape(3, 2))

    def guide(x):
        loc = sg.param("loc", torch.zeros(3, 2))
        with sg.plate("rows", 2):
            with sg.plate("cols", 3):
                sg.sample("z", dist.Normal(loc, 1.0))
    assert_ok(model, guide, elbo, DATA)


def test_ok_auxiliary_guide_site(elbo):
    """A guide-only site is allowed when marked auxiliary."""
    def model():
        z = sg.sample("z", dist.Normal(0.0, 1.0))
        sg.sample("obs", dist.Normal(z, 1.0), obs=torch.tensor(0.3))

    def guide():
        u = sg.sample("u", dist.Normal(sg.param("u_loc", torch.tensor(0.0)), 1.0),
                      infer={"is_auxiliary": True})
        sg.sample("z", dist.Normal(u, 1.0))
    assert_ok(model, guide, elbo)


def test_ok_sample_from_prior(elbo):
    """A model latent the guide omits is fine once marked sample_from_prior."""
    def model(x):
        s = sg.sample("s", dist.Normal(0.0, 1.0), infer={"sample_from_prior": True})
        mu = sg.sample("mu", dist.Normal(s, 1.0))
        sg.sample("obs", dist.Normal(mu, 1.0), obs=x[0])
    assert_ok(model, loc_guide, elbo, DATA)


def score_model(x):
    c = sg.sample("c", dist.Bernoulli(0.3))
    sg.sample("obs", dist.Normal(2.0 * c, 1.0), obs=x)


def score_guide(x):
    p = sg.param("p", torch.tensor(0.5), constraint=unit_interval)
    sg.sample("c", dist.Bernoulli(p), infer={"baseline": {"use_decaying_avg_baseline": True,
                                                          "baseline_beta": 0.9}})


def test_ok_score_function_with_decaying_avg_baseline(elbo):
    """A discrete guide site with a decaying-average baseline, over a few SVI steps."""
    assert_ok(score_model, score_guide, elbo, torch.tensor(1.0))
    svi = SVI(score_model, score_guide, sg.optim.Adam({"lr": 0.01}), elbo)
    for _ in range(3):
        assert torch.isfinite(torch.tensor(svi.step(torch.tensor(1.0))))
    assert set(elbo.baselines.averages) == {"c"}


def test_ok_factor(elbo):
    """A factor statement adds to the model's log density."""
    def model():
        z = sg.sample("z", dist.Normal(0.0, 1.0))
        sg.factor("penalty", -z ** 2)

    def guide():
        sg.sample("z", dist.Normal(sg.param("z_loc", torch.tensor(0.0)), 1.0))
    assert_ok(model, guide, elbo)


# ---------------------------------------------------------------------------------------------
# model / guide mismatch

def test_guide_site_typo(elbo):
    """A guide site missing from the model names it and suggests the close model site."""
    def model():
        w = sg.sample("weight", dist.Normal(0.0, 1.0))
        sg.sample("obs", dist.Normal(w, 1.0), obs=torch.tensor(0.3))

    def guide():
        sg.sample("wieght", dist.Normal(0.0, 1.0))
    assert_error(model, guide, elbo, errors.ModelGuideMismatchError, site="wieght",
                 contains=("did you mean 'weight'?", "is_auxiliary"))


def test_observed_site_in_guide(elbo):
    """An observation in the guide is refused."""
    def model():
        z = sg.sample("z", dist.Normal(0.0, 1.0))
        sg.sample("obs", dist.Normal(z, 1.0), obs=torch.tensor(0.3))

    def guide():
        sg.sample("z", dist.Normal(0.0, 1.0))
        sg.sample("obs", dist.Normal(0.0, 1.0), obs=torch.tensor(0.3))
    assert_error(model, guide, elbo, errors.ModelGuideMismatchError, site="obs",
                 contains=("obs=",))


def test_model_latent_missing_from_guide(elbo):
    """A model latent neither guided nor enumerated is an error whose fix offers
    sample_from_prior (silently sampling the prior biases the ELBO)."""
    def model(x):
        s = sg.sample("s", dist.Normal(0.0, 1.0))
        mu = sg.sample("mu", dist.Normal(s, 1.0))
        sg.sample("obs", dist.Normal(mu, 1.0), obs=x[0])
    err = assert_error(model, loc_guide, elbo, errors.ModelGuideMismatchError, DATA, site="s",
                       contains=("sample_from_prior",))
    assert "sample_from_prior" in err.fix


# ---------------------------------------------------------------------------------------------
# shapes

def plated_z_model():
    with sg.plate("rows", 3):
        sg.sample("z", dist.Normal(0.0, 1.0))


def scalar_z_guide():
    sg.sample("z", dist.Normal(0.0, 1.0))


def test_shape_mismatch_plate_vs_scalar(elbo):
    """Model site in a plate of 3, guide site scalar: both shapes and the plate are named."""
    err = assert_error(plated_z_model, scalar_z_guide, elbo, errors.ShapeMismatchError, site="z",
                       contains=("rows[3]", "batch (3,)", "batch ()"))
    assert err.shapes == {"model": (3,), "guide": ()}


def test_shape_mismatch_sets_plate_field(elbo):
    """The structured plate field names the plate the guide site is missing from."""
    assert_error(plated_z_model, scalar_z_guide, elbo, errors.ShapeMismatchError, site="z",
                 plate="rows")


def test_event_dim_mismatch(elbo):
    """Guide declares .to_event(1), model does not."""
    def model():
        sg.sample("z", dist.Normal(torch.zeros(3), 1.0))

    def guide():
        sg.sample("z", dist.Normal(torch.zeros(3), 1.0).to_event(1))
    err = assert_error(model, guide, elbo, errors.ShapeMismatchError, site="z",
                       contains=("event ()", "event (3,)", ".to_event("))
    assert "to_event" in err.fix


def test_observed_data_shape_mismatch(elbo):
    """Data whose shape cannot broadcast to the site's is a shape error, naming both shapes."""
    def model():
        sg.sample("obs", dist.Normal(torch.zeros(3), 1.0), obs=torch.zeros(2))
    assert_error(model, empty_guide, elbo, errors.ShapeMismatchError, site="obs",
                 contains=("(3,)", "(2,)"))


# ---------------------------------------------------------------------------------------------
# supports

@pytest.mark.parametrize("prior", [dist.Gamma(2.0, 1.0), dist.Beta(2.0, 2.0)],
                         ids=["Gamma", "Beta"])
def test_real_guide_for_constrained_site(elbo, prior):
    """A Normal guide cannot match a positive or unit-interval model site."""
    def model():
        sg.sample("z", prior)

    def guide():
        sg.sample("z", dist.Normal(0.5, 0.1))
    assert_error(model, guide, elbo, errors.SupportError, site="z",
                 contains=(type(prior).__name__, "Normal"))


OUT_OF_SUPPORT = [
    ("Bernoulli", lambda: dist.Bernoulli(0.5), torch.tensor([0.0, 1.0, 2.0]), "2.0"),
    ("Poisson", lambda: dist.Poisson(3.0), torch.tensor([1.0, -1.0, 0.0]), "-1.0"),
]


@pytest.mark.parametrize("family, make, data, bad", OUT_OF_SUPPORT,
                         ids=[case[0] for case in OUT_OF_SUPPORT])
def test_observation_outside_support(elbo, family, make, data, bad):
    """Observed data outside the distribution's support."""
    def model():
        with sg.plate("data", 3):
            sg.sample("obs", make(), obs=data)
    assert_error(model, empty_guide, elbo, errors.SupportError, site="obs", contains=(family,))


@pytest.mark.parametrize("family, make, data, bad", OUT_OF_SUPPORT,
                         ids=[case[0] for case in OUT_OF_SUPPORT])
def test_observation_outside_support_shows_value(elbo, family, make, data, bad):
    """The message shows the offending value and how many entries are outside."""
    def model():
        with sg.plate("data", 3):
            sg.sample("obs", make(), obs=data)
    assert_error(model, empty_guide, elbo, errors.SupportError, site="obs",
                 contains=(bad, "1 of 3"))


# ---------------------------------------------------------------------------------------------
# plates

def test_plate_size_clash(elbo):
    """A site of batch 4 inside a plate of 3."""
    def model():
        with sg.plate("rows", 3):
            sg.sample("z", dist.Normal(torch.zeros(4), 1.0))
    err = assert_error(model, model, elbo, errors.PlateError, site="z", plate="rows",
                       contains=("(4,)", "size 3"))
    assert err.shapes == {"batch": (4,), "plate": 3}


def test_plate_dim_clash(elbo):
    """Two nested plates asking for the same dim."""
    def model():
        with sg.plate("outer", 2, dim=-1):
            with sg.plate("inner", 3, dim=-1):
                sg.sample("z", dist.Normal(0.0, 1.0))
    assert_error(model, model, elbo, errors.PlateError, site=None, plate="inner",
                 contains=("'outer'", "-1", "dim=-2"))


# ---------------------------------------------------------------------------------------------
# enumeration

def test_enumerate_flag_without_enumerating_objective(elbo):
    """A model-only site marked for enumeration under an ELBO that does not enumerate."""
    def model():
        c = sg.sample("c", dist.Bernoulli(0.5), infer={"enumerate": "parallel"})
        sg.sample("obs", dist.Normal(c, 1.0), obs=torch.tensor(0.0))
    assert_error(model, empty_guide, elbo, errors.EnumerationError, site="c",
                 contains=("enumerat", "parallel"))


# ---------------------------------------------------------------------------------------------
# non-finite losses

def test_nan_model_term_from_params(elbo):
    """Infinite loc and scale make the observation's log-prob nan (inf / inf)."""
    def model():
        loc = sg.param("loc", torch.tensor(float("inf")))
        scale = sg.param("scale", torch.tensor(float("inf")), constraint=positive)
        sg.sample("obs", dist.Normal(loc, scale), obs=torch.tensor(0.0))
    assert_error(model, empty_guide, elbo, errors.NonFiniteLossError, site="obs",
                 contains=("('model', 'obs')", "nan", "not updated"))


def data_model(x):
    mu = sg.sample("mu", dist.Normal(0.0, 10.0))
    with sg.plate("data", len(x)):
        sg.sample("obs", dist.Normal(mu, 1.0), obs=x)


def test_infinite_data_term(elbo):
    """One infinite observation in a plate: the term, its plate and the count are named."""
    data = torch.tensor([0.0, float("inf"), 1.0])
    assert_error(data_model, loc_guide, elbo, errors.NonFiniteLossError, data, site="obs",
                 contains=("('model', 'obs')", "inf", "1 of 3", "data"))


def test_nonfinite_step_leaves_params_unchanged(elbo):
    """SVI.step that raises NonFiniteLossError updates no parameter (after a good step)."""
    svi = SVI(data_model, loc_guide, sg.optim.Adam({"lr": 0.1}), elbo)
    svi.step(DATA)
    before = {name: value.detach().clone() for name, value in sg.get_param_store().items()}
    with pytest.raises(errors.NonFiniteLossError) as info:
        svi.step(torch.tensor([0.0, float("inf"), 1.0]))
    check_message(info.value, site="obs", contains=("('model', 'obs')",))
    after = {name: value.detach() for name, value in sg.get_param_store().items()}
    assert set(after) == set(before)
    for name, value in before.items():
        assert torch.equal(after[name], value), name
    assert all(leaf.grad is None for _, leaf in sg.get_param_store().named_parameters())
    assert torch.isfinite(torch.tensor(svi.step(DATA)))


def test_nonfinite_step_leaves_baseline_state_unchanged(elbo):
    """Nothing is written when a step produces a non-finite loss (STYLE 3.6), baselines
    included, so training resumes cleanly on the next good batch."""
    svi = SVI(score_model, score_guide, sg.optim.Adam({"lr": 0.01}), elbo)
    svi.step(torch.tensor(1.0))
    averages = {k: v.clone() for k, v in elbo.baselines.averages.items()}
    with pytest.raises(errors.NonFiniteLossError):
        svi.step(torch.tensor(float("inf")))
    assert set(elbo.baselines.averages) == set(averages)
    for name, value in averages.items():
        assert torch.equal(elbo.baselines.averages[name], value), name
    loss = svi.step(torch.tensor(1.0))
    assert torch.isfinite(torch.tensor(loss)), loss
    assert all(bool(torch.isfinite(v).all()) for v in sg.get_param_store().values())


def test_nan_param_into_distribution(elbo):
    """A param that became nan is reported as a non-finite loss naming the param."""
    def model():
        loc = sg.param("loc", torch.tensor(float("nan")))
        sg.sample("obs", dist.Normal(loc, 1.0), obs=torch.tensor(0.0))
    with pytest.raises(errors.NonFiniteLossError) as info:
        elbo.differentiable_loss(model, empty_guide)
    check_message(info.value, contains=("'loc'", "nan"))


# ---------------------------------------------------------------------------------------------
# baselines

def baseline_guide(options):
    def guide(x):
        p = sg.param("p", torch.tensor(0.5), constraint=unit_interval)
        sg.sample("c", dist.Bernoulli(p), infer={"baseline": options})
    return guide


def test_contradictory_baseline_options(elbo):
    """A decaying average and a fixed baseline value at once."""
    guide = baseline_guide({"use_decaying_avg_baseline": True,
                            "baseline_value": torch.tensor(0.0)})
    assert_error(score_model, guide, elbo, errors.BaselineError, torch.tensor(1.0), site="c",
                 contains=("use_decaying_avg_baseline", "baseline_value"))


def test_unknown_baseline_key(elbo):
    """A misspelled baseline option gets a close-match hint."""
    guide = baseline_guide({"use_decaying_avg_baselin": True})
    assert_error(score_model, guide, elbo, errors.BaselineError, torch.tensor(1.0), site="c",
                 contains=("'use_decaying_avg_baselin'",
                           "did you mean 'use_decaying_avg_baseline'?"))


# ---------------------------------------------------------------------------------------------
# sites and params

def duplicate_model():
    sg.sample("z", dist.Normal(0.0, 1.0))
    sg.sample("z", dist.Normal(0.0, 1.0))


def test_duplicate_site_name(elbo):
    """Two sites with one name in one run is a ValueError naming the site."""
    with pytest.raises(ValueError, match="'z' appears twice"):
        elbo.differentiable_loss(duplicate_model, scalar_z_guide)


def test_duplicate_site_name_follows_template(elbo):
    """The duplicate-site error is a SvigraphError with the site field and a fix."""
    err = assert_error(duplicate_model, scalar_z_guide, elbo, errors.SvigraphError, site="z")
    assert isinstance(err, ValueError)


def test_param_without_init(elbo):
    """param() of an unknown name without init, with a close match in the store."""
    sg.param("loc", torch.tensor(0.0))

    def model():
        sg.param("lco")
        sg.sample("obs", dist.Normal(0.0, 1.0), obs=torch.tensor(0.0))
    assert_error(model, empty_guide, elbo, errors.ParamError, site="lco",
                 contains=("did you mean 'loc'?", "sg.param('lco'"))


# ---------------------------------------------------------------------------------------------
# classes

NATURAL_BUILTINS = [
    (errors.ModelGuideMismatchError, ValueError),
    (errors.ShapeMismatchError, ValueError),
    (errors.PlateError, ValueError),
    (errors.SupportError, ValueError),
    (errors.EnumerationError, ValueError),
    (errors.ParamError, ValueError),
    (errors.BaselineError, ValueError),
    (errors.TracingError, RuntimeError),
    (errors.NonFiniteLossError, FloatingPointError),
]


@pytest.mark.parametrize("cls, builtin", NATURAL_BUILTINS,
                         ids=[cls.__name__ for cls, _ in NATURAL_BUILTINS])
def test_error_classes_are_natural_builtins(cls, builtin):
    """Each class is a SvigraphError and its builtin, and documents itself."""
    assert issubclass(cls, errors.SvigraphError) and issubclass(cls, builtin)
    assert cls.__doc__ and cls.__doc__.strip()
    err = cls("site 'z' in plate 'p': headline", ["a fact"], "do this", site="z", plate="p")
    assert (err.site, err.plate, err.fix) == ("z", "p", "do this")
    check_message(err, site="z", plate="p")


def test_except_value_error_catches_svigraph_errors(elbo):
    """Existing ``except ValueError`` / ``except FloatingPointError`` code keeps working."""
    try:
        elbo.differentiable_loss(plated_z_model, scalar_z_guide)
    except ValueError as err:
        assert isinstance(err, errors.ShapeMismatchError)
    else:
        pytest.fail("no error raised")
    def model():
        sg.sample("obs", dist.Normal(0.0, 1.0), obs=torch.tensor(float("inf")))
    with pytest.raises(FloatingPointError):
        elbo.differentiable_loss(model, empty_guide)


def test_baseline_error_is_exported():
    """BaselineError is importable from svigraph.errors and is the one the compiler raises."""
    from compiler.baselines import BaselineError
    assert errors.BaselineError is BaselineError


def test_guide_site_marked_for_enumeration_is_refused(elbo):
    def model():
        sg.sample("z", dist.Bernoulli(0.5))

    def guide():
        sg.sample("z", dist.Bernoulli(0.3), infer={"enumerate": "parallel"})

    assert_error(model, guide, elbo, errors.EnumerationError, site="z",
                 contains=("enumerat",))


def test_obs_mask_is_refused_not_ignored():
    with pytest.raises(NotImplementedError, match="obs_mask"):
        with sg.handlers.trace():
            sg.sample("x", dist.Normal(0.0, 1.0), obs=torch.zeros(2),
                      obs_mask=torch.tensor([True, False]))
