"""Executing contraction plans (runtime.contract) in the log-sum-exp semiring.

Graphs are einsum strings, funsor-style (``"a,abi,bcij"`` with plates ``"ij"``). Each is run
with both kernels (exact broadcast logsumexp, and max-shifted exp-einsum-log forced by
``broadcast_limit=0``) and compared with the brute-force ``naive_sum_product`` to 1e-5
relative; long chains are compared with a hand-written forward recursion.
"""

import functools
import math

import pytest
import torch

from compiler.enumeration import Factor, plan_contraction
from compiler.enumeration_reference import naive_sum_product
from compiler.errors import EnumerationError, ShapeMismatchError
from runtime.contract import build_kernel, canonical_equation, execute, execute_partial
import runtime.scan
from runtime.scan import SCALED_FLOOR, chain_product, log_matmul, round_order, scaled_chain_sum

KERNELS = {"broadcast": {}, "einsum": {"broadcast_limit": 0}}


def make_problem(inputs, plates, seed=0, dtype=torch.float64, scale=1.0, shift=0.0):
    """(factors, tensors, sum_vars, plate_sizes, var_sizes): plates size 2, variables size
    2 or 3 by letter, log values ``shift + scale * randn`` from a fixed seed."""
    letters = sorted(set(inputs) - {","})
    plate_sizes = {p: 2 for p in letters if p in plates}
    var_sizes = {v: 2 + ord(v) % 2 for v in letters if v not in plate_sizes}
    sizes = {**plate_sizes, **var_sizes}
    gen = torch.Generator().manual_seed(seed)
    terms = inputs.split(",")
    factors = [Factor(f"f{n}", tuple(term)) for n, term in enumerate(terms)]
    tensors = [shift + scale * torch.randn(tuple(sizes[d] for d in term), generator=gen,
                                           dtype=dtype) for term in terms]
    return factors, tensors, set(var_sizes), plate_sizes, var_sizes


def run(inputs, plates, kernel, **data):
    factors, tensors, sum_vars, plate_sizes, var_sizes = make_problem(inputs, plates, **data)
    plan = plan_contraction(factors, sum_vars, set(plates), plate_sizes=plate_sizes,
                            var_sizes=var_sizes, **KERNELS[kernel])
    naive = naive_sum_product(factors, tensors, sum_vars, set(plates),
                              plate_sizes=plate_sizes, var_sizes=var_sizes)
    return execute(plan, tensors), naive[()]


@pytest.mark.parametrize("kernel", sorted(KERNELS))
@pytest.mark.parametrize("inputs, plates", [
    ("a,ab,bc", ""),                # chain
    ("a,ab,ac,cd,ce", ""),          # tree
    ("ab,bc,ca", ""),               # loop
    ("ai", "i"),                    # a variable in a plate
    ("a,ai", "i"),                  # a global variable with plated factors
    ("a,abi,bcij", "ij"),           # nested plates
    ("a,ai,abij", "ij"),            # a global read two levels down
    ("a,abi,acj", "ij"),            # sibling plates
])
def test_execute_matches_naive(inputs, plates, kernel):
    actual, expected = run(inputs, plates, kernel)
    assert float(actual) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("kernel", sorted(KERNELS))
def test_large_log_values_stay_finite(kernel):
    """Log factors around -1000 (exp underflows to 0 even in float64) give the exact answer."""
    actual, expected = run("a,abi,bcij", "ij", kernel, scale=3.0, shift=-1000.0)
    assert math.isfinite(float(actual)) and expected < -5000
    assert float(actual) == pytest.approx(expected, rel=1e-5)


def chain(T, K=3, dtype=torch.float64, seed=0):
    """Factors of an HMM-like chain x0 -> x1 -> ... (log values around -50) and its tensors."""
    gen = torch.Generator().manual_seed(seed)
    factors = [Factor("init", ("x0",))] + [Factor(f"t{t}", (f"x{t-1}", f"x{t}"))
                                           for t in range(1, T)]
    tensors = [torch.randn(K, generator=gen, dtype=dtype) - 50.0]
    tensors += [torch.randn(K, K, generator=gen, dtype=dtype) - 50.0 for _ in range(1, T)]
    return factors, tensors


