"""Evaluators: run a task's predict functions over data and report metrics.

Importing this package registers the evaluators in ``bv.core.registry.evaluators``;
:mod:`bv.evaluators.common` states the contract a new evaluator follows.
"""

from bv.core.extras import require_train

require_train("bv.evaluators (evaluation on data sets)")

from bv.evaluators.build import ScheduledEvaluator, build_evaluators  # noqa: E402
from bv.evaluators.classification import ClassificationEvaluator  # noqa: E402
from bv.evaluators.common import EvalData, Evaluator, EvaluatorConfigError  # noqa: E402
from bv.evaluators.distance import DistanceEvaluator  # noqa: E402
from bv.evaluators.fewshot import FewshotEvaluator  # noqa: E402
from bv.evaluators.imagenet_variants import ImageNetV2Evaluator, RealEvaluator  # noqa: E402
from bv.evaluators.perplexity import MeanEvaluator, PerplexityEvaluator  # noqa: E402
from bv.evaluators.retrieval import RetrievalEvaluator  # noqa: E402
from bv.evaluators.save_predictions import SavePredictionsEvaluator  # noqa: E402
from bv.evaluators.zeroshot import ZeroShotEvaluator  # noqa: E402

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
