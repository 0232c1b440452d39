"""Averages over a split: any per-example values a task computes ("mean"), and token perplexity ("perplexity").

``mean`` is big_vision's generic evaluator: the predict function returns per-example
values (a dict of ``[batch]`` arrays, or one array) and the evaluator reports each one's
mean over the real examples. ``perplexity`` scores a generative model's per-token
logits against target tokens: the mean negative log-likelihood over all real target
tokens of the split (a long text weighs more than a short one, as in a language
model's loss) and its exponential.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from bv.core import registry
from bv.evaluators import common


def _inputs(batch: Mapping[str, jax.Array], keys: tuple[str, ...], where: str) -> list[jax.Array]:
    missing = [k for k in keys if k not in batch]
    if missing:
        raise common.EvaluatorConfigError(
            f"{where}: the batch has no {', '.join(map(repr, missing))} (it has {sorted(batch)}); "
            "make pp_fn produce it or change the evaluator's input keys."
        )
    return [batch[k] for k in keys]


def _keys(value: str | Sequence[str] | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    return (value,) if isinstance(value, str) else tuple(value)


def _sum_batches(data: common.EvalData, step: Callable[..., Any], params: Any) -> dict[str, float]:
    totals: dict[str, float] = {}
    for batch, _ in data.batches():
        for key, value in jax.device_get(step(params, batch)).items():
            totals[key] = totals.get(key, 0.0) + float(np.asarray(value))
    return totals


@registry.evaluators.register("mean")
class MeanEvaluator:
    """Reports the mean over the split of each per-example value the predict function returns.

    ``pred`` (default ``"predict"``) is called as ``pred(params, batch)`` with the whole
    device batch, or as ``pred(params, *[batch[k] for k in inputs])`` when ``inputs``
    names keys. It returns ``{name: [batch] values}``, or one ``[batch]`` array (reported
    under the name of ``pred``), or either as the first item of ``(values, extras)``.
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
        inputs: str | Sequence[str] | None = None,
        data_dir: str | None = None,
        workdir: str | None = None,
        cache: bool = False,
        name: str = "mean",
    ):
        del workdir  # Nothing to write.
        where = f"Evaluator {name!r} (mean)"
        self.where = where
        predict_fn = common.pick(predict_fns, pred, where)
        keys = _keys(inputs)
        self.data = common.EvalData(
            data, pp_fn, batch_size, mesh, where=where, data_dir=data_dir, cache=cache, keys=keys
        )

        def eval_step(params: Any, batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
            args = [batch] if keys is None else _inputs(batch, keys, where)
            out = common.first_output(predict_fn(params, *args))
            values = dict(out) if isinstance(out, Mapping) else {pred: out}
            mask = batch["_mask"]
            sums = {"_count": jnp.sum(mask.astype(jnp.float32))}
            for key, value in values.items():
                value = jnp.asarray(value)
                if value.shape != mask.shape:
                    raise common.EvaluatorConfigError(
                        f"{where}: {pred!r} must return one value per example (shape {mask.shape}); "
                        f"{key!r} has shape {value.shape}."
                    )
                sums[key] = jnp.sum(jnp.where(mask, value.astype(jnp.float32), 0.0))
            return sums

        self._eval_step = jax.jit(eval_step, out_shardings=common.replicated(mesh))

    def run(self, params: Any) -> dict[str, float]:
        """The mean of each value over the real examples of the split."""
        totals = _sum_batches(self.data, self._eval_step, params)
        count = totals.pop("_count", 0.0)
        if not count:
            raise ValueError(f"{self.where}: the evaluation saw no examples.")
        return {key: value / count for key, value in totals.items()}


@registry.evaluators.register("perplexity")
class PerplexityEvaluator:
    """Reports ``loss`` (mean NLL per real target token, in nats) and ``perplexity`` (``exp(loss)``).

    ``pred(params, *[batch[k] for k in input_key])`` returns logits ``[batch, T, vocab]``
    (or ``(logits, extras)``) that score ``batch[target_key]`` (int ``[batch, T]``): position
    ``t`` scores target ``t``, or target ``t + 1`` with ``shift=True`` (a decoder fed its
    own targets). A target token counts when its example is real (``_mask``) and it is
    not padding: ``batch[mask_key]`` when given, else ``target != pad_value`` (None: every
    token counts). Sums run over all tokens of the split, so the loss is the per-token
    mean, not a mean of per-example means.
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
        input_key: str | Sequence[str] = "labels",
        target_key: str = "labels",
        mask_key: str | None = None,
        pad_value: int | None = 0,
        shift: bool = False,
        data_dir: str | None = None,
        workdir: str | None = None,
        cache: bool = False,
        name: str = "perplexity",
    ):
        del workdir  # Nothing to write.
        where = f"Evaluator {name!r} (perplexity)"
        self.where = where
        predict_fn = common.pick(predict_fns, pred, where)
        inputs = _keys(input_key) or ()
        wanted = [*inputs, target_key, *([mask_key] if mask_key else [])]
        self.data = common.EvalData(
            data, pp_fn, batch_size, mesh, where=where, data_dir=data_dir, cache=cache, keys=wanted
        )

        def eval_step(params: Any, batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
            logits = common.first_output(predict_fn(params, *_inputs(batch, inputs, where)))
            (targets,) = _inputs(batch, (target_key,), where)
            if mask_key:
                (token_mask,) = _inputs(batch, (mask_key,), where)
                token_mask = token_mask.astype(bool)
            elif pad_value is not None:
                token_mask = targets != pad_value
            else:
                token_mask = jnp.ones(targets.shape, bool)
            if shift:
                logits, targets, token_mask = logits[:, :-1], targets[:, 1:], token_mask[:, 1:]
            if logits.ndim != 3 or logits.shape[:2] != targets.shape or token_mask.shape != targets.shape:
                raise common.EvaluatorConfigError(
                    f"{where}: {pred!r} must give logits [batch, T, vocab] for targets [batch, T]; got logits "
                    f"{logits.shape}, targets {targets.shape} and token mask {token_mask.shape}"
                    f"{' (after shift)' if shift else ''}."
                )
            logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
            nll = -jnp.take_along_axis(logp, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
            counted = token_mask & batch["_mask"][:, None]
            return {"nll": jnp.sum(jnp.where(counted, nll, 0.0)), "tokens": jnp.sum(counted.astype(jnp.float32))}

        self._eval_step = jax.jit(eval_step, out_shardings=common.replicated(mesh))

    def run(self, params: Any) -> dict[str, float]:
        """Token-level mean NLL and perplexity over the split."""
        totals = _sum_batches(self.data, self._eval_step, params)
        if not totals.get("tokens"):
            raise ValueError(f"{self.where}: the evaluation saw no target tokens (all padding or masked).")
        loss = totals["nll"] / totals["tokens"]
        return {"loss": loss, "perplexity": float(np.exp(loss))}