def forward_recursion(tensors):
    """log sum_x prod_t f_t, by hand: alpha_t(j) = logsumexp_i alpha_{t-1}(i) + f_t(i, j)."""
    alpha = tensors[0].double()
    for f in tensors[1:]:
        alpha = torch.logsumexp(alpha[:, None] + f.double(), dim=0)
    return float(torch.logsumexp(alpha, dim=0))


@pytest.mark.parametrize("T", [1000, 10_000])
def test_long_chain_is_finite_and_matches_forward_recursion(T):
    factors, tensors = chain(T)
    plan = plan_contraction(factors, {f"x{t}" for t in range(T)}, (), plate_sizes={},
                            var_sizes={f"x{t}": 3 for t in range(T)})
    actual = float(execute(plan, tensors))
    expected = forward_recursion(tensors)
    assert math.isfinite(actual) and expected < -50.0 * T * 0.9
    assert actual == pytest.approx(expected, rel=1e-5)


def test_long_chain_float32_and_einsum_kernel():
    """float32, with every pairwise op on the shifted einsum kernel: still finite and right."""
    T = 1000
    factors, tensors = chain(T, dtype=torch.float32)
    plan = plan_contraction(factors, {f"x{t}" for t in range(T)}, (), plate_sizes={},
                            var_sizes={f"x{t}": 3 for t in range(T)}, broadcast_limit=0,
                            scan=False)
    actual = execute(plan, tensors)
    assert actual.dtype == torch.float32
    assert float(actual) == pytest.approx(forward_recursion(tensors), rel=1e-5)


@pytest.mark.parametrize("kernel", sorted(KERNELS))
def test_gradients_match_dense_logsumexp(kernel):
    """Gradients flow through both kernels (the shifts are detached, the identity exact)."""
    factors, tensors, sum_vars, _, var_sizes = make_problem("a,ab,bc,c", "")
    plan = plan_contraction(factors, sum_vars, (), plate_sizes={}, var_sizes=var_sizes,
                            **KERNELS[kernel])
    leaves = [t.clone().requires_grad_() for t in tensors]
    grads = torch.autograd.grad(execute(plan, leaves), leaves)
    dense = [t.clone().requires_grad_() for t in tensors]
    a, ab, bc, c = dense
    joint = a[:, None, None] + ab[:, :, None] + bc[None] + c[None, None]
    expected = torch.autograd.grad(torch.logsumexp(joint.reshape(-1), 0), dense)
    for g, e in zip(grads, expected):
        assert torch.allclose(g, e, rtol=1e-6, atol=1e-9)


def test_impossible_assignments_are_minus_infinity():
    """-inf log factors (zero probability) drop out; an all -inf slice gives -inf."""
    factors = [Factor("p", ("a",)), Factor("q", ("a", "b"))]
    p = torch.tensor([0.0, -math.inf], dtype=torch.float64)
    q = torch.tensor([[math.log(0.5), math.log(0.5)], [0.0, 0.0]], dtype=torch.float64)
    for options in KERNELS.values():
        plan = plan_contraction(factors, {"a", "b"}, (), plate_sizes={},
                                var_sizes={"a": 2, "b": 2}, **options)
        assert float(execute(plan, [p, q])) == pytest.approx(0.0, abs=1e-12)
        plan = plan_contraction(factors, {"a"}, (), plate_sizes={}, var_sizes={"a": 2, "b": 2},
                                **options)
        q_dead = q.clone()
        q_dead[0, 1] = -math.inf
        out = execute(plan, [p, q_dead])
        assert out[0] == pytest.approx(math.log(0.5)) and out[1] == -math.inf


def test_kept_plate_and_partial_results():
    """An unreduced plate indexes the result; the partial results carry their own dims."""
    factors = [Factor("g", ("a",)), Factor("l", ("b", "i")), Factor("prior_b", ("b",), ("i",))]
    gen = torch.Generator().manual_seed(1)
    tensors = {"g": torch.randn(2, generator=gen, dtype=torch.float64),
               "l": torch.randn(3, 4, generator=gen, dtype=torch.float64),
               "prior_b": torch.randn(3, generator=gen, dtype=torch.float64)}
    plan = plan_contraction(factors, {"a", "b"}, (), plate_sizes={"i": 4},
                            var_sizes={"a": 2, "b": 3})
    assert [dims for _, dims in plan.results] == [("i",), ()] and plan.dims == ("i",)
    per_slice, global_ = execute_partial(plan, tensors)
    expected = torch.logsumexp(tensors["l"] + tensors["prior_b"][:, None], 0)
    assert torch.allclose(per_slice, expected)
    assert torch.allclose(global_, torch.logsumexp(tensors["g"], 0))
    assert torch.allclose(execute(plan, tensors), expected + global_)


