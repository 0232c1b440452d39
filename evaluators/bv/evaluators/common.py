"""What every evaluator shares: the contract with the trainer, predict-function lookup, eval batches.

The contract. An evaluator is registered in ``bv.core.registry.evaluators`` under
the ``type`` a config names, and built as::

    factory(predict_fns, *, mesh, batch_size, data_dir, workdir, name, **its_own_config)

``predict_fns`` is the task's whole table (``Task.predict_fns()``); each
evaluator picks the functions it needs by name with :func:`pick`, from config
keys such as ``pred`` (default ``"predict"``), so any project's model can be
judged by any evaluator that fits. ``name`` is the entry's name in ``config.evals``
(for messages and file names); ``workdir`` is where the run writes (None: nowhere).
``run(params)`` returns ``{metric: float}``; the trainer prefixes the evaluator's
name (``test/prec@1``). Every process of a multi-process run builds and runs
every evaluator (their arrays are global), and gets the same metrics.

Eval batches are laid out by :func:`bv.core.sharding.batch_sharding`, the rule
the trainer uses, so an evaluator works on any mesh that training works on.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Mapping, Protocol, Sequence

import jax
import numpy as np
import tensorflow as tf

import bv.pp
from bv.core import progress, sharding
from bv.core.data import input_pipeline
from bv.core.errors import UserError

PredictFn = Callable[..., Any]
Params = Any


class Evaluator(Protocol):
    """What the trainer and ``bv-eval`` call: the metrics of ``params``, as plain floats.

    With ``config.ema`` the trainer also runs each evaluator on the EMA of the params
    (``ema/<name>/...``), unless the evaluator sets ``evaluate_ema = False`` (those
    that write files, whose second run would replace the first's).
    """

    def run(self, params: Params) -> dict[str, float]: ...


class EvaluatorConfigError(UserError, ValueError):
    """An evaluator's config that cannot work; the message names the evaluator and the fix."""


def pick(predict_fns: Mapping[str, PredictFn], name: str, where: str, key: str = "pred") -> PredictFn:
    """The predict function ``name`` of the task, or an error naming the config key and the choices."""
    if name not in predict_fns:
        raise EvaluatorConfigError(
            f"{where}: {key}={name!r} is not a predict function of this task; it has: "
            f"{', '.join(sorted(predict_fns)) or '(none)'}. Set {key} to one of them."
        )
    return predict_fns[name]


def first_output(outputs: Any) -> Any:
    """A predict function may return ``x`` or ``(x, extras)``; this is ``x``."""
    return outputs[0] if isinstance(outputs, tuple) else outputs


def named_output(outputs: Any, name: str, where: str) -> jax.Array:
    """``outputs[1][name]`` (an intermediate such as ``pre_logits``), or an error listing the names it has."""
    extras = outputs[1] if isinstance(outputs, tuple) and len(outputs) > 1 else {}
    if not isinstance(extras, Mapping) or name not in extras:
        have = ", ".join(sorted(extras)) if isinstance(extras, Mapping) else "(none)"
        raise EvaluatorConfigError(
            f"{where}: the model does not output {name!r}; the predict function gives: {have or '(none)'}. "
            "Set the evaluator's representation key to one of them."
        )
    return extras[name]


def check_data(data: Any, where: str, example: str = "dict(name='mnist5k', split='test')") -> None:
    """An evaluator's ``data`` must be a dict with ``name`` and ``split``; else an error showing ``example``."""
    if not isinstance(data, Mapping) or "name" not in data or "split" not in data:
        raise EvaluatorConfigError(
            f"{where}: an evaluator's data needs 'name' and 'split', e.g. {example}; "
            f"got {dict(data) if isinstance(data, Mapping) else data!r}."
        )


class EvalData:
    """One split, preprocessed, padded and masked, as global batches laid out for ``mesh``.

    Every example of ``data.split`` is seen exactly once over all hosts; padding
    examples carry ``_mask == False``. ``pp_fn`` is a pp string or a function of one
    example (for evaluators that build their own). ``keys`` limits what goes to the devices
    (strings cannot); ``host_keys`` are kept on the host as numpy arrays.
    """

    def __init__(
        self,
        data: Mapping[str, Any],
        pp_fn: str | Callable[[dict[str, tf.Tensor]], dict[str, tf.Tensor]],
        batch_size: int,
        mesh: jax.sharding.Mesh,
        *,
        where: str,
        data_dir: str | None = None,
        cache: bool = False,
        keys: Sequence[str] | None = None,
        host_keys: Sequence[str] = (),
    ):
        check_data(data, where)
        shards = sharding.batch_shards(mesh)
        if batch_size <= 0 or batch_size % shards:
            raise EvaluatorConfigError(
                f"{where}: batch_size={batch_size} must be a positive multiple of the {shards} devices the "
                f"batch is split over (mesh axes {sharding.batch_axes(mesh)})."
            )
        self.where = where
        self.mesh = mesh
        self.keys = None if keys is None else tuple(dict.fromkeys([*keys, "_mask"]))
        self.host_keys = tuple(host_keys)
        self.sharding = sharding.batch_sharding(mesh)
        builder = input_pipeline.get_builder(data["name"], data.get("data_dir", data_dir))
        split = data["split"]
        try:
            self.num_examples = input_pipeline.num_examples(builder, split)
        except (ValueError, KeyError) as e:
            splits = ", ".join(sorted(builder.info.splits)) or "(none)"
            raise EvaluatorConfigError(
                f"{where}: data set {data['name']!r} has no split {split!r} ({e}). Its splits: {splits}."
            ) from None
        if batch_size > self.num_examples:
            raise EvaluatorConfigError(
                f"{where}: batch_size={batch_size} is larger than the whole split {data['name']}:{split} "
                f"({self.num_examples} examples), so every batch would be mostly padding. Set the evaluator's "
                f"batch_size to at most {self.num_examples}."
            )
        preprocess = bv.pp.get_preprocess_fn(pp_fn) if isinstance(pp_fn, str) else pp_fn
        self.dataset, self.steps = input_pipeline.make_for_eval(builder, split, batch_size, preprocess, cache=cache)

    def batches(self) -> Iterator[tuple[dict[str, jax.Array], dict[str, np.ndarray]]]:
        """``(device batch, host batch)`` pairs; the device batch always holds ``_mask``."""
        # A bar on a terminal for evals that take a while; nothing in logs (bv.core.progress).
        for batch in progress.bar(self.dataset.as_numpy_iterator(), total=self.steps, desc=self.where, unit="batch"):
            host = {k: batch[k] for k in self.host_keys if k in batch}
            on_device = {k: v for k, v in batch.items() if (self.keys is None or k in self.keys)}
            on_device = {k: v for k, v in on_device.items() if np.asarray(v).dtype.kind not in "SUO"}
            yield input_pipeline.to_global_arrays(on_device, self.sharding), host

    def element_spec(self) -> Mapping[str, tf.TensorSpec]:
        return self.dataset.element_spec  # type: ignore[no-any-return]


def replicated(mesh: jax.sharding.Mesh) -> jax.sharding.NamedSharding:
    """Where per-batch sums go: whole on every device, so every host can read them."""
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


def local_rows(x: jax.Array) -> np.ndarray:
    """This host's rows of a batch-sharded array, in order (all rows on a single host)."""
    if jax.process_count() == 1:
        return np.asarray(jax.device_get(x))
    shards = sorted(x.addressable_shards, key=lambda s: s.index[0].start or 0)
    seen: dict[int, np.ndarray] = {}
    for shard in shards:
        seen.setdefault(shard.index[0].start or 0, np.asarray(shard.data))
    return np.concatenate([seen[k] for k in sorted(seen)], axis=0)
