"""Tasks: what a project plugs into the one trainer.

A task says how to build its parameters, its loss and metrics for one batch,
and the predict functions its evaluators call. The trainer owns everything
else (mesh, data, optimizer, checkpoints, resume, evals, logs). A project that
needs to change how a step's gradient is computed from its batch (SAM: a second
pass at perturbed params) overrides ``step_grads``; one with values that are not
trained by gradient (a VQ-VAE's moving-average codebook) overrides ``after_step``.
"""

from __future__ import annotations

import abc
import dataclasses
import importlib
import importlib.util
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from bv.core import losses, registry
from bv.core.accumulate import accumulate_grads
from bv.core.frozen import FrozenArrays

Params = Any
Batch = Mapping[str, jax.Array]
Metrics = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class StepInfo:
    """What the trainer knows about the optimizer step being taken, for :meth:`Task.step_grads`."""

    step: jax.Array  # the number of the step being taken, 1 for the first (traced)
    num_microbatches: int = 1  # config.grad_accum_steps
    total_steps: int | None = None  # the run's length (None: not known, e.g. a step built outside the trainer)
    # The optimizer's learning rates ("lr", "lr_1", ...: one per trained schedule), as functions of step - 1.
    lr_fns: tuple[tuple[str, Callable[[Any], jax.Array]], ...] = ()

    def lr(self, name: str = "lr") -> jax.Array:
        """The learning rate ``name`` that this step's update applies."""
        fns = dict(self.lr_fns)
        if name not in fns:
            raise KeyError(f"No learning rate {name!r}; this run's are: {', '.join(fns) or '(none)'}.")
        return fns[name](self.step - 1)


class Task(abc.ABC):
    """Base class of tasks; subclasses implement ``init``, ``loss`` and ``predict_fns``.

    The trainer calls nothing else, so these three (and the optional ``grads``,
    ``step_grads``, ``after_step``, ``logical_axes`` and ``frozen`` hooks) are the whole contract between a project
    and the loop.
    """

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config

    @abc.abstractmethod
    def init(self, rng: jax.Array, batch_spec: Mapping[str, jax.ShapeDtypeStruct]) -> Params:
        """Fresh parameters, given the shapes of one (local) training batch."""
        raise NotImplementedError

    @abc.abstractmethod
    def loss(self, params: Params, batch: Batch, rng: jax.Array) -> tuple[jax.Array, Metrics]:
        """The mean training loss of a batch and extra scalar metrics to log."""
        raise NotImplementedError

    def grads(self, params: Params, batch: Batch, rng: jax.Array) -> tuple[jax.Array, Metrics, Params]:
        """Loss, metrics and gradient of one (micro)batch."""
        (loss, metrics), grads = jax.value_and_grad(self.loss, has_aux=True)(params, batch, rng)
        return loss, metrics, grads

    def step_grads(
        self, params: Params, batch: Batch, rng: jax.Array, info: StepInfo
    ) -> tuple[jax.Array, Metrics, Params]:
        """Loss, metrics and the gradient the optimizer receives for the step's whole batch.

        By default the mean of ``grads`` over ``info.num_microbatches`` microbatches
        (gradient accumulation). Override it when the gradient needs more than one pass
        over the batch (SAM needs the batch's gradient before it can perturb the params).
        """
        return accumulate_grads(self.grads, params, batch, rng, info.num_microbatches)

    def after_step(
        self, old_params: Params, params: Params, batch: Batch, rng: jax.Array, info: StepInfo
    ) -> tuple[Params, Metrics]:
        """The step's final params from the optimizer's (``params``), and extra metrics to log.

        ``old_params`` are the params the step's gradient was taken at, ``batch`` and ``rng``
        the ones ``step_grads`` saw. By default ``params`` unchanged. Override it for values
        that are not trained by gradient: a VQ-VAE codebook updated as a moving average of
        the batch's encodings, frozen parts that must stay bitwise as they were.
        """
        return params, {}

    @abc.abstractmethod
    def predict_fns(self) -> dict[str, Callable[..., Any]]:
        """Functions evaluators call by name, e.g. ``{"predict": fn(params, images) -> logits}``."""
        raise NotImplementedError

    def logical_axes(self, params: Params) -> Mapping[str, tuple[str | None, ...]] | None:
        """Logical axis names per parameter name, for the "logical" sharding strategy (None: no annotations)."""
        return None

    def frozen(self) -> FrozenArrays | None:
        """Arrays the task's functions read but never train (a distillation teacher's weights), or None.

        The trainer passes them into the compiled step and the evaluators as an argument and
        binds them while tracing: read them with ``.value``, never by closing over arrays
        (see :mod:`bv.core.frozen`). They are not part of the train state or its checkpoints.
        """
        return None


def get_model(config: ml_collections.ConfigDict) -> nn.Module:
    """The model ``config.model_name`` built with ``config.model`` and ``config.num_classes``.

    A name that is not registered yet is looked for in the package ``bv.<name>``
    (``vit`` -> ``bv.vit``), so a config can name any installed bv model.
    """
    factory = registry.model_factory(config.model_name)
    kwargs = dict(config.get("model", {}))
    return factory(num_classes=config.get("num_classes"), **kwargs)


@registry.tasks.register("classification")
class ClassificationTask(Task):
    """Image classification: ``batch["image"]`` to logits, against ``batch["labels"]`` (one-hot).

    Config: ``model_name``, ``model`` (kwargs), ``num_classes``, ``loss``
    ("softmax_xent" or "sigmoid_xent"), ``label_smoothing``.
    """

    def __init__(self, config: ml_collections.ConfigDict):
        super().__init__(config)
        self.model = get_model(config)
        self.loss_fn = losses.get(config.get("loss", "softmax_xent"))
        self.label_smoothing = float(config.get("label_smoothing", 0.0))

    def init(self, rng: jax.Array, batch_spec: Mapping[str, jax.ShapeDtypeStruct]) -> Params:
        image = batch_spec["image"]
        dummy = jnp.zeros((1, *image.shape[1:]), image.dtype)
        return self.model.init({"params": rng}, dummy)["params"]

    def loss(self, params: Params, batch: Batch, rng: jax.Array) -> tuple[jax.Array, Metrics]:
        logits, _ = self.model.apply({"params": params}, batch["image"], train=True, rngs={"dropout": rng})
        per_example = self.loss_fn(logits, batch["labels"], label_smoothing=self.label_smoothing)
        return jnp.mean(per_example), {}

    def logical_axes(self, params: Params) -> Mapping[str, tuple[str | None, ...]] | None:
        annotate = getattr(self.model, "logical_axes", None)
        return annotate(params) if callable(annotate) else None

    def predict_fns(self) -> dict[str, Callable[..., Any]]:
        def predict(params: Params, images: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
            logits, out = self.model.apply({"params": params}, images, train=False)
            return logits, dict(out)

        return {"predict": predict}


def get_task(config: ml_collections.ConfigDict) -> Task:
    """The task named by ``config.task`` (default "classification")."""
    name = config.get("task", "classification")
    if name not in registry.tasks and config.get("model_name"):
        registry.import_model_package(config.model_name)  # model packages may bring tasks (bv.vit: FlexiViT)
    if name not in registry.tasks and importlib.util.find_spec(f"bv.{name}") is not None:
        importlib.import_module(f"bv.{name}")  # a project named after its task (bv.distill: "distill")
    return registry.tasks.get(name)(config)