def test_inputs_are_checked():
    factors, tensors, sum_vars, _, var_sizes = make_problem("a,ab", "")
    plan = plan_contraction(factors, sum_vars, (), plate_sizes={}, var_sizes=var_sizes)
    with pytest.raises(ShapeMismatchError, match="takes 2 tensors \\(f0, f1\\) but received 1"):
        execute(plan, tensors[:1])
    wrong = "factor 'f1' has shape \\(2, 3\\), planned \\(3, 2\\)"
    with pytest.raises(ShapeMismatchError, match=wrong):
        execute(plan, [tensors[0], tensors[1].T])
    with pytest.raises(ShapeMismatchError, match="no tensor was given for factor 'f1'"):
        execute(plan, {"f0": tensors[0]})


def test_pyro_layout_with_size_one_dims():
    """A (2, 1, 5) log-prob with z at dim -3 and plate data at -1 binds as [z, data]."""
    factors = [Factor("z", ("z", None, None)), Factor("obs", ("z", None, "data"))]
    gen = torch.Generator().manual_seed(2)
    z = torch.randn(2, 1, 1, generator=gen, dtype=torch.float64)
    obs = torch.randn(2, 1, 5, generator=gen, dtype=torch.float64)
    plan = plan_contraction(factors, {"z"}, {"data"}, plate_sizes={"data": 5},
                            var_sizes={"z": 2})
    expected = torch.logsumexp(z.reshape(2) + obs.reshape(2, 5).sum(-1), 0)
    assert torch.allclose(execute(plan, [z, obs]), expected)


def test_kernels_are_shared_across_renamed_equations():
    assert canonical_equation("bc,c->b") == canonical_equation("xy,y->x") == "ab,b->a"
    build_kernel.cache_clear()
    T = 200
    factors, tensors = chain(T)
    plan = plan_contraction(factors, {f"x{t}" for t in range(T)}, (), plate_sizes={},
                            var_sizes={f"x{t}": 3 for t in range(T)})
    execute(plan, tensors)
    assert build_kernel.cache_info().currsize <= 8  # not one per op


# ---- parallel scan ---------------------------------------------------------------------------

@pytest.mark.parametrize("kernel", ["broadcast", "matmul"])
@pytest.mark.parametrize("n", range(1, 10))
def test_chain_product_equals_sequential_products(n, kernel):
    """Halving rounds with odd leftovers multiply the matrices in chain order."""
    gen = torch.Generator().manual_seed(n)
    steps = torch.randn(n, 2, 3, 3, generator=gen, dtype=torch.float64)
    rounds = (kernel,) * (n.bit_length() - 1)   # floor(log2 n) halvings reach 1
    expected = steps[0].exp()
    for m in steps[1:]:
        expected = expected @ m.exp()
    assert torch.allclose(chain_product(steps, rounds, kernel), expected.log(), rtol=1e-12)


def test_log_matmul_kernels_agree_and_handle_minus_infinity():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(4, 3, 5, generator=gen, dtype=torch.float64) * 30
    b = torch.randn(4, 5, 2, generator=gen, dtype=torch.float64) * 30
    a[0, 0] = -math.inf
    exact = torch.logsumexp(a[..., :, :, None] + b[..., None, :, :], -2)
    assert torch.allclose(log_matmul(a, b, "broadcast"), exact)
    assert torch.allclose(log_matmul(a, b, "matmul"), exact)
    assert (log_matmul(a, b, "matmul")[0, 0] == -math.inf).all()


def test_max_shifted_kernels_give_zero_gradient_where_a_product_underflows():
    """Entry (0, 0)'s terms lie 200 nats below the shifts: float32 products underflow to 0
    and the max-shifted kernels give -inf there (negligible next to the other entries); the
    gradients stay the exact kernel's, not 0 * inf = nan. A nan stays nan."""
    a = torch.tensor([[0.0, -200.0], [0.0, 0.0]], requires_grad=True)
    b = torch.tensor([[-200.0, 0.0], [0.0, 0.0]], requires_grad=True)
    exact = torch.autograd.grad(torch.logsumexp(log_matmul(a, b, "broadcast").flatten(), 0),
                                (a, b))
    einsum = build_kernel("ab,bc->ac", ((2, 2), (2, 2)), "einsum")
    for out in (log_matmul(a, b, "matmul"), einsum(a, b)):
        assert out[0, 0] == -math.inf
        grads = torch.autograd.grad(torch.logsumexp(out.flatten(), 0), (a, b))
        for got, want in zip(grads, exact):
            assert torch.isfinite(got).all()
            torch.testing.assert_close(got, want)
    with_nan = a.detach().clone()
    with_nan[1, 1] = math.nan
    assert log_matmul(with_nan, b.detach(), "matmul")[1].isnan().all()


