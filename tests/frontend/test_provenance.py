"""Provenance through torch operations, and reads of tracked values into Python."""

import torch

from svigraph.ops.provenance import (detach_provenance, get_provenance, on_python_read,
                                     track_provenance)


def test_seed_example():
    """The seed's dependency-tracking snippet, with the import changed."""
    a = track_provenance(torch.randn(3), frozenset({"a"}))
    b = track_provenance(torch.randn(3), frozenset({"b"}))
    c = torch.randn(3)
    assert get_provenance(a.exp()) == frozenset({"a"})
    assert get_provenance(a * (b + c)) == frozenset({"a", "b"})


def test_untracked_and_detach():
    x = torch.randn(3)
    assert get_provenance(x) == frozenset()
    a = track_provenance(x, frozenset({"a"}))
    assert get_provenance(detach_provenance(a) + 1) == frozenset()
    assert torch.equal(detach_provenance(a), x)


def test_containers_indexing_and_multi_output_ops():
    a = track_provenance(torch.randn(4), frozenset({"a"}))
    b = track_provenance(torch.tensor([1, 2]), frozenset({"i"}))
    assert get_provenance(torch.cat([a, torch.zeros(2)])) == {"a"}
    assert get_provenance(a[b]) == {"a", "i"}
    values, indices = torch.max(a, 0)
    assert get_provenance(indices) == {"a"}
    assert get_provenance(torch.where(a > 0, torch.zeros(4), torch.ones(4))) == {"a"}
    assert get_provenance([a, torch.zeros(1)]) == {"a"}


def test_gradients_flow_through_tracked_tensors():
    x = torch.randn(3, requires_grad=True)
    y = track_provenance(x * 2, frozenset({"x"}))
    (y * 3).sum().backward()
    assert torch.allclose(x.grad, torch.full((3,), 6.0))


def test_reads_into_python_are_reported():
    a = track_provenance(torch.tensor(1.5), frozenset({"a"}))
    i = track_provenance(torch.tensor(1), frozenset({"i"}))
    reads = []
    with on_python_read(lambda prov, func: reads.append((set(prov), func.__name__))):
        a.item()
        bool(a > 0)
        float(a)
        int(i)
        [10, 20, 30][i]
        (a * 2).tolist()
        torch.randn(2).sum().item()  # untracked: not reported
    assert reads == [({"a"}, "item"), ({"a"}, "__bool__"), ({"a"}, "__float__"),
                     ({"i"}, "__int__"), ({"i"}, "__index__"), ({"a"}, "tolist")]


def test_formatting_a_tracked_tensor_works():
    a = track_provenance(torch.tensor(1.25), frozenset({"a"}))
    assert f"{a:.1f}" in ("1.2", "1.3")
