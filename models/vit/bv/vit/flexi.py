"""FlexiViT: one ViT for every patch size (https://arxiv.org/abs/2212.08013).

The model is a plain ``vit`` with ``posemb_grid`` set: its stem kernel is stored at
the base ``patch_size`` and PI-resized on the fly, its learned position embedding
is stored at ``posemb_grid`` and resized to each call's patch grid. The task
``flexi_classification`` trains it with a random patch size per step, drawn from
``config.flexi.patch_sizes`` with ``config.flexi.weights``; all sizes are compiled
into one step (``lax.switch``), so the trainer is unchanged. Its predict functions
``predict_p{P}`` let evaluators measure every patch size in one run:

    config.task = "flexi_classification"
    config.model = dict(patch_size=(7, 7), posemb_grid=4, ...)
    config.flexi = dict(patch_sizes=(4, 7, 14), weights=(1, 1, 1))
    config.evals.test_p4 = dict(type="classification", pred="predict_p4", ...)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from bv.core import registry
from bv.core.tasks import Batch, ClassificationTask, Metrics, Params


@registry.tasks.register("flexi_classification")
class FlexiClassificationTask(ClassificationTask):
    """Classification trained with a random patch size per step; predict functions at every patch size."""

    def __init__(self, config: ml_collections.ConfigDict):
        super().__init__(config)
        flexi = config.get("flexi", {})
        sizes = tuple(int(p) for p in flexi.get("patch_sizes", ()))
        if not sizes or any(p <= 0 for p in sizes):
            raise ValueError(
                "config.flexi.patch_sizes must list the positive patch sizes to train with, e.g. (8, 16, 32); "
                f"got {flexi.get('patch_sizes')!r}."
            )
        weights = np.asarray(flexi.get("weights") or [1.0] * len(sizes), np.float64)
        if weights.shape != (len(sizes),) or (weights < 0).any() or weights.sum() <= 0:
            raise ValueError(
                f"config.flexi.weights must give one non-negative weight per patch size {sizes}, "
                f"got {flexi.get('weights')!r}."
            )
        self.patch_sizes = sizes
        self.probs = jnp.asarray(weights / weights.sum(), jnp.float32)
        self.eval_patch_sizes = tuple(int(p) for p in flexi.get("eval_patch_sizes", sizes))

    def loss(self, params: Params, batch: Batch, rng: jax.Array) -> tuple[jax.Array, Metrics]:
        choice_rng, dropout_rng = jax.random.split(rng)
        index = jax.random.choice(choice_rng, len(self.patch_sizes), p=self.probs)

        def loss_at(patch: int) -> Callable[[], jax.Array]:
            def fn() -> jax.Array:
                logits, _ = self.model.apply(
                    {"params": params}, batch["image"], train=True, patch_size=patch, rngs={"dropout": dropout_rng}
                )
                per_example = self.loss_fn(logits, batch["labels"], label_smoothing=self.label_smoothing)
                return jnp.mean(per_example)

            return fn

        loss = jax.lax.switch(index, [loss_at(p) for p in self.patch_sizes])
        return loss, {"patch_size": jnp.asarray(self.patch_sizes, jnp.float32)[index]}

    def predict_fns(self) -> dict[str, Callable[..., Any]]:
        fns = dict(super().predict_fns())

        def at(patch: int) -> Callable[..., Any]:
            def predict(params: Params, images: jax.Array) -> tuple[jax.Array, Mapping[str, jax.Array]]:
                logits, out = self.model.apply({"params": params}, images, train=False, patch_size=patch)
                return logits, dict(out)

            return predict

        fns.update({f"predict_p{p}": at(p) for p in self.eval_patch_sizes})
        return fns
