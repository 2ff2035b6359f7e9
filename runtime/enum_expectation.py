"""Execute a plan whose ELBO is an exact expectation over enumerated guide values.

Used when the guide enumerates sites in parallel, or when score-function guide sites are
mixed with model enumeration. Every log-prob tensor is labelled, dim by dim, with the
enumerated variable or the plate it varies along (from the plan's ``reads`` and the
records' ``enum_dim`` and plate frames). Then, as in Pyro's TraceEnum_ELBO (Dice over the
enumerated guide sites):

* the model's enumerated sites are summed out of their factors by the plated sum-product,
  keeping the guide's enumerated variables; its partial results are costs like any term;
* each cost c is weighted by the guide's probabilities of the enumerated values it varies
  with: E_q[c] = sum q(g) c(g) over those values and c's plates, the q(g) being the guide's
  conditionals of g and its enumerated ancestors (the rest sum to one). Only guide sites in
  plates that c lives in can weight it; plates are summed as ordinary indices, so slice n of
  a cost meets slice n of the weights;
* a score-function site s adds sum q(g) score_s(g) stop(cost_s(g) - baseline) with the
  weights detached, its costs (the terms downstream of it, and the contraction when s feeds
  it) paired with its score slice by slice over the plates they share.

Expectations are opt_einsum contractions in linear space (weights are probabilities, costs
are log densities), each expression built once per (equation, shapes).
"""

from __future__ import annotations

import weakref
from functools import lru_cache

import opt_einsum
import torch

from compiler.enumeration import factor_from_shape, plan_contraction
from compiler.errors import EnumerationError
from runtime.contract import execute_partial
from runtime.terms import masked_log_prob, term_log_probs

_STATIC = weakref.WeakKeyDictionary()       # plan -> what the plan fixes, read once
_CONTRACTIONS = weakref.WeakKeyDictionary()  # plan -> its contraction plan


def weighted_contraction(plan):
    """The ContractionPlan ``run_weighted_plan`` planned for ``plan``, or None."""
    return _CONTRACTIONS.get(plan)


def carry_weighted_contraction(plan, copy):
    """Let ``copy`` (the same plan, another object) reuse ``plan``'s contraction."""
    if plan in _CONTRACTIONS:
        _CONTRACTIONS[copy] = _CONTRACTIONS[plan]


class Labelled:
    """A tensor squeezed to its labelled dims: ``labels[i]`` names dim i (a variable or a
    plate); ``plates`` are the plates the term lives in (for the weights' check)."""

    __slots__ = ("tensor", "labels", "plates", "name", "full_shape")

    def __init__(self, tensor, labels, plates, name, full_shape=None):
        self.tensor, self.labels, self.plates, self.name = tensor, labels, plates, name
        self.full_shape = full_shape  # the unsqueezed layout (size 1 where unlabelled)


def run_weighted_plan(plan, records, baselines=None, with_surrogate=True, site_scales=None):
    """One particle's ELBO and surrogate for a plan with guide-side enumeration (or score
    sites mixed with model enumeration). Returns ``runtime.executor.LossParts``."""
    from runtime.executor import LossParts

    static = _static(plan)
    var_dims, var_sizes, plate_dims, plate_sizes = _dims(plan, records, static)
    scaled, costs = {}, {}
    for term in plan.terms:
        _, lp = term_log_probs(records[term.program][term.site], term, site_scales)
        scaled[term.key] = lp
        value = lp.detach() if term.stop_gradient else lp
        value = value if term.program == "model" else -value
        costs[term.key] = _label(value, term.reads, var_dims, plate_dims,
                                 static["plates"][term.key], f"{term.program}:{term.site}")
    weights = {}
    for name in plan.guide_enum:
        site = records["guide"][name]
        lp = masked_log_prob(site, "guide")
        weights[name] = _label(lp.exp(), static["reads"][("guide", name)], var_dims,
                               plate_dims, static["plates"][("guide", name)], f"q:{name}")
    results = []
    if plan.enum_terms:
        results = _contract(plan, records, scaled, var_dims, var_sizes, plate_dims, plate_sizes,
                            static)
    elbo = sum((_expect([c], weights) for c in list(costs.values()) + results),
               torch.zeros(()))
    surrogate = elbo.new_zeros(())
    if with_surrogate and plan.scores:
        for score_plan in plan.scores:
            surrogate = surrogate + _score_term(plan, score_plan, records, costs, results,
                                                weights, var_dims, plate_dims, static,
                                                baselines)
        if baselines is not None and baselines.nn_loss is not None:
            surrogate = surrogate - baselines.nn_loss
            baselines.nn_loss = None
    return LossParts(elbo, surrogate, scaled)


