"""runtime.capture.simplify: merging repeated pure work in a captured forward graph.

Merged: equal small constants and pure operations on the same arguments. Never merged:
random draws (each is its own), anything in a graph that writes to a tensor, constants that
differ only where == cannot see it (-0.0 and 0.0).
"""

import torch
from torch.fx.experimental.proxy_tensor import make_fx

from runtime.capture import count_ops, simplify


def capture(fn, *inputs):
    return make_fx(fn, tracing_mode="real")(*inputs)


def test_repeated_pure_work_is_done_once_with_the_same_result():
    def fn(a):
        out = []
        for _ in range(5):
            out.append((a.exp() * torch.tensor(2.0)).sum())
        return torch.stack(out).sum()

    a = torch.randn(3)
    graph = capture(fn, a)
    before = count_ops(graph)
    simplify(graph)
    assert count_ops(graph) < before / 3
    assert torch.equal(graph(a), fn(a))


def test_random_draws_are_never_merged():
    def fn(a):
        return a + torch.randn(3), a + torch.randn(3)

    a = torch.zeros(3)
    graph = simplify(capture(fn, a))
    x, y = graph(a)
    assert not torch.equal(x, y)
    torch.manual_seed(0)
    expected = fn(a)
    torch.manual_seed(0)
    replayed = graph(a)
    assert all(torch.equal(e, r) for e, r in zip(expected, replayed))


def test_a_graph_that_writes_to_a_tensor_is_left_alone():
    def fn(a):
        b = a.exp()
        c = a.exp()
        b.add_(1.0)
        return b + c

    a = torch.randn(3)
    graph = capture(fn, a)
    before = count_ops(graph)
    simplify(graph)
    assert count_ops(graph) == before
    assert torch.allclose(graph(a), fn(a))


def test_constants_equal_only_under_eq_stay_apart():
    def fn(a):
        return a * torch.tensor(0.0), a * torch.tensor(-0.0), a * torch.tensor(0.0)

    a = torch.tensor([-1.0, 2.0])
    graph = simplify(capture(fn, a))
    got = graph(a)
    for g, e in zip(got, fn(a)):  # signed zeros kept: 1 / x tells them apart
        assert torch.equal(1.0 / g, 1.0 / e)


def test_gradients_through_the_simplified_graph_are_the_originals():
    def fn(a, b):
        return sum(((a * b).sin() + (a * b).sin()).sum() for _ in range(3))

    a, b = torch.randn(4, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    graph = simplify(capture(fn, a, b))
    x, y = a.clone().requires_grad_(), b.clone().requires_grad_()
    expected = torch.autograd.grad(fn(x, y), (x, y))
    got = torch.autograd.grad(graph(x, y), (x, y))
    for e, g in zip(expected, got):
        assert torch.allclose(e, g, rtol=1e-12)
