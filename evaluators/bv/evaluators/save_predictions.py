"""Writes a model's per-example predictions over a split to a file, for analysis outside training.

Each example of the split is written once, in the split's order, with its
position (``index``), its ``id`` (the input pipeline's int32 hash of the TFDS
example id, stable across runs), the logits (or only the ``top_k`` of them),
its ``labels`` when the pp gives them, any named ``outputs`` of the predict
function, and any host-side ``keys`` of the pp (such as a file name string).

Formats: ``npz`` (plain arrays, loadable with ``allow_pickle=False``: strings are
fixed-width unicode) or ``jsonl`` (one JSON object per example). Files are
written to a temporary name and renamed, so a reader never sees half a file;
only process 0 writes.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np

from bv.core import registry
from bv.core.data import input_pipeline
from bv.core.files import atomic_write
from bv.evaluators import common

FORMATS = ("npz", "jsonl")


@registry.evaluators.register("save_predictions")
class SavePredictionsEvaluator:
    """Saves per-example predictions to ``<out_dir>/predictions_<name>.<format>``; reports ``num_examples``.

    Config: ``data``, ``pp_fn``, ``pred`` (default ``"predict"``: images to logits
    or ``(logits, extras)``), ``top_k`` (None: all logits; k: arrays ``top_k_classes``
    and ``top_k_logits``, best first), ``format`` (``"npz"`` or ``"jsonl"``),
    ``label_key`` (saved as ``labels`` when the pp gives it), ``outputs`` (names in
    the predict function's extras to save, e.g. ``("pre_logits",)``), ``keys``
    (other pp outputs to save as they are, strings included; one process only),
    ``out_dir`` (default: the run's workdir). ``run(params, step=...)`` adds the step
    to the file name (``predictions_<name>_<step>.npz``); without it each run
    replaces the last file.
    """

    evaluate_ema = False  # one file per evaluator: the trainer's EMA pass would replace the params' predictions

    def __init__(
        self,
        predict_fns: Mapping[str, Callable[..., Any]],
        *,
        data: Mapping[str, Any],
        pp_fn: str,
        batch_size: int,
        mesh: jax.sharding.Mesh,
        pred: str = "predict",
        top_k: int | None = None,
        format: str = "npz",  # noqa: A002  (the config key users write)
        label_key: str = "labels",
        outputs: Sequence[str] = (),
        keys: Sequence[str] = (),
        out_dir: str | None = None,
        data_dir: str | None = None,
        workdir: str | None = None,
        cache: bool = False,
        name: str = "save_predictions",
    ):
        self.where = where = f"Evaluator {name!r} (save_predictions)"
        predict_fn = common.pick(predict_fns, pred, where)
        self.out_dir = out_dir or workdir
        if not self.out_dir:
            raise common.EvaluatorConfigError(
                f"{where}: there is no workdir to write the predictions to (the run has none). "
                "Give the evaluator an out_dir, or run with a workdir."
            )
        if format not in FORMATS:
            raise common.EvaluatorConfigError(f"{where}: format={format!r}; expected one of {', '.join(FORMATS)}.")
        if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k <= 0):
            raise common.EvaluatorConfigError(
                f"{where}: top_k must be None (all logits) or a positive int, got {top_k!r}."
            )
        self.format = format
        self.name = name
        self.outputs = tuple(outputs)
        self.keys = tuple(keys)
        if self.keys and jax.process_count() > 1:
            raise common.EvaluatorConfigError(
                f"{where}: keys={self.keys} are kept on each host and cannot be gathered across the "
                f"{jax.process_count()} processes; run on one process or save only device outputs."
            )
        self.data = common.EvalData(
            data,
            pp_fn,
            batch_size,
            mesh,
            where=where,
            data_dir=data_dir,
            cache=cache,
            keys=("image", label_key, "_id"),
            host_keys=self.keys,
        )
        element = self.data.element_spec()
        missing = [k for k in ("image", *self.keys) if k not in element]
        if missing:
            raise common.EvaluatorConfigError(
                f"{where}: the pp gives {sorted(element)}, without {missing}; keep them in pp_fn."
            )
        self._first_index = _first_index(data, data_dir)
        self._local_batch = batch_size // jax.process_count()
        has_labels, has_id = label_key in element, "_id" in element

        def step(params: Any, batch: Mapping[str, jax.Array], index: jax.Array) -> dict[str, jax.Array]:
            out = predict_fn(params, batch["image"])
            logits = common.first_output(out)
            rows = {"index": index, "_mask": batch["_mask"]}
            if has_id:
                rows["id"] = batch["_id"]
            if top_k is None:
                rows["logits"] = logits
            else:
                rows["top_k_logits"], rows["top_k_classes"] = jax.lax.top_k(logits, min(top_k, logits.shape[-1]))
            if has_labels:
                rows["labels"] = batch[label_key]
            for key in self.outputs:
                rows[key] = common.named_output(out, key, where)
            return rows

        # Replicated outputs: every process holds every row, so process 0 can write them all.
        self._step = jax.jit(step, out_shardings=common.replicated(mesh))

    def path(self, step: int | None = None) -> str:
        """The file ``run(params, step=step)`` writes."""
        suffix = "" if step is None else f"_{int(step)}"
        return os.path.join(str(self.out_dir), f"predictions_{self.name}{suffix}.{self.format}")

    def run(self, params: Any, step: int | None = None) -> dict[str, float]:
        """Writes the predictions of ``params`` (process 0) and returns how many examples were written."""
        columns: dict[str, list[np.ndarray]] = {}
        for b, (batch, host) in enumerate(self.data.batches()):
            local = self._first_index + b * self._local_batch + np.arange(self._local_batch, dtype=np.int64)
            index = input_pipeline.to_global_arrays({"index": local}, self.data.sharding)["index"]
            rows = jax.device_get(self._step(params, batch, index))
            keep = np.asarray(rows.pop("_mask")).astype(bool)
            for key, value in rows.items():
                columns.setdefault(key, []).append(np.asarray(value)[keep])
            for key in self.keys:
                columns.setdefault(key, []).append(_fixed_width(np.asarray(host[key]))[keep])
        arrays = {key: np.concatenate(parts) for key, parts in columns.items()}
        count = len(arrays["index"])
        if jax.process_index() == 0:
            _write_atomically(self.path(step), arrays, self.format)
        return {"num_examples": float(count)}


def _first_index(data: Mapping[str, Any], data_dir: str | None) -> int:
    """The position in the split of this process's first example (the eval pipeline splits it evenly)."""
    index, count = jax.process_index(), jax.process_count()
    if count == 1:
        return 0
    builder = input_pipeline.get_builder(data["name"], data.get("data_dir", data_dir))
    parts = [input_pipeline.host_split(data["split"], i, count) for i in range(index)]
    return sum(input_pipeline.num_examples(builder, part) for part in parts)


def _fixed_width(values: np.ndarray) -> np.ndarray:
    """Byte strings as fixed-width unicode (so ``np.load`` needs no pickle); other arrays as they are."""
    if values.dtype.kind in "SO":
        return np.asarray([v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values.ravel()]).reshape(
            values.shape
        )
    return values


def _write_atomically(path: str, arrays: Mapping[str, np.ndarray], fmt: str) -> None:
    with atomic_write(path, "wb") as f:
        if fmt == "npz":
            np.savez(f, **arrays)  # type: ignore[arg-type]
        else:
            names = list(arrays)
            for i in range(len(arrays["index"])):
                row = {k: arrays[k][i].tolist() for k in names}
                f.write((json.dumps(row) + "\n").encode("utf-8"))
