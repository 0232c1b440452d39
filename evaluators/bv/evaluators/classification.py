"""Classification evaluator: precision@1 and loss over a whole split, each example once."""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

import bv.pp
from bv.core import losses, registry
from bv.core.data import input_pipeline


@registry.evaluators.register("classification")
class ClassificationEvaluator:
    """Reports ``prec@1`` (the top logit is a positive label) and the mean ``loss``.

    ``predict_fn(params, images)`` returns logits, or ``(logits, extras)``. The
    eval pipeline pads the last batches and masks the padding, so the metrics
    count every example of ``data.split`` exactly once whatever the batch size.
    """

    def __init__(
        self,
        predict_fn: Callable[..., Any],
        *,
        data: Mapping[str, Any],
        pp_fn: str,
        batch_size: int,
        mesh: jax.sharding.Mesh,
        loss_name: str = "softmax_xent",
        label_key: str = "labels",
        data_dir: str | None = None,
        cache: bool = False,
    ):
        if "name" not in data or "split" not in data:
            raise ValueError(f"An evaluator's data needs 'name' and 'split'; got {dict(data)}.")
        self.label_key = label_key
        builder = input_pipeline.get_builder(data["name"], data_dir)
        self.dataset, self.steps = input_pipeline.make_for_eval(
            builder, data["split"], batch_size, bv.pp.get_preprocess_fn(pp_fn), cache=cache
        )
        self.batch_sharding = NamedSharding(mesh, PartitionSpec(mesh.axis_names))
        loss_fn = losses.losses.get(loss_name)

        def eval_step(params: Any, batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
            logits = predict_fn(params, batch["image"])
            if isinstance(logits, tuple):
                logits = logits[0]
            labels = batch[label_key]
            mask = batch["_mask"].astype(jnp.float32)
            top1 = jnp.argmax(logits, axis=-1)
            correct = jnp.take_along_axis(labels, top1[:, None], axis=-1)[:, 0] > 0
            return {
                "correct": jnp.sum(correct * mask),
                "loss": jnp.sum(loss_fn(logits, labels) * mask),
                "count": jnp.sum(mask),
            }

        self._eval_step = jax.jit(eval_step, out_shardings=NamedSharding(mesh, PartitionSpec()))

    def run(self, params: Any) -> dict[str, float]:
        """The metrics of ``params`` over the whole split."""
        totals = {"correct": 0.0, "loss": 0.0, "count": 0.0}
        for batch in self.dataset.as_numpy_iterator():
            batch = {k: v for k, v in batch.items() if k in ("image", self.label_key, "_mask")}
            sums = jax.device_get(self._eval_step(params, input_pipeline.to_global_arrays(batch, self.batch_sharding)))
            for key in totals:
                totals[key] += float(np.asarray(sums[key]))
        if not totals["count"]:
            raise ValueError("The evaluation saw no examples.")
        return {"prec@1": totals["correct"] / totals["count"], "loss": totals["loss"] / totals["count"]}
