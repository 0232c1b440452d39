"""Evaluators: run a task's predict function over a data split and report metrics.

Importing this package registers the evaluators in ``bv.core.registry.evaluators``.
"""

from bv.evaluators.classification import ClassificationEvaluator

__all__ = ["ClassificationEvaluator"]
