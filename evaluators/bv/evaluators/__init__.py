"""Evaluators: run a task's predict functions over data and report metrics.

Importing this package registers the evaluators in ``bv.core.registry.evaluators``;
:mod:`bv.evaluators.common` states the contract a new evaluator follows.
"""

from bv.evaluators.build import ScheduledEvaluator, build_evaluators
from bv.evaluators.classification import ClassificationEvaluator
from bv.evaluators.common import EvalData, Evaluator, EvaluatorConfigError
from bv.evaluators.distance import DistanceEvaluator
from bv.evaluators.fewshot import FewshotEvaluator
from bv.evaluators.imagenet_variants import ImageNetV2Evaluator, RealEvaluator
from bv.evaluators.perplexity import MeanEvaluator, PerplexityEvaluator
from bv.evaluators.retrieval import RetrievalEvaluator
from bv.evaluators.save_predictions import SavePredictionsEvaluator
from bv.evaluators.zeroshot import ZeroShotEvaluator

__all__ = [
    "ClassificationEvaluator",
    "DistanceEvaluator",
    "EvalData",
    "Evaluator",
    "EvaluatorConfigError",
    "FewshotEvaluator",
    "ImageNetV2Evaluator",
    "MeanEvaluator",
    "PerplexityEvaluator",
    "RealEvaluator",
    "RetrievalEvaluator",
    "SavePredictionsEvaluator",
    "ScheduledEvaluator",
    "ZeroShotEvaluator",
    "build_evaluators",
]
