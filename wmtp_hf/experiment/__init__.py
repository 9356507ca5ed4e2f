"""`python -m wmtp_hf.experiment`: run every stage on one model and data set, measure, report (docs/design.md §9)."""

from .plan import EvaluationOptions, ExperimentPlan, StagePlan, build_plan
from .study import run_experiment

__all__ = ["EvaluationOptions", "ExperimentPlan", "StagePlan", "build_plan", "run_experiment"]
