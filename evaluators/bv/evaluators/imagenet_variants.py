"""ImageNet's re-labelled and re-collected test sets: ReaL ("real") and ImageNetV2 ("imagenet_v2").

- ReaL (Beyer et al. 2020, "Are we done with ImageNet?"; TFDS ``imagenet2012_real``)
  gives each ImageNet validation image a set of plausible labels, ``real_label``,
  which is empty for images the raters found no fitting class for. Precision@1
  counts the top prediction as right when it is any of them; images without
  labels are left out of the count, as in the paper.
- ImageNetV2 (Recht et al. 2019; TFDS ``imagenet_v2``, split ``test``) is a new
  test set collected like the original; it is scored with plain top-1.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from bv.core import registry
from bv.evaluators import common
from bv.evaluators.classification import ClassificationEvaluator

REAL_PP_SUFFIX = "onehot(1000, key='real_label', key_result='labels')"
"""What a ReaL pp ends with (before ``keep``): the variable-length ``real_label`` as one multi-hot vector."""


@registry.evaluators.register("real")
class RealEvaluator:
    """Reports ReaL ``prec@1`` over the images that have at least one ReaL label.

    The pp (``pp_fn``) must turn ``real_label`` into a multi-hot vector under
    ``label_key`` (default ``"labels"``), e.g. ``"decode|resize(224)|value_range(-1, 1)|"
    "onehot(1000, key='real_label', key_result='labels')|keep('image', 'labels')"``;
    an image without ReaL labels then has an all-zero vector and is not counted.
    ``data`` defaults to ``imagenet2012_real``'s ``validation`` split; ``pred``
    (default ``"predict"``) maps images to logits or ``(logits, extras)``.
    """

    def __init__(
        self,
        predict_fns: Mapping[str, Callable[..., Any]],
        *,
        pp_fn: str,
        batch_size: int,
        mesh: jax.sharding.Mesh,
        data: Mapping[str, Any] | None = None,
        pred: str = "predict",
        label_key: str = "labels",
        data_dir: str | None = None,
        workdir: str | None = None,
        cache: bool = False,
        name: str = "real",
    ):
        del workdir  # Writes nothing.
        where = f"Evaluator {name!r} (real)"
        predict_fn = common.pick(predict_fns, pred, where)
        data = dict(data) if data is not None else {"name": "imagenet2012_real", "split": "validation"}
        self.data = common.EvalData(
            data, pp_fn, batch_size, mesh, where=where, data_dir=data_dir, cache=cache, keys=("image", label_key)
        )
        spec = self.data.element_spec().get(label_key)
        if spec is None or spec.shape.rank != 2:
            got = "nothing" if spec is None else f"shape {spec.shape[1:]} per example"
            raise common.EvaluatorConfigError(
                f"{where}: the pp must give each image's ReaL labels as one multi-hot vector under {label_key!r}, "
                f"but gives {got}. Add {REAL_PP_SUFFIX!r} to pp_fn (and keep {label_key!r})."
            )

        def eval_step(params: Any, batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
            logits = common.first_output(predict_fn(params, batch["image"]))
            labels = batch[label_key]
            labelled = batch["_mask"] & (jnp.max(labels, axis=-1) > 0)
            top1 = jnp.argmax(logits, axis=-1)
            correct = jnp.take_along_axis(labels, top1[:, None], axis=-1)[:, 0] > 0
            return {"correct": jnp.sum(correct & labelled), "count": jnp.sum(labelled)}

        self._eval_step = jax.jit(eval_step, out_shardings=common.replicated(mesh))

    def run(self, params: Any) -> dict[str, float]:
        """ReaL precision@1 of ``params`` over the labelled images of the split."""
        correct = count = 0
        for batch, _ in self.data.batches():
            sums = jax.device_get(self._eval_step(params, batch))
            correct += int(np.asarray(sums["correct"]))
            count += int(np.asarray(sums["count"]))
        if not count:
            raise ValueError(
                f"{self.data.where}: no image of the split has a ReaL label (all multi-hot vectors are zero); "
                f"check that the pp reads 'real_label' ({REAL_PP_SUFFIX!r})."
            )
        return {"prec@1": correct / count}


@registry.evaluators.register("imagenet_v2")
class ImageNetV2Evaluator(ClassificationEvaluator):
    """Top-1 (``prec@1``) and ``loss`` on ImageNetV2, as the ``classification`` evaluator.

    ``data`` defaults to TFDS ``imagenet_v2/<variant>`` (``variant`` default
    ``"matched-frequency"``, the one papers report; also ``"threshold-0.7"`` and
    ``"topimages"``), split ``test``. The pp must give ``image`` and one-hot
    ``labels``, e.g. ``"...|onehot(1000, key='label', key_result='labels')|keep('image', 'labels')"``.
    """

    def __init__(
        self,
        predict_fns: Mapping[str, Callable[..., Any]],
        *,
        pp_fn: str,
        batch_size: int,
        mesh: jax.sharding.Mesh,
        data: Mapping[str, Any] | None = None,
        variant: str = "matched-frequency",
        name: str = "imagenet_v2",
        **config: Any,
    ):
        data = dict(data) if data is not None else {"name": f"imagenet_v2/{variant}", "split": "test"}
        super().__init__(predict_fns, data=data, pp_fn=pp_fn, batch_size=batch_size, mesh=mesh, name=name, **config)
