"""TraceEnum_ELBO's error catalogue (the style of tests/test_errors.py): each mistake raises
EnumerationError with its structured fields set and a short message that names the site,
the plate and the dims, with a ``fix:`` line."""

import pytest
import torch

import svigraph as sg
from svigraph import distributions as dist
from svigraph.errors import EnumerationError
from svigraph.infer import TraceEnum_ELBO
from tests.test_errors import check_message

ENUM = {"enumerate": "parallel"}
SEQ = {"enumerate": "sequential"}
DATA = torch.tensor([0.5, -0.3, 1.2])


def empty_guide(x):
    pass


def refused(model, guide, *, site, plate=None, contains=(), nesting=1):
    with pytest.raises(EnumerationError) as info:
        TraceEnum_ELBO(max_plate_nesting=nesting).differentiable_loss(model, guide, DATA)
    check_message(info.value, site=site, plate=plate, contains=contains)
    return info.value


def test_no_finite_support_in_the_model():
    def model(x):
        sg.sample("z", dist.Normal(0.0, 1.0), infer=ENUM)

    refused(model, empty_guide, site="z", contains=("no finite support", "Normal"))


def test_no_finite_support_in_the_guide():
    def model(x):
        sg.sample("z", dist.Normal(0.0, 1.0))

    def guide(x):
        sg.sample("z", dist.Normal(0.0, 1.0), infer=SEQ)

    refused(model, guide, site="z", contains=("no finite support",))


def test_max_plate_nesting_too_small():
    def model(x):
        with sg.plate("outer", 2):
            with sg.plate("inner", 3):
                k = sg.sample("k", dist.Bernoulli(0.5), infer=ENUM)
                sg.sample("obs", dist.Normal(k, 1.0), obs=x)

    # automatic dims go right to left: "outer" takes -1, "inner" -2, where enumeration starts
    err = refused(model, empty_guide, site="k", plate="inner",
                  contains=("dim -2", "max_plate_nesting=1", "max_plate_nesting=2"))
    assert err.shapes == {"plate_dim": -2, "first_enum_dim": -2}


def test_explicit_plate_dim_collides_with_enumeration_dims():
    def model(x):
        with sg.plate("data", 3, dim=-3):
            k = sg.sample("k", dist.Bernoulli(0.5), infer=ENUM)
            sg.sample("obs", dist.Normal(k, 1.0), obs=x.reshape(3, 1, 1))

    refused(model, empty_guide, site="k", plate="data", nesting=2,
            contains=("dim -3", "asks for dim=-3", "a dim in -1..-2"))


def test_plates_that_do_not_nest_as_a_tree():
    def model(x):
        with sg.plate("a", 2, dim=-2):
            u = sg.sample("u", dist.Bernoulli(0.5), infer=ENUM)
        with sg.plate("b", 3, dim=-1):
            v = sg.sample("v", dist.Bernoulli(0.5), infer=ENUM)
        with sg.plate("a", 2, dim=-2), sg.plate("b", 3, dim=-1):
            sg.sample("obs", dist.Normal(u + v, 1.0), obs=x.expand(2, 3))

    # the planner's message (compiler/enumeration.py) names the plates unquoted
    refused(model, empty_guide, site="v", nesting=2,
            contains=("plates a, b do not nest as a tree", "model:obs", "'u' in (a)"))


def test_guide_enumeration_more_local_than_model_enumeration():
    def model(x):
        m = sg.sample("m", dist.Bernoulli(0.5), infer=ENUM)
        with sg.plate("data", 3):
            k = sg.sample("k", dist.Bernoulli(0.5))
            sg.sample("obs", dist.Normal(k + m, 1.0), obs=x)

    def guide(x):
        with sg.plate("data", 3):
            sg.sample("k", dist.Bernoulli(0.3), infer=ENUM)

    refused(model, guide, site="k", plate="data", contains=("'m'", "enumerated outside"))


def test_sequential_site_in_a_plate():
    def model(x):
        with sg.plate("data", 3):
            sg.sample("k", dist.Bernoulli(0.5))

    def guide(x):
        with sg.plate("data", 3):
            sg.sample("k", dist.Bernoulli(0.3), infer=SEQ)

    refused(model, guide, site="k", plate="data", contains=("batched", "parallel"))


def test_sequential_in_the_model():
    def model(x):
        sg.sample("k", dist.Bernoulli(0.5), infer=SEQ)

    refused(model, empty_guide, site="k", contains=("sequential", "guide"))


def test_enumerated_guide_value_read_into_python():
    def model(x):
        sg.sample("k", dist.Bernoulli(0.5))

    def guide(x):
        k = sg.sample("k", dist.Bernoulli(0.3), infer=ENUM)
        if bool(k.sum() > 0):
            pass

    refused(model, guide, site="k", contains=("read into Python",))
