"""Plated tensor variable elimination (compiler.enumeration): plans against brute force.

Factor graphs are written as einsum strings, funsor-style: ``inputs="a,abi,bcij"`` has three
factors over variables a, b, c inside plates i, j. Letters named in ``plates`` are reduced,
letters in ``kept`` are plates left in the result, every other letter is an enumerated
variable. Each plan runs through runtime.contract.execute and is compared with
``naive_sum_product`` (all assignments, products over plate indices) to 1e-5 relative.
"""

import math

import opt_einsum
import pytest
import torch

from compiler.enumeration import (ContractionPlan, EnumerationError, Factor, factor_from_shape,
                                  format_contraction_plan, plan_contraction)
from compiler.enumeration_reference import naive_sum_product
from compiler.enumeration_scan import SCAN_MIN_LENGTH
from runtime.contract import execute, execute_partial


def make_problem(inputs, plates, kept="", seed=0):
    """(factors, tensors, sum_vars, plate_sizes, var_sizes) for an einsum-string graph.
    Plates have size 2 (3 for 'k'); variables size 2 or 3 by letter; float64 log values."""
    letters = sorted(set(inputs) - {","})
    plate_sizes = {p: 3 if p == "k" else 2 for p in letters if p in plates + kept}
    var_sizes = {v: 2 + ord(v) % 2 for v in letters if v not in plate_sizes}
    sizes = {**plate_sizes, **var_sizes}
    gen = torch.Generator().manual_seed(seed)
    terms = inputs.split(",")
    factors = [Factor(f"f{n}", tuple(term)) for n, term in enumerate(terms)]
    tensors = [torch.randn(tuple(sizes[d] for d in term), generator=gen, dtype=torch.float64)
               for term in terms]
    return factors, tensors, set(var_sizes), plate_sizes, var_sizes


def plan_problem(inputs, plates, kept="", **options):
    factors, tensors, sum_vars, plate_sizes, var_sizes = make_problem(inputs, plates, kept)
    plan = plan_contraction(factors, sum_vars, set(plates), plate_sizes=plate_sizes,
                            var_sizes=var_sizes, **options)
    naive = naive_sum_product(factors, tensors, sum_vars, set(plates),
                              plate_sizes=plate_sizes, var_sizes=var_sizes)
    return plan, tensors, naive


def assert_matches(actual, naive, dims):
    """Compare a tensor over ``dims`` with a naive {index: value} dict, 1e-5 relative."""
    assert tuple(actual.shape) == tuple(max(i[k] for i in naive) + 1 for k in range(len(dims)))
    for index, value in naive.items():
        assert float(actual[index]) == pytest.approx(value, rel=1e-5, abs=1e-9), index


EXAMPLES = [
    ("a", ""),                      # one variable
    ("a,a", ""),                    # two factors on one variable
    ("a,ab,bc", ""),                # chain
    ("ab,bc,cd,de", ""),            # longer chain, no prior
    ("a,ab,ac,cd,ce", ""),          # tree
    ("ab,bc,cd,da", ""),            # a loop: one component, opt_einsum picks the order
    ("ab,c", ""),                   # two components
    ("i", "i"),                     # no variable, one plate
    ("ij,i", "ij"),                 # nested plates, no variable
    ("ai", "i"),                    # a variable in a plate
    ("a,ai", "i"),                  # a global variable with plated factors
    ("a,abi", "i"),                 # global a, local b
    ("ab,bi", "i"),                 # global chain read in a plate
    ("a,abi,bcij", "ij"),           # nested plates, a variable shared at each level
    ("a,ai,abij", "ij"),            # global a read two plate levels down
    ("a,abi,acj", "ij"),            # sibling plates under a global variable
    ("ab,ai,bj", "ij"),             # sibling plates reading different globals
    ("abi,bcij,ci", "ij"),          # variables shared between plate levels
    ("a,abi,bci,cdij", "ij"),       # a chain inside a plate with a nested leaf
    ("a,ak,abk", "k"),              # a plate of size 3
]


@pytest.mark.parametrize("inputs, plates", EXAMPLES)
def test_plan_matches_naive(inputs, plates):
    """Every example, fully reduced, equals the brute-force sum-product."""
    plan, tensors, naive = plan_problem(inputs, plates)
    assert isinstance(plan, ContractionPlan) and plan.dims == ()
    assert_matches(execute(plan, tensors), naive, plan.dims)