# ---- what the plan fixes ---------------------------------------------------------------------

def _static(plan):
    static = _STATIC.get(plan)
    if static is None:
        graph = plan.graph
        plates, reads = {}, {}
        for term in plan.terms + plan.enum_terms:
            side = "guide_plates" if term.program == "guide" else "plates"
            plates[term.key] = frozenset(graph.nodes[term.site][side])
            reads[term.key] = term.reads
        for name in plan.guide_enum:
            plates[("guide", name)] = frozenset(graph.nodes[name]["guide_plates"])
        model_enum = tuple(n for n, s in plan.sites.items()
                           if s.estimator == "enumerate" and graph.nodes[n]["guide_fn"] is None)
        factor_keys = frozenset(t.key for t in plan.enum_terms)
        static = {"plates": plates, "reads": reads, "model_enum": model_enum,
                  "factor_keys": factor_keys}
        _STATIC[plan] = static
    return static


def _dims(plan, records, static):
    var_dims, var_sizes, plate_dims, plate_sizes = {}, {}, {}, {}
    for program, names in (("guide", plan.guide_enum), ("model", static["model_enum"])):
        for name in names:
            site = records[program][name]
            var_dims[name], var_sizes[name] = site["enum_dim"], site["value"].shape[0]
    for program in ("guide", "model"):
        for site in records[program].values():
            for f in site["cond_indep_stack"]:
                if f.dim is not None:
                    plate_dims[f.name], plate_sizes[f.name] = f.dim, f.subsample_size
    return var_dims, var_sizes, plate_dims, plate_sizes


def _label(tensor, reads, var_dims, plate_dims, plates, name):
    """Label each dim of ``tensor``; dims of size > 1 that nothing names are summed (a site's
    batch dims outside any plate belong to one joint term). Only the dims of ``plates`` (the
    term's own) name plates: sibling plates may share a dim."""
    by_dim = {d: p for p, d in plate_dims.items() if p in plates}
    by_dim.update({var_dims[v]: v for v in reads if v in var_dims})
    labels, keep, summed = [], [], []
    for pos, size in enumerate(tensor.shape):
        label = by_dim.get(pos - tensor.dim())
        if size == 1:
            continue
        if label is None:
            summed.append(pos)
        else:
            labels.append(label)
            keep.append(size)
    if summed:
        tensor = tensor.sum(summed, keepdim=True)
    return Labelled(tensor.reshape(keep), tuple(labels), plates, name, tuple(tensor.shape))


# ---- the model's contraction -------------------------------------------------------------------

def _contract(plan, records, scaled, var_dims, var_sizes, plate_dims, plate_sizes, static):
    """The partial results of summing the model's enumerated variables out, each a cost
    over the guide's enumerated variables and the plates it keeps."""
    tensors, layout, scales = {}, [], set()
    kept = set()
    for term in plan.enum_terms:
        site = records["model"][term.site]
        scales.add(float(site["scale"]))
        lp = masked_log_prob(site, "model")
        key = f"model:{term.site}"
        tensors[key] = lp
        scaled[term.key] = lp
        frames = tuple(f.name for f in site["cond_indep_stack"] if f.dim is not None)
        layout.append((key, tuple(lp.shape), frames, term.reads))
        kept.update(v for v in term.reads if v in plan.guide_enum)
    if len(scales) > 1:
        raise EnumerationError(
            f"the enumerated factors have different scales {sorted(scales)}",
            [f"factors: {', '.join(t.site for t in plan.enum_terms)}"],
            "subsample (or scale) every site the enumerated variables touch alike",
            site=plan.enum_terms[0].site)
    for name in sorted(kept):  # pin a kept guide variable to its own plates
        dim = var_dims[name]
        shape = (var_sizes[name],) + (1,) * (-dim - 1)
        key = f"keep:{name}"
        tensors[key] = torch.zeros(shape)
        layout.append((key, shape, tuple(static["plates"][("guide", name)]), (name,)))
    contraction = _CONTRACTIONS.get(plan)
    if contraction is None:
        factors = [factor_from_shape(key, shape, var_dims={v: var_dims[v] for v in reads},
                                     plate_dims=plate_dims, plates=plates)
                   for key, shape, plates, reads in layout]
        contraction = plan_contraction(factors, static["model_enum"], (),
                                       plate_sizes=plate_sizes, var_sizes=var_sizes)
        _CONTRACTIONS[plan] = contraction
    (scale,) = scales
    out = []
    for (name, dims), tensor in zip(contraction.results, execute_partial(contraction, tensors)):
        if scale != 1.0:
            tensor = tensor * scale
        plates = frozenset(d for d in dims if d in plate_sizes)
        out.append(Labelled(tensor, tuple(dims), plates, "marginal"))
    return out