@pytest.fixture(params=["scaled", "log-space"])
def scan_path(request, monkeypatch):
    """Run a scan by the scaled chain (asserting that it ran) or by the log-space rounds
    alone (the scaled chain declining, as it does where it would lose precision)."""
    taken = []

    exact = runtime.scan._scaled_rounds

    def scaled(by_step, index, init=None):
        if request.param == "log-space":
            return None
        result = exact(by_step, index, init)
        taken.append(result is not None)
        return result

    monkeypatch.setattr(runtime.scan, "_scaled_rounds", scaled)
    yield request.param
    assert request.param == "log-space" or (taken and all(taken))


def exact_chain_sum(steps, init=None):
    """log sum_ij exp(init_i) (exp(M_0) ... exp(M_{n-1}))_ij, one matrix after another."""
    product = steps[0]
    for m in steps[1:]:
        product = torch.logsumexp(product[..., :, :, None] + m[..., None, :, :], -2)
    if init is not None:
        product = product + init[..., :, None]
    return torch.logsumexp(product.flatten(-2), -1)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6, 7, 99, 100, 999])
def test_round_order_pairs_neighbours_in_contiguous_halves(n):
    """Halving rounds over the steps in round order, each pairing its first half with its
    second and carrying an odd one out (last) into the next round, multiply neighbours only
    and give the chain in order: products here are concatenations, which do not commute."""
    items = [(step,) for step in round_order(n)]
    assert sorted(s for (s,) in items) == list(range(n))
    while len(items) > 1:
        pairs = len(items) // 2
        items = [a + b for a, b in zip(items[:pairs], items[pairs:2 * pairs])] + items[2 * pairs:]
        assert all(list(p) == list(range(p[0], p[0] + len(p))) for p in items)
    assert items[0] == tuple(range(n))