@pytest.mark.parametrize("inputs, plates, kept", [
    ("ai", "", "i"),
    ("ai,abi", "", "i"),
    ("a,bi", "", "i"),
    ("abij,ai", "j", "i"),
    ("aij,bi,c", "j", "i"),
])
def test_kept_plates_are_batch_dims(inputs, plates, kept):
    """A plate left unreduced indexes the result; each slice is its own problem."""
    plan, tensors, naive = plan_problem(inputs, plates, kept)
    assert set(plan.dims) == set(kept)
    assert_matches(execute(plan, tensors), naive, plan.dims)


@pytest.mark.parametrize("inputs, kept, result_dims", [
    ("a,ai", "i", [()]),              # summing a needs the product over i first
    ("a,ai,bi", "i", [("i",), ()]),   # b stays per slice (found first: deepest), a is global
    ("a,abij", "ij", [()]),
])
def test_partial_results_sum_to_the_total(inputs, kept, result_dims):
    """Kept plates that an outer variable needs are reduced anyway (funsor's partial
    sum-product); the partial results, each summed over its plates, add up to the total."""
    factors, tensors, sum_vars, plate_sizes, var_sizes = make_problem(inputs, "", kept)
    plan = plan_contraction(factors, sum_vars, (), plate_sizes=plate_sizes, var_sizes=var_sizes)
    assert [dims for _, dims in plan.results] == result_dims
    total = sum(float(r.sum()) for r in execute_partial(plan, tensors))
    naive = naive_sum_product(factors, tensors, sum_vars, set(kept),
                              plate_sizes=plate_sizes, var_sizes=var_sizes)
    assert total == pytest.approx(naive[()], rel=1e-5)


def test_kept_variable_indexes_the_result():
    """Variables left out of sum_vars stay in the result, in the requested order."""
    factors, tensors, _, plate_sizes, var_sizes = make_problem("a,abi,bc", "i")
    plan = plan_contraction(factors, {"b"}, {"i"}, plate_sizes=plate_sizes,
                            var_sizes=var_sizes, output=("c", "a"))
    assert plan.dims == ("c", "a")
    naive = naive_sum_product(factors, tensors, {"b"}, {"i"}, plate_sizes=plate_sizes,
                              var_sizes=var_sizes)
    naive = {(c, a): v for (a, c), v in naive.items()}
    assert_matches(execute(plan, tensors), naive, plan.dims)


def test_broadcast_plate_counts_once_per_slice():
    """A factor living in a plate it does not vary along is multiplied in per slice."""
    factors = [Factor("prior", ("a",)), Factor("like", ("a", None), plates=("i",))]
    tensors = [torch.tensor([0.1, -0.3], dtype=torch.float64),
               torch.tensor([[0.5], [-1.0]], dtype=torch.float64)]
    plan = plan_contraction(factors, {"a"}, {"i"}, plate_sizes={"i": 4}, var_sizes={"a": 2})
    expected = math.log(math.exp(0.1 + 4 * 0.5) + math.exp(-0.3 - 4 * 1.0))
    assert float(execute(plan, tensors)) == pytest.approx(expected, rel=1e-12)


GOLDEN = """\
contraction: logsumexp a[3] b[2] c[3]; sum plates i[2] j[2] -> []
  strategy: sequential elimination   peak 24 elements
  inputs
    f0 : [a]
    f1 : [a,b,i]
    f2 : [b,c,i,j]
  steps
    %0 : [b,i] = sum[j](logsumexp[c](f2))                       in (i,j)
        einsum "bcij->bij"   path [(0,)]   peak 24 elements
    %1 : [a] = sum[i](logsumexp[b](f1 + %0))                    in (i)
        einsum "abi,bi->ai"   path [(0, 1)]   peak 12 elements
    %2 : [] = logsumexp[a](f0 + %1)
        einsum "a,a->"   path [(0, 1)]   peak 3 elements
  result %2 : []"""


