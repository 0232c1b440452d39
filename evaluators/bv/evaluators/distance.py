"""Distance evaluator: how close a student's predictions are to a reference's (a teacher's), on held-out data.

This is big_vision's ``proj.distill.distance`` for the metrics a distillation run
watches: over every example of ``data.split`` (each once; padding is masked) it
reports

- ``kl``: the mean KL(softmax(ref / T) || softmax(student / T)), in nats;
- ``xent``: the mean cross-entropy ``-sum softmax(ref / T) * log_softmax(student / T)``
  (``kl`` plus the reference's entropy);
- ``agree@1``: the share of examples where the student's and the reference's
  top classes are the same;
- ``agree@k`` for each further ``k`` in ``ks``: the share of examples where the
  reference's top class is among the student's ``k`` highest logits. A ``k`` not
  smaller than the number of classes (always 1) is left out.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from bv.core import registry
from bv.evaluators import common


def _check_ks(ks: Sequence[int] | int, where: str) -> tuple[int, ...]:
    values = (ks,) if isinstance(ks, int) else tuple(ks)
    if not values or any(isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1 for k in values):
        raise common.EvaluatorConfigError(f"{where}: ks must be positive integers, e.g. (1, 5); got {ks!r}.")
    return tuple(sorted({int(k) for k in values}))


@registry.evaluators.register("distance")
class DistanceEvaluator:
    """Reports ``kl``, ``xent``, ``agree@1`` and ``agree@k`` of a student (``pred``) against ``reference``.

    Both predict functions are called as ``fn(params, images)`` and return logits
    ``[batch, classes]`` (or ``(logits, extras)``); a distillation task gives its
    teachers as ``teacher`` or ``teacher_<name>``. ``temperature`` divides both
    logits before the softmax of ``kl`` and ``xent``; the agreements do not
    depend on it. Everything is computed in float32.
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
        reference: str = "teacher",
        temperature: float = 1.0,
        ks: Sequence[int] = (1, 5),
        data_dir: str | None = None,
        workdir: str | None = None,
        cache: bool = False,
        name: str = "distance",
    ):
        where = f"Evaluator {name!r} (distance)"
        student_fn = common.pick(predict_fns, pred, where)
        reference_fn = common.pick(predict_fns, reference, where, key="reference")
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
            raise common.EvaluatorConfigError(f"{where}: temperature must be a positive number; got {temperature!r}.")
        self.ks = _check_ks(ks, where)
        self.temperature = float(temperature)
        self.data = common.EvalData(
            data, pp_fn, batch_size, mesh, where=where, data_dir=data_dir, cache=cache, keys=("image",)
        )
        inv_t = 1.0 / self.temperature
        ks_ = self.ks

        def eval_step(params: Any, batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
            images = batch["image"]
            student = jnp.asarray(common.first_output(student_fn(params, images)))
            ref = jnp.asarray(common.first_output(reference_fn(params, images)))
            if student.shape != ref.shape:
                raise common.EvaluatorConfigError(
                    f"{where}: the student {pred!r} gives logits of shape {student.shape} but the reference "
                    f"{reference!r} gives {ref.shape}; they must predict the same classes. Set pred and "
                    "reference to predict functions over the same label space."
                )
            if student.ndim != 2:
                raise common.EvaluatorConfigError(
                    f"{where}: {pred!r} and {reference!r} must return logits [batch, classes]; got shape "
                    f"{student.shape}."
                )
            student = student.astype(jnp.float32)
            ref = ref.astype(jnp.float32)
            mask = batch["_mask"].astype(jnp.float32)
            num_classes = student.shape[-1]

            log_q = jax.nn.log_softmax(student * inv_t, axis=-1)
            log_p = jax.nn.log_softmax(ref * inv_t, axis=-1)
            p = jnp.exp(log_p)
            xent = -jnp.sum(p * log_q, axis=-1)
            kl = jnp.sum(p * (log_p - log_q), axis=-1)

            ref_top = jnp.argmax(ref, axis=-1)
            sums = {
                "kl": jnp.sum(kl * mask),
                "xent": jnp.sum(xent * mask),
                "agree@1": jnp.sum((jnp.argmax(student, axis=-1) == ref_top) * mask),
                "count": jnp.sum(mask),
            }
            for k in ks_:
                if k == 1 or k >= num_classes:
                    continue
                _, top_k = jax.lax.top_k(student, k)
                hit = jnp.any(top_k == ref_top[:, None], axis=-1)
                sums[f"agree@{k}"] = jnp.sum(hit * mask)
            return sums

        self._eval_step = jax.jit(eval_step, out_shardings=common.replicated(mesh))

    def run(self, params: Any) -> dict[str, float]:
        """The metrics of ``params`` over the whole split."""
        totals: dict[str, float] = {}
        for batch, _ in self.data.batches():
            sums = jax.device_get(self._eval_step(params, batch))
            for key, value in sums.items():
                totals[key] = totals.get(key, 0.0) + float(np.asarray(value))
        count = totals.pop("count", 0.0)
        if not count:
            raise ValueError(f"{self.data.where}: the evaluation saw no examples.")
        return {key: value / count for key, value in totals.items()}