@pytest.mark.parametrize("n", [1, 2, 3, 7, 8, 33])
@pytest.mark.parametrize("with_init", [True, False])
def test_scaled_chain_sum_equals_the_exact_chain(n, with_init):
    """Values and gradients (float64, several batch dims, odd leftovers) equal the
    log-space products'; the scales are constants, so gradients are exact."""
    gen = torch.Generator().manual_seed(n)
    steps = (5.0 * torch.randn(n, 2, 3, 4, 4, generator=gen, dtype=torch.float64)
             - 40.0).requires_grad_()
    init = (3.0 * torch.randn(2, 3, 4, generator=gen, dtype=torch.float64)
            ).requires_grad_() if with_init else None
    leaves = [steps] + ([init] if with_init else [])
    got, want = scaled_chain_sum(steps, init), exact_chain_sum(steps, init)
    assert got is not None and got.shape == (2, 3)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    for a, b in zip(torch.autograd.grad(got.sum(), leaves),
                    torch.autograd.grad(want.sum(), leaves)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_scaled_chain_sum_broadcasts_the_steps_and_the_initial_vector():
    """Steps that broadcast along one batch dim and an initial vector along the other."""
    gen = torch.Generator().manual_seed(3)
    steps = torch.randn(5, 2, 1, 4, 4, generator=gen, dtype=torch.float64)
    init = torch.randn(1, 3, 4, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(scaled_chain_sum(steps, init), exact_chain_sum(steps, init),
                               rtol=1e-12, atol=1e-12)


def test_scaled_chain_sum_of_an_impossible_start_is_minus_infinity():
    """A batch entry whose initial vector is all -inf sums to -inf, as the log-space rounds
    give, not nan; the other entries are unaffected."""
    gen = torch.Generator().manual_seed(4)
    steps = torch.randn(6, 2, 3, 3, generator=gen, dtype=torch.float64)
    init = torch.randn(2, 3, generator=gen, dtype=torch.float64)
    init[1] = -math.inf
    got = scaled_chain_sum(steps, init)
    assert got[1] == -math.inf
    torch.testing.assert_close(got, exact_chain_sum(steps, init), rtol=1e-12, atol=1e-12)


def test_scaled_chain_sum_float32_gradients_beat_the_log_space_rounds():
    """1,000 float32 steps: the scaled chain's gradients are within 1e-5 of float64's (the
    log-space rounds' drift to ~1e-3), its value within 2e-6 relative."""
    gen = torch.Generator().manual_seed(0)
    steps64 = (3.0 * torch.randn(999, 5, 4, 4, generator=gen, dtype=torch.float64)
               ).requires_grad_()
    want = chain_product(steps64, ("broadcast",) * 9)
    want = torch.logsumexp(want.flatten(-2), -1)
    grad64 = torch.autograd.grad(want.sum(), steps64)[0]
    steps32 = steps64.detach().float().requires_grad_()
    got = scaled_chain_sum(steps32)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want.detach(), rtol=2e-6, atol=0)
    grad32 = torch.autograd.grad(got.sum(), steps32)[0]
    assert (grad32.double() - grad64).abs().max() < 1e-5


@pytest.mark.parametrize("spoil", ["wide", "zero", "nan", "float16"])
def test_scaled_chain_sum_declines_where_linear_space_would_lose_precision(spoil):
    """An entry 100 nats below its matrix's maximum, a structural zero (-inf), a nan, or a
    half-precision chain: None, so the exact log-space rounds run instead."""
    steps = torch.zeros(6, 2, 3, 3)
    steps[3, 1, 0, 2] = {"wide": -100.0, "zero": -math.inf, "nan": math.nan,
                         "float16": 0.0}[spoil]
    if spoil == "float16":
        steps = steps.half()
    assert -math.log(SCALED_FLOOR) < 100
    assert scaled_chain_sum(steps) is None


def test_scaled_chain_sum_declines_a_product_that_spans_too_much():
    """Each step spans 65 nats (within the floor), their product 130: None."""
    step = torch.tensor([[0.0, -65.0], [-65.0, -65.0]])
    assert scaled_chain_sum(step.expand(1, 2, 2)) is not None
    assert scaled_chain_sum(step.expand(2, 2, 2)) is None


def random_chain(T, K=3, S=4, dtype=torch.float64, seed=0, flip=True, global_var=False,
                 nested=False):
    """An HMM-like chain inside plate s (size S), with optional extras, and its tensors.

    Transitions t_k alternate their dim order (as markov's reused dims do); emissions e_k
    read x_k, in a nested plate j when ``nested``; with ``global_var`` every transition also
    reads g, a variable outside the plate (a batch dim of the scan). The prior of x0 lives
    in the plate without varying along it (it is counted once per slice)."""
    gen = torch.Generator().manual_seed(seed)
    g = ("g",) if global_var else ()
    factors = [Factor("init", ("x0",), plates=("s",))]
    shapes = {"x": K, "s": S, "j": 2, "g": 2}
    for t in range(1, T):
        pair = (f"x{t}", f"x{t-1}") if flip and t % 2 == 0 else (f"x{t-1}", f"x{t}")
        factors.append(Factor(f"t{t}", g + pair + ("s",)))
    for t in range(T):
        factors.append(Factor(f"e{t}", (f"x{t}", "s") + (("j",) if nested else ())))
    if global_var:
        factors.append(Factor("prior_g", ("g",)))
    tensors = {f.name: torch.randn(tuple(shapes[d[0]] for d in f.dims), generator=gen,
                                   dtype=dtype) - 2.0 for f in factors}
    var_sizes = {f"x{t}": K for t in range(T)}
    var_sizes.update({"g": 2} if global_var else {})
    plates = {"s": S, **({"j": 2} if nested else {})}
    return factors, tensors, set(var_sizes), plates, var_sizes


@pytest.mark.parametrize("options", [{}, {"global_var": True}, {"nested": True},
                                     {"flip": False, "K": 2}, {"T": 2}],
                         ids=["hmm", "global", "nested_plate", "plain_order", "T=2"])
@pytest.mark.parametrize("broadcast_limit", [2 ** 18, 0], ids=["broadcast", "matmul"])
def test_scan_equals_sequential_elimination(options, broadcast_limit, scan_path):
    """Values and gradients of the scan plan equal those of plain elimination (float64),
    by the scaled chain and by the log-space rounds alone."""
    options = dict(options)
    T = options.pop("T", 37)
    factors, tensors, sum_vars, plates, var_sizes = random_chain(T, **options)
    plans = [plan_contraction(factors, sum_vars, set(plates), plate_sizes=plates,
                              var_sizes=var_sizes, scan=scan, broadcast_limit=broadcast_limit)
             for scan in (True, False)]
    assert plans[0].strategy.startswith("parallel scan") and plans[1].steps[0].scan is None
    values, grads = [], []
    for plan in plans:
        leaves = {k: v.clone().requires_grad_() for k, v in tensors.items()}
        out = execute(plan, leaves)
        values.append(out)
        grads.append(torch.autograd.grad(out, list(leaves.values())))
    assert torch.allclose(values[0], values[1], rtol=1e-12)
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("broadcast_limit", [2 ** 18, 0], ids=["broadcast", "matmul"])
def test_scan_float32_is_stable_for_10000_steps(broadcast_limit, scan_path):
    """float32 through 14 rounds: within 3e-5 relative of a float64 forward recursion."""
    T = 10_000
    factors, tensors, expected = float32_chain(T)
    plan = plan_contraction(factors, {f"x{t}" for t in range(T)}, (), plate_sizes={},
                            var_sizes={f"x{t}": 3 for t in range(T)},
                            broadcast_limit=broadcast_limit)
    assert plan.steps[0].scan is not None
    actual = execute(plan, tensors)
    assert actual.dtype == torch.float32 and math.isfinite(float(actual))
    assert float(actual) == pytest.approx(expected, rel=3e-5)


@functools.lru_cache(maxsize=1)
def float32_chain(T):
    factors, tensors = chain(T, dtype=torch.float32)
    return factors, tensors, forward_recursion(tensors)


# ---- scales ----------------------------------------------------------------------------------

def test_plate_scales_apply_where_each_plate_is_reduced():
    """a global, b in plate i (scale 1.5), c in plate j inside i (scale 3):
    logsumexp_a(f0 + 1.5 sum_i logsumexp_b(f1 + 3 sum_j logsumexp_c f2))."""
    factors, tensors, sum_vars, plate_sizes, var_sizes = make_problem("a,abi,bcij", "ij")
    plan = plan_contraction(factors, sum_vars, {"i", "j"}, plate_sizes=plate_sizes,
                            var_sizes=var_sizes)
    f0, f1, f2 = tensors
    inner = 3.0 * torch.logsumexp(f2, 1).sum(-1)                       # [b, i]
    middle = 1.5 * torch.logsumexp(f1 + inner[None], 1).sum(-1)         # [a]
    expected = torch.logsumexp(f0 + middle, 0)
    actual = execute(plan, tensors, plate_scales={"i": 1.5, "j": 3.0})
    assert float(actual) == pytest.approx(float(expected), rel=1e-12)


def test_factor_scales_multiply_their_result():
    """A scale shared by the factors of one partial result multiplies that result only."""
    factors = [Factor("g", ("a",)), Factor("l", ("b", "i")), Factor("prior_b", ("b",), ("i",))]
    gen = torch.Generator().manual_seed(1)
    tensors = {"g": torch.randn(2, generator=gen, dtype=torch.float64),
               "l": torch.randn(3, 4, generator=gen, dtype=torch.float64),
               "prior_b": torch.randn(3, generator=gen, dtype=torch.float64)}
    plan = plan_contraction(factors, {"a", "b"}, {"i"}, plate_sizes={"i": 4},
                            var_sizes={"a": 2, "b": 3})
    local = torch.logsumexp(tensors["l"] + tensors["prior_b"][:, None], 0).sum()
    expected = 0.25 * local + torch.logsumexp(tensors["g"], 0)
    actual = execute(plan, tensors, factor_scales={"l": 0.25, "prior_b": 0.25})
    assert float(actual) == pytest.approx(float(expected), rel=1e-12)
    with pytest.raises(EnumerationError, match="different scales") as info:
        execute(plan, tensors, factor_scales={"l": 0.25})
    assert "l (scale 0.25), prior_b (scale 1)" in str(info.value)
    with pytest.raises(EnumerationError, match="tensor scale of shape \\(4,\\)"):
        execute(plan, tensors, factor_scales={"l": torch.ones(4), "prior_b": torch.ones(4)})
