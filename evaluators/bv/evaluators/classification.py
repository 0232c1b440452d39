"""Classification evaluator: precision@1 and loss over a whole split, each example once."""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from bv.core import losses, registry
from bv.evaluators import common


@registry.evaluators.register("classification")
class ClassificationEvaluator:
    """Reports ``prec@1`` (the top logit is a positive label) and the mean ``loss``.

    The predict function (config ``pred``, default ``"predict"``) maps images to
    logits, or to ``(logits, extras)``. The eval pipeline pads the last batches and
    masks the padding, so the metrics count every example of ``data.split``
    exactly once whatever the batch size.
    """

    def __init__(
        self,
        predict_fns: Mapping[str, Callable[..., Any]],
        *,
        data: Mapping[str, Any],
        pp_fn: str,
        batch_size: int,
        mesh: jax.sharding.Mesh,
        pred: str = "predict",
        loss_name: str = "softmax_xent",
        label_key: str = "labels",
        data_dir: str | None = None,
        workdir: str | None = None,
        cache: bool = False,
        name: str = "classification",
    ):
        where = f"Evaluator {name!r} (classification)"
        predict_fn = common.pick(predict_fns, pred, where)
        self.data = common.EvalData(
            data, pp_fn, batch_size, mesh, where=where, data_dir=data_dir, cache=cache, keys=("image", label_key)
        )
        loss_fn = losses.get(loss_name)

        def eval_step(params: Any, batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
            logits = common.first_output(predict_fn(params, batch["image"]))
            labels = batch[label_key]
            mask = batch["_mask"].astype(jnp.float32)
            top1 = jnp.argmax(logits, axis=-1)
            correct = jnp.take_along_axis(labels, top1[:, None], axis=-1)[:, 0] > 0
            return {
                "correct": jnp.sum(correct * mask),
                "loss": jnp.sum(loss_fn(logits, labels) * mask),
                "count": jnp.sum(mask),
            }

        self._eval_step = jax.jit(eval_step, out_shardings=common.replicated(mesh))

    def run(self, params: Any) -> dict[str, float]:
        """The metrics of ``params`` over the whole split."""
        totals = {"correct": 0.0, "loss": 0.0, "count": 0.0}
        for batch, _ in self.data.batches():
            sums = jax.device_get(self._eval_step(params, batch))
            for key in totals:
                totals[key] += float(np.asarray(sums[key]))
        if not totals["count"]:
            raise ValueError(f"{self.data.where}: the evaluation saw no examples.")
        return {"prec@1": totals["correct"] / totals["count"], "loss": totals["loss"] / totals["count"]}
