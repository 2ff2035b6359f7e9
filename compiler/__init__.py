"""svigraph's compiler: pure passes from a dependency graph to a Plan.

Never imports ``svigraph`` or ``runtime``: every pass can be tested on a hand-built graph.
"""

from compiler.cache import PlanCache
from compiler.errors import SvigraphError
from compiler.pipeline import compile_plan
from compiler.plan import BaselineSpec, Plan, ScorePlan, SitePlan, TermPlan
from compiler.printing import format_graph, format_plan

__all__ = ["BaselineSpec", "Plan", "PlanCache", "ScorePlan", "SitePlan", "SvigraphError",
           "TermPlan", "compile_plan", "format_graph", "format_plan"]