def test_printed_plan_is_pinned():
    """The printed form: each variable summed at its own plate level, plates reduced inside."""
    plan, _, _ = plan_problem("a,abi,bcij", "ij")
    assert format_contraction_plan(plan) == GOLDEN
    assert str(plan) == GOLDEN


def test_steps_record_where_each_variable_is_summed():
    plan, _, _ = plan_problem("a,abi,bcij", "ij")
    assert [(s.eliminate, s.reduce_plates, s.ordinal) for s in plan.steps] == [
        (("c",), ("j",), ("i", "j")), (("b",), ("i",), ("i",)), (("a",), (), ())]
    assert plan.peak_elements == 24


@pytest.mark.parametrize("inputs, plates", [e for e in EXAMPLES if "," in e[0]])
def test_paths_are_opt_einsum_contract_paths(inputs, plates):
    """Each multi-operand step carries the path opt_einsum.contract_path finds for it."""
    plan, _, _ = plan_problem(inputs, plates)
    sizes = {symbol: dict(plan.sizes)[label] for label, symbol in plan.symbols}
    for step in plan.steps:
        operands = step.equation.split("->")[0].split(",")
        if len(operands) > 1:
            shapes = [tuple(sizes[c] for c in s) for s in operands]
            path, _ = opt_einsum.contract_path(step.equation, *shapes, shapes=True)
            assert list(step.path) == [tuple(p) for p in path]


def test_long_names_get_symbols_and_print_a_legend():
    factors = [Factor("model:z", ("z",)), Factor("model:obs", ("z", "data"))]
    plan = plan_contraction(factors, {"z"}, {"data"}, plate_sizes={"data": 5},
                            var_sizes={"z": 2})
    assert dict(plan.symbols) == {"z": "a", "data": "b"}
    text = str(plan)
    assert "symbols a=z b=data" in text and 'einsum "ab->ab"' in text


def test_planning_is_deterministic_and_pure():
    factors, _, sum_vars, plate_sizes, var_sizes = make_problem("a,abi,acj,cdj", "ij")
    before = (list(factors), dict(plate_sizes), dict(var_sizes))
    first = str(plan_contraction(factors, sum_vars, "ij", plate_sizes=plate_sizes,
                                 var_sizes=var_sizes))
    second = str(plan_contraction(factors, sum_vars, "ij", plate_sizes=plate_sizes,
                                  var_sizes=var_sizes))
    assert first == second and before == (factors, plate_sizes, var_sizes)


def chain_factors(T, plate=None, flip=False):
    """init(x0), t_k(x_{k-1}, x_k[, plate]) and e_k(x_k[, plate]); ``flip`` alternates the
    dim order of the transitions, as markov's reused enum dims do."""
    extra = (plate,) if plate else ()
    factors = [Factor("init", ("x0",))]
    for t in range(1, T):
        pair = (f"x{t}", f"x{t-1}") if flip and t % 2 == 0 else (f"x{t-1}", f"x{t}")
        factors.append(Factor(f"t{t}", pair + extra))
    factors += [Factor(f"e{t}", (f"x{t}",) + extra) for t in range(T)] if plate else []
    return factors


def test_long_chain_plans_one_component():
    """Without scan, a 10,000-factor chain is one component: T - 1 pairwise ops, none
    bigger than two 3x3 matrices joined (greedy multiplies transition matrices, 27)."""
    T = 10_000
    plan = plan_contraction(chain_factors(T), {f"x{t}" for t in range(T)}, (), plate_sizes={},
                            var_sizes={f"x{t}": 3 for t in range(T)}, scan=False)
    (step,) = plan.steps
    assert step.scan is None and len(step.ops) == T - 1 and plan.peak_elements == 27
    assert "(10000 operands)" in str(plan) and "sequential elimination" in str(plan)


def test_long_chain_plans_a_parallel_scan():
    """By default a long homogeneous chain is one scan step: log2 T halving rounds."""
    T = 10_000
    plan = plan_contraction(chain_factors(T), {f"x{t}" for t in range(T)}, (), plate_sizes={},
                            var_sizes={f"x{t}": 3 for t in range(T)})
    (step,) = plan.steps
    scan = step.scan
    assert step.ops == () and scan.chain == tuple(f"x{t}" for t in range(T))
    assert len(scan.rounds) == math.floor(math.log2(T - 1)) and scan.var_size == 3
    assert len(scan.init) == 1 and len(scan.roles) == 1 and scan.batch == ()
    assert plan.strategy == "parallel scan (1 chain) + elimination"
    assert plan.peak_elements == step.peak_elements == (T - 1) // 2 * 27
    text = str(plan)
    assert "parallel scan over x0 -> x1 -> ... -> x9999: 9999 steps of 1 factor(s)" in text
    assert "13 rounds (13 broadcast)" in text and len(text.splitlines()) < 30


