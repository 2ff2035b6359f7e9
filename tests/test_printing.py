"""Golden printed forms: the whole ``str(plan)`` and graph listing are pinned."""

import textwrap

import torch

import svigraph as sg
from svigraph import distributions as dist
from svigraph.constraints import positive, unit_interval
from svigraph.demo import FLIPS, coin_guide, coin_model
from compiler.printing import format_graph


def model(flips):
    p = sg.sample("p", dist.Beta(10.0, 10.0))
    with sg.plate("data", len(flips)):
        c = sg.sample("c", dist.Bernoulli(0.8))
        sg.sample("obs", dist.Bernoulli(torch.where(c.bool(), p, torch.tensor(0.5))), obs=flips)


def guide(flips):
    a = sg.param("a", torch.tensor(15.0), constraint=positive)
    b = sg.param("b", torch.tensor(15.0), constraint=positive)
    q = sg.param("q", torch.full((10,), 0.5), constraint=unit_interval)
    sg.sample("p", dist.Beta(a, b).with_rsample(False),
              infer={"baseline": {"use_decaying_avg_baseline": True, "baseline_beta": 0.95}})
    with sg.plate("data", len(flips)):
        sg.sample("c", dist.Bernoulli(q))


def test_tracegraph_plan_printout():
    plan = sg.compile(model, guide, FLIPS, loss=sg.infer.TraceGraph_ELBO())
    expected = textwrap.dedent("""\
        plan TraceGraph_ELBO(num_particles=1) {        # key KEY
          plates  data: size=10 dim=-1
          params  %a: f32[] positive; %b: f32[] positive; %q: f32[10] unit_interval
          sites
            %p   : f32[] = score_function   guide Beta <- %a, %b   model Beta
            %c   : f32[10] (data) = score_function   guide Bernoulli <- %q   model Bernoulli
            %obs : f32[10] (data) = observed   model Bernoulli <- %p, %c
          costs
            %p <- guide:p, model:p, sum[data](model:obs)
            %c <- guide:c, model:c, model:obs
          baselines
            %p : decaying_avg[beta=0.95]
          objective
            elbo      = -guide:p - sum[data](guide:c) + model:p + sum[data](model:c) + sum[data](model:obs)
            surrogate = -stop(guide:p) - stop(sum[data](guide:c)) + model:p + sum[data](model:c) +
                        sum[data](model:obs) + guide:p * stop(-guide:p + model:p + sum[data](model:obs) -
                        baseline:p) + sum[data](guide:c * stop(-guide:c + model:c + model:obs))
        }""").replace("KEY", plan.key_hash)
    assert str(plan) == expected
    assert all(len(line) <= 100 for line in str(plan).splitlines())


def test_trace_elbo_costs_are_all_terms_sliced_by_plate():
    plan = sg.compile(model, guide, FLIPS, loss=sg.infer.Trace_ELBO())
    lines = str(plan).splitlines()
    assert "    %p <- guide:p, sum[data](guide:c), model:p, sum[data](model:c), sum[data](model:obs)" \
        in lines
    assert "    %c <- guide:p, guide:c, model:p, model:c, model:obs" in lines


def test_graph_listing():
    plan = sg.compile(coin_model, coin_guide, FLIPS)
    assert format_graph(plan.graph) == textwrap.dedent("""\
        graph {
            %alpha_q : f32[] = param
            %beta_q : f32[] = param
            %fairness : f32[] = sample   guide Beta <- %alpha_q, %beta_q   model Beta
            %obs : f32[10] (flips) = observe   model Bernoulli <- %fairness
        }""")


def test_sympy_objective_and_surrogate():
    import sympy as sp

    plan = sg.compile(model, guide, FLIPS, loss=sg.infer.TraceGraph_ELBO())
    assert isinstance(plan.objective, sp.Expr) and isinstance(plan.surrogate, sp.Expr)
    assert plan.objective.has(sp.Sum)
    assert sp.Symbol("baseline:p") in plan.surrogate.free_symbols
    assert "stop" in sp.latex(plan.surrogate) or r"\operatorname{stop}" in sp.latex(plan.surrogate)
    # two score terms stop(cost), and the two score sites' log q enter as stop(log q)
    stops = [f for f in plan.surrogate.atoms(sp.Function) if f.func.__name__ == "stop"]
    assert len(stops) == 4


