"""Planning with video plans (paper section 3.4): the retrace task, the planner and its evaluation."""

from .planner import Decomposer, PlanResult, plan_retrace, scripted_decomposer

__all__ = ["Decomposer", "PlanResult", "plan_retrace", "scripted_decomposer"]