def test_scan_roles_group_layouts_and_plates_are_batch_dims():
    """HMM-shaped: transitions alternate their dim order; the plate is a batch dim."""
    T = 40
    plan = plan_contraction(chain_factors(T, plate="s", flip=True),
                            {f"x{t}" for t in range(T)}, {"s"}, plate_sizes={"s": 5},
                            var_sizes={f"x{t}": 2 for t in range(T)})
    scan_step = next(s for s in plan.steps if s.scan is not None)
    scan = scan_step.scan
    # init is outside the plate, so x0 is summed later: the chain inside s is x1..x39
    assert scan.chain[0] == "x1" and scan.batch == ("x0", "s") and scan_step.reduce_plates == ("s",)
    # canonical layout (x0, s, prev, cur): t2 is [x2,x1,s], t3 is [x2,x3,s], ...
    (even, odd), (emissions,) = scan.roles
    assert (even.perm, even.steps[:3], odd.perm, odd.steps[:3]) == (
        (2, 1, 0), (0, 2, 4), (2, 0, 1), (1, 3, 5))
    assert even.shape == odd.shape == (1, 5, 2, 2) and emissions.shape == (1, 5, 1, 2)
    assert emissions.steps == tuple(range(T - 2))
    assert [(g.positions, g.shape) for g in scan.init] == [((0,), (2, 5, 2)), ((39,), (1, 5, 2))]


@pytest.mark.parametrize("factors, why", [
    ([Factor("a", ("x0", "x1")), Factor("b", ("x1", "x2")), Factor("c", ("x0", "x2"))],
     "a loop"),
    ([Factor("a", ("x0", "x1", "x2")), Factor("b", ("x2", "x3"))], "a three-variable factor"),
    ([Factor("a", ("x0", "x1")), Factor("b", ("x1", "x2")), Factor("c", ("x2", "x3")),
      Factor("u", ("x2",))], "steps with different factors"),
    ([Factor("a", ("x0", "y1")), Factor("b", ("y1", "x2"))], "variables of different sizes"),
])
def test_no_scan_for_what_is_not_a_homogeneous_chain(factors, why):
    var_sizes = {"x0": 2, "x1": 2, "x2": 2, "x3": 2, "y1": 3}
    used = {d for f in factors for d in f.dims}
    plan = plan_contraction(factors, used, (), plate_sizes={},
                            var_sizes={v: n for v, n in var_sizes.items() if v in used},
                            scan=True)
    assert all(s.scan is None for s in plan.steps), why
    assert plan.strategy == "sequential elimination"


def test_scan_threshold_and_switch():
    short = chain_factors(SCAN_MIN_LENGTH - 1)
    args = ({f"x{t}" for t in range(SCAN_MIN_LENGTH - 1)}, ())
    sizes = {f"x{t}": 2 for t in range(SCAN_MIN_LENGTH - 1)}
    assert plan_contraction(short, *args, plate_sizes={}, var_sizes=sizes).steps[0].scan is None
    assert plan_contraction(short, *args, plate_sizes={}, var_sizes=sizes,
                            scan=True).steps[0].scan is not None


# ---- errors --------------------------------------------------------------------------------

@pytest.mark.parametrize("inputs, plates, variables", [
    ("ai,bj,abij", "ij", ("a", "b")),
    ("c,aci,bcj,abij", "ij", ("a", "b")),
    ("ai,bj,abijk", "ijk", ("a", "b")),     # found one level up, after leaving k
])
def test_plates_that_do_not_nest_raise(inputs, plates, variables):
    """Variables from sibling plates meeting in one factor: no tree, so no tractable plan."""
    factors, _, sum_vars, plate_sizes, var_sizes = make_problem(inputs, plates)
    with pytest.raises(EnumerationError) as info:
        plan_contraction(factors, sum_vars, plates, plate_sizes=plate_sizes,
                         var_sizes=var_sizes)
    message = str(info.value)
    assert "plates i, j do not nest as a tree" in message
    assert all(repr(v) in message for v in variables)
    assert "fix:" in message and len(message.splitlines()) < 20
    assert info.value.plate == "i" and info.value.site in variables
    assert isinstance(info.value, ValueError)


