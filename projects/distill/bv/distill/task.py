"""The ``distill`` task: a student learns to match frozen teachers' outputs ("function matching").

As in "Knowledge distillation: a good teacher is patient and consistent" (Beyer et al.,
2022; big_vision's ``proj/distill``): the teachers and the student see the *same*
augmented batch (the trainer's pp and ``config.mixup`` run once, before the loss), and
the student minimises the KL divergence from the teachers' predictions. Config:

- the student as for classification: ``model_name``, ``model``, ``num_classes``;
- ``teachers``: ``{name: dict(init=..., model_name=..., model=..., resolution=...)}``
  (:mod:`bv.distill.teachers`); a teacher at another resolution sees the same crop resized;
- ``distance``: ``kl`` (default) or ``xent`` (the same gradient, without the teacher's
  entropy); ``temperature`` (default 1: the paper's best), applied to both logits;
- ``label_weight`` (default 0): ``(1 - w) * distance + w * softmax_xent(labels)``; the
  labels are only read when it is positive.

Several teachers are averaged in probability space. The predict functions are the
student's ``predict`` and each teacher's ``teacher_<name>`` (plus ``teacher`` for the
first), which the ``distance`` evaluator compares.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import ml_collections

from bv.core import losses, registry
from bv.core.config import ConfigError
from bv.core.frozen import FrozenArrays
from bv.core.tasks import Batch, ClassificationTask, Metrics, Params
from bv.distill.teachers import Teacher, load_teacher

DISTANCES = ("kl", "xent")


def distance(teacher_probs: jax.Array, student_logits: jax.Array, kind: str, temperature: float) -> jax.Array:
    """Per-example KL(teacher || student) or cross-entropy, with the student's logits divided by ``temperature``."""
    log_q = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature, axis=-1)
    xent = -jnp.sum(teacher_probs * log_q, axis=-1)
    if kind == "xent":
        return xent
    entropy = -jnp.sum(jnp.where(teacher_probs > 0, teacher_probs * jnp.log(teacher_probs), 0.0), axis=-1)
    return xent - entropy


@registry.tasks.register("distill")
class DistillTask(ClassificationTask):
    """A student trained towards its teachers' predictions on the same augmented images.

    The student is built, initialised and predicts as in classification; the loss and the
    teachers' predict functions are distillation's.
    """

    def __init__(self, config: ml_collections.ConfigDict):
        super().__init__(config)
        self.kind = config.get("distance", "kl")
        if self.kind not in DISTANCES:
            raise ConfigError(f"config.distance must be one of {', '.join(DISTANCES)}, got {self.kind!r}.")
        self.temperature = float(config.get("temperature", 1.0))
        if self.temperature <= 0:
            raise ConfigError(f"config.temperature must be positive, got {self.temperature}.")
        self.label_weight = float(config.get("label_weight", 0.0))
        if not 0.0 <= self.label_weight <= 1.0:
            raise ConfigError(f"config.label_weight must be in [0, 1], got {self.label_weight}.")
        specs = config.get("teachers")
        if not specs:
            raise ConfigError(
                "The distill task needs config.teachers = {name: dict(init=<workdir, model folder, Hub repo>)}."
            )
        self.teachers: list[Teacher] = [load_teacher(name, dict(spec)) for name, spec in dict(specs).items()]
        self._frozen = FrozenArrays({t.name: t.params for t in self.teachers})
        num_classes = config.get("num_classes")
        for teacher in self.teachers:
            if teacher.num_classes != num_classes:
                raise ConfigError(
                    f"The teacher {teacher.name!r} predicts {teacher.num_classes} classes, the student "
                    f"{num_classes} (config.num_classes): distillation needs the same classes."
                )

    def init(self, rng: jax.Array, batch_spec: Mapping[str, jax.ShapeDtypeStruct]) -> Params:
        image = batch_spec["image"]
        for teacher in self.teachers:
            channels = teacher.model.config.channels
            if image.shape[-1] != channels:
                raise ConfigError(
                    f"The teacher {teacher.name!r} takes {channels}-channel images; the batch has {image.shape[-1]}."
                )
        return super().init(rng, batch_spec)

    def teacher_probs(self, images: jax.Array) -> jax.Array:
        """The teachers' mean softmax (at the temperature) on ``images``."""
        weights = self._frozen.value
        probs = [jax.nn.softmax(t.logits(weights[t.name], images) / self.temperature, axis=-1) for t in self.teachers]
        return sum(probs[1:], probs[0]) / len(probs)

    def loss(self, params: Params, batch: Batch, rng: jax.Array) -> tuple[jax.Array, Metrics]:
        images = batch["image"]
        logits, _ = self.model.apply({"params": params}, images, train=True, rngs={"dropout": rng})
        probs = self.teacher_probs(images)
        per_example = distance(probs, logits, self.kind, self.temperature)
        metrics = {
            f"distill_{self.kind}": jnp.mean(per_example),
            "agree@1": jnp.mean(jnp.argmax(logits, -1) == jnp.argmax(probs, -1)),
        }
        loss = jnp.mean(per_example)
        if self.label_weight > 0:
            label_loss = jnp.mean(losses.get("softmax_xent")(logits, batch["labels"]))
            metrics["label_loss"] = label_loss
            loss = (1 - self.label_weight) * loss + self.label_weight * label_loss
        return loss, metrics

    def frozen(self) -> FrozenArrays:
        """The teachers' params, by teacher name: passed into compiled functions, never trained or saved."""
        return self._frozen

    def predict_fns(self) -> dict[str, Callable[..., Any]]:
        fns = super().predict_fns()
        for i, teacher in enumerate(self.teachers):
            # The student's params come in and are ignored: the teacher's are its own, frozen.
            fn = (lambda t: lambda params, images: t.logits(self._frozen.value[t.name], images))(teacher)
            fns[f"teacher_{teacher.name}"] = fn
            if i == 0:
                fns["teacher"] = fn
        return fns
