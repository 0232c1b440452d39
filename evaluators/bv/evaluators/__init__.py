"""Evaluators: run a task's predict functions over data and report metrics.

Importing this package registers the evaluators in ``bv.core.registry.evaluators``;
:mod:`bv.evaluators.common` states the contract a new evaluator follows.
"""

from bv.evaluators.build import ScheduledEvaluator, build_evaluators
from bv.evaluators.classification import ClassificationEvaluator
from bv.evaluators.common import EvalData, Evaluator, EvaluatorConfigError

__all__ = [
    "ClassificationEvaluator",
    "EvalData",
    "Evaluator",
    "EvaluatorConfigError",
    "ScheduledEvaluator",
    "build_evaluators",
]