# ---- expectations --------------------------------------------------------------------------------

def _weights_for(variables, plates, weights, cost_name, exclude=()):
    """The weights a cost over ``variables`` needs: those variables' guide conditionals and,
    recursively, their enumerated ancestors'."""
    chosen, seen, todo = [], set(exclude), list(variables)
    while todo:
        var = todo.pop()
        if var in seen or var not in weights:
            continue
        seen.add(var)
        w = weights[var]
        if not w.plates <= plates:
            outside = sorted(w.plates - plates)
            raise EnumerationError(
                f"{cost_name} varies with guide site {var!r}, which is enumerated in plate "
                f"{outside[0]!r} that {cost_name} is not in",
                [f"{var!r} plates {sorted(w.plates)}; {cost_name} plates {sorted(plates)}"],
                f"move the site that reads {var!r} into plate {outside[0]!r}",
                site=var, plate=outside[0])
        chosen.append(w)
        todo += [label for label in w.labels if label in weights]
    return chosen


def _expect(operands, weights, out=(), detach_weights=False, exclude=()):
    """sum over every label not in ``out`` of prod(weights needed) * prod(operands)."""
    variables = {label for op in operands for label in op.labels if label in weights}
    plates = frozenset().union(*(op.plates for op in operands))
    needed = _weights_for(variables, plates, weights, operands[-1].name, exclude)
    tensors = [w.tensor.detach() if detach_weights else w.tensor for w in needed]
    tensors += [op.tensor for op in operands]
    labels = [w.labels for w in needed] + [op.labels for op in operands]
    return _einsum(tensors, labels, out)


def _einsum(tensors, labels, out):
    symbols = {}
    for label in [x for ls in labels for x in ls] + list(out):
        symbols.setdefault(label, opt_einsum.get_symbol(len(symbols)))
    equation = ",".join("".join(symbols[x] for x in ls) for ls in labels) + "->" + \
        "".join(symbols[x] for x in out)
    if len(tensors) == 1 and not out:
        return tensors[0].sum()
    return _expression(equation, tuple(tuple(t.shape) for t in tensors))(*tensors)


@lru_cache(maxsize=4096)
def _expression(equation, shapes):
    return opt_einsum.contract_expression(equation, *shapes)


# ---- score-function sites ------------------------------------------------------------------------

def _score_term(plan, score_plan, records, costs, results, weights, var_dims, plate_dims,
                static, baselines):
    program, name = score_plan.program, score_plan.site
    site = records[program][name]
    side = "guide_plates" if program == "guide" else "plates"
    own = frozenset(plan.graph.nodes[name][side])
    score = _label(masked_log_prob(site, program), static["reads"].get((program, name), ()),
                   var_dims, plate_dims, own, f"{program}:{name}")
    cost_ops, with_results = [], False
    for term in plan.sites[name].cost:
        if term in static["factor_keys"]:
            with_results = True
        elif term in costs:
            cost_ops.append(costs[term])
    if with_results:
        cost_ops += results
    want = score.labels
    own_vars = [x for x in want if x in weights]
    ones = _ones(score)
    total = torch.zeros([1] * len(want))
    for c in cost_ops:
        c = Labelled(c.tensor.detach(), c.labels, c.plates | own, c.name)
        total = total + _expect([ones, c], weights, out=want, detach_weights=True)
    if score_plan.baseline is not None:
        mass = _expect([ones], weights, out=want, detach_weights=True) if own_vars else None
        mean = total / mass.clamp_min(1e-30) if mass is not None else total
        # baselines see the cost in the score's own layout (a particle dim where it was)
        baseline = baselines.value(score_plan, mean.reshape(score.full_shape), records)
        baseline = torch.broadcast_to(baseline, score.full_shape).reshape(mean.shape)
        total = total - (baseline * mass if mass is not None else baseline)
    return (score.tensor * total.detach()).sum()


def _ones(score):
    """A ones operand over the score's labels, so an einsum can keep them in its output."""
    return Labelled(torch.ones(score.tensor.shape), score.labels, score.plates, score.name)
