"""Builds the evaluators a config lists in ``config.evals``, for the trainer and for ``bv-eval``.

Each entry is ``name: dict(type=..., log_steps=..., ...evaluator config...)``.
``log_steps`` / ``log_epochs`` / ``log_percent`` / ``log_examples`` say how often
it runs (the trainer turns them into steps); ``type`` picks the evaluator; the
rest goes to the evaluator's factory (see :mod:`bv.evaluators.common`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import jax
import ml_collections

from bv.core import registry
from bv.core.frozen import FrozenArrays, bind_evaluator, bind_predict_fns
from bv.evaluators.common import Evaluator, EvaluatorConfigError


@dataclasses.dataclass
class ScheduledEvaluator:
    """An evaluator, its name in the config, and how often it runs (steps; None: only at the end)."""

    name: str
    evaluator: Evaluator
    every: int | None


def _plain(cfg: Any) -> dict[str, Any]:
    return cfg.to_dict() if isinstance(cfg, ml_collections.ConfigDict) else dict(cfg)


def build_evaluators(
    evals: Mapping[str, Any] | None,
    predict_fns: Mapping[str, Callable[..., Any]],
    mesh: jax.sharding.Mesh,
    *,
    batch_size: int,
    data_dir: str | None,
    workdir: str | None,
    every: Callable[[Mapping[str, Any]], int | None] = lambda cfg: None,
    frozen: FrozenArrays | None = None,
) -> list[ScheduledEvaluator]:
    """One :class:`ScheduledEvaluator` per entry of ``config.evals``.

    ``batch_size`` and ``data_dir`` are defaults an entry may override;
    ``every(entry)`` turns the entry's ``log_*`` duration into steps. ``frozen`` is the
    task's ``frozen()``: its arrays reach the predict functions as an argument of each
    evaluator's compiled step (see :mod:`bv.core.frozen`); ``run(params)`` is unchanged.
    """
    import bv.evaluators  # noqa: F401  (registers the evaluators)

    predict_fns = bind_predict_fns(predict_fns, frozen)

    built = []
    for name, cfg in (evals or {}).items():
        cfg = _plain(cfg)
        kind = cfg.pop("type", None)
        if kind is None:
            raise EvaluatorConfigError(
                f"config.evals.{name} needs a 'type', one of: {', '.join(registry.evaluators.names())}."
            )
        try:
            factory = registry.evaluators.get(kind)
        except registry.UnknownNameError as e:
            raise EvaluatorConfigError(f"config.evals.{name}: {e}") from None
        steps = every(cfg)
        for key in [k for k in cfg if k.startswith("log_")]:
            del cfg[key]
        cfg.setdefault("batch_size", batch_size)
        cfg.setdefault("data_dir", data_dir)
        cfg["workdir"] = workdir
        cfg["name"] = name
        try:
            evaluator = factory(predict_fns, mesh=mesh, **cfg)
        except TypeError as e:
            raise EvaluatorConfigError(f"config.evals.{name} (a {kind!r} evaluator): {e}") from None
        built.append(ScheduledEvaluator(name, bind_evaluator(evaluator, frozen), steps))
    return built