def test_dot_output():
    plan = sg.compile(model, guide, FLIPS, loss=sg.infer.TraceGraph_ELBO())
    dot = plan.to_dot()
    assert dot.startswith("digraph plan {") and dot.rstrip().endswith("}")
    assert 'subgraph "cluster_data"' in dot and 'label="data[10]"' in dot
    assert '"p" -> "obs"' in dot and '"c" -> "obs"' in dot
    assert '"obs" [shape=ellipse, fillcolor="#bbbbbb"' in dot


def test_pretty_source_points_at_user_lines():
    plan = sg.compile(model, guide, FLIPS, loss=sg.infer.TraceGraph_ELBO())
    line = [ln for ln in plan.pretty(source=True).splitlines() if ln.startswith("    %c ")][0]
    assert "# guide test_printing.py:" in line and "model test_printing.py:" in line


def test_render_runs_dot(monkeypatch, tmp_path):
    """render() hands the DOT text to `dot -T<suffix> -o <path>` (a stand-in dot here)."""
    import shutil
    import stat
    fake = tmp_path / "dot"
    fake.write_text('#!/bin/sh\n# args: -Tfmt -o path\necho "$1" > "$3.fmt"; cat > "$3"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setattr(shutil, "which", lambda name: str(fake) if name == "dot" else None)
    plan = sg.compile(model, guide, FLIPS, loss=sg.infer.TraceGraph_ELBO())
    out = plan.render(tmp_path / "plan.png")
    assert out.read_text() == plan.to_dot()
    assert (tmp_path / "plan.png.fmt").read_text().strip() == "-Tpng"


def _plated(x):
    with sg.plate("d", len(x)):
        sg.sample("x", dist.Normal(0.0, 1.0), obs=x)


def _empty(x):
    pass


def test_recompile_is_explained():
    """A new structure says what changed, in the user's words."""
    from compiler.cache import describe_difference
    elbo = sg.infer.TraceGraph_ELBO()
    elbo.differentiable_loss(_plated, _empty, torch.zeros(3))
    elbo.differentiable_loss(_plated, _empty, torch.zeros(4))
    first, second = list(elbo._cache(_plated, _empty)._plans)
    assert describe_difference(first, second) == (
        "model site 'x': shape (3,) -> (4,), plates (d[3]) -> (d[4]); arguments changed")


def test_plan_latex():
    plan = sg.compile(_plated, _empty, torch.zeros(3))
    assert plan.latex() == ("\\mathcal{L} = \\sum_{i_{d}=0}^{2} {model:x}_{i_{d}}\n"
                            "\\tilde{\\mathcal{L}} = \\sum_{i_{d}=0}^{2} {model:x}_{i_{d}}")


def test_long_plans_print_their_ends_and_pretty_full_prints_all():
    """A chain of 60 sites: str(plan) lists the first and last sites and says how many it
    left out; plan.pretty(full=True) lists every one."""
    import torch
    import svigraph as sg
    from svigraph import distributions as dist

    def model():
        z = torch.tensor(0.0)
        for i in range(60):
            z = sg.sample(f"z{i}", dist.Normal(z, 1.0))

    def guide():
        for i in range(60):
            sg.sample(f"z{i}", dist.Normal(sg.param(f"m{i}", torch.tensor(0.0)), 1.0)
                      .with_rsample(False))

    sg.clear_param_store()
    plan = sg.compile(model, guide, loss=sg.infer.TraceGraph_ELBO())
    short, full = str(plan), plan.pretty(full=True)
    assert "    ... 25 more sites (plan.pretty(full=True) shows all)" in short
    assert "    ... 25 more costs (plan.pretty(full=True) shows all)" in short
    assert "%z29 " in short and "%z30 " not in short and "%z59 " in short
    assert all(f"%z{i} " in full for i in range(60)) and "more sites" not in full
    assert len(short.splitlines()) < len(full.splitlines()) - 50