def test_kept_variable_inside_a_reduced_plate_raises():
    factors, _, _, plate_sizes, var_sizes = make_problem("ai,abi", "i")
    with pytest.raises(EnumerationError, match="cannot keep variable 'a'.*plate.*i") as info:
        plan_contraction(factors, {"b"}, {"i"}, plate_sizes=plate_sizes, var_sizes=var_sizes)
    assert "fix:" in str(info.value) and info.value.site == "a"


def test_kept_variable_forced_out_of_a_kept_plate_raises():
    factors, _, _, plate_sizes, var_sizes = make_problem("a,abi", "", "i")
    with pytest.raises(EnumerationError, match="must be reduced to sum out 'a'"):
        plan_contraction(factors, {"a"}, (), plate_sizes=plate_sizes, var_sizes=var_sizes)


@pytest.mark.parametrize("kwargs, match", [
    ({"factors": [Factor("f", ("a", "ii"))]}, "unknown label 'ii' \\(did you mean 'i'\\?\\)"),
    ({"factors": [Factor("f", ("a", "a"))]}, "repeats a label"),
    ({"factors": [Factor("f", ("a",)), Factor("f", ("a",))]}, "repeated"),
    ({"factors": []}, "no factors"),
    ({"sum_vars": {"a", "zz"}}, "unknown variable 'zz'"),
    ({"sum_vars": {"a", "b"}}, "'b' appears in no factor"),
    ({"plates": {"j"}}, "unknown plate 'j'"),
    ({"output": ("i", "x")}, "does not match"),
])
def test_bad_input_is_named(kwargs, match):
    args = {"factors": [Factor("f", ("a", "i"))], "sum_vars": {"a"}, "plates": set()}
    args.update(kwargs)
    with pytest.raises(EnumerationError, match=match):
        plan_contraction(args.pop("factors"), args.pop("sum_vars"), args.pop("plates"),
                         plate_sizes={"i": 2}, var_sizes={"a": 2, "b": 3}, **args)


def test_factor_from_shape_reads_pyro_layout():
    """Enum dims sit left of plate dims; size-1 dims vary with nothing."""
    factor = factor_from_shape("model:obs", (2, 1, 1, 5), var_dims={"z": -4, "w": -3},
                               plate_dims={"data": -1, "inner": -2}, plates=("data",))
    assert factor == Factor("model:obs", ("z", None, None, "data"), ("data",))
    with pytest.raises(EnumerationError, match="size 3 at dim -2"):
        factor_from_shape("model:x", (2, 3, 5), var_dims={"z": -3}, plate_dims={"data": -1})


def test_broadcast_kernel_when_nothing_blows_up():
    """A pairwise op whose joint space is no bigger than an operand broadcasts, however
    large (einsum would only add passes); one that would materialize more uses einsum."""
    factors = [factor_from_shape("x", (3, 200_000), var_dims={"z": -2}, plate_dims={"i": -1},
                                 plates=("i",)),
               factor_from_shape("z", (3, 1), var_dims={"z": -2}, plate_dims={"i": -1},
                                 plates=("i",))]
    plan = plan_contraction(factors, ("z",), ("i",), plate_sizes={"i": 200_000},
                            var_sizes={"z": 3})
    assert {op.kernel for step in plan.steps for op in step.ops} == {"broadcast"}
    chain = [factor_from_shape(f"m{t}", (600, 600), var_dims={f"v{t}": -2, f"v{t + 1}": -1},
                               plate_dims={}, plates=()) for t in range(2)]
    plan = plan_contraction(chain, ("v0", "v1", "v2"), (), plate_sizes={},
                            var_sizes={f"v{t}": 600 for t in range(3)})
    assert "einsum" in {op.kernel for step in plan.steps for op in step.ops}
