"""Evaluators of UViM's tasks (registered on import of ``bv.uvim``).

Each takes the usual ``data``, ``pp_fn`` and ``pred`` (default ``"predict"``: the task's
predictions in image layout, sampled by stage II or reconstructed by stage I) and
compares them with the batch's ``labels`` on every real example of the split.

- ``uvim_segmentation``: ``mean_iou`` over ``num_classes`` classes (the classes that
  never occur in labels or predictions are left out of the mean), ``pixel_accuracy``.
- ``uvim_panoptic``: panoptic quality ``pq`` with ``sq`` and ``rq`` (Kirillov et al.),
  per class then averaged over classes that occur, matching segments of the same class
  with IoU > 0.5. A documented subset of COCO's evaluation: void (class 0) pixels are
  ignored in the IoU and unmatched predictions that are mostly void are not counted as
  false positives, but there is no crowd handling (TFDS's COCO panoptic has no crowd
  regions separately) and no things/stuff split.
- ``uvim_depth``: ``rmse``, ``abs_rel``, ``log10``, ``delta1..3`` over pixels whose true
  depth lies in ``(min_depth, max_depth)``, RMSE per image then averaged (as big_vision).
- ``uvim_psnr``: ``psnr`` (dB, dynamic range 2 for colours in ``[-1, 1]``) per image,
  averaged, and the same for the grey input image as a baseline (``psnr_grey_input``).
- ``uvim_perplexity``: stage II's ``loss`` (mean NLL per code, every sequence has
  ``code_len`` codes) and ``perplexity`` from the predict function ``code_nll``.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from bv.core import registry
from bv.evaluators import common
from bv.evaluators.perplexity import MeanEvaluator

Params = Any


class _Base:
    """Builds the eval data and a jitted ``step(params, batch) -> sums`` (replicated); ``run`` adds them up."""

    kind = "?"

    def __init__(
        self,
        predict_fns: Mapping[str, Callable[..., Any]],
        *,
        data: Mapping[str, Any],
        pp_fn: str,
        batch_size: int,
        mesh: jax.sharding.Mesh,
        pred: str = "predict",
        data_dir: str | None = None,
        workdir: str | None = None,
        cache: bool = False,
        name: str = "uvim",
        **options: Any,
    ):
        del workdir
        self.where = f"Evaluator {name!r} ({self.kind})"
        self.predict_fn = common.pick(predict_fns, pred, self.where)
        self.configure(**options)
        self.data = common.EvalData(data, pp_fn, batch_size, mesh, where=self.where, data_dir=data_dir, cache=cache)
        self._step = jax.jit(self.step, out_shardings=common.replicated(mesh))

    def configure(self) -> None:
        pass

    def labels(self, batch: Mapping[str, jax.Array]) -> jax.Array:
        if "labels" not in batch:
            raise common.EvaluatorConfigError(f"{self.where}: the batch has no 'labels' (it has {sorted(batch)}).")
        return batch["labels"]

    def prediction(self, params: Params, batch: Mapping[str, jax.Array], key: str) -> jax.Array:
        out = common.first_output(self.predict_fn(params, batch))
        if not isinstance(out, Mapping) or key not in out:
            have = sorted(out) if isinstance(out, Mapping) else type(out).__name__
            raise common.EvaluatorConfigError(f"{self.where}: the predict function must return {key!r}; got {have}.")
        return out[key]

    def step(self, params: Params, batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        raise NotImplementedError

    def sums(self, params: Params) -> dict[str, np.ndarray]:
        totals: dict[str, np.ndarray] = {}
        for batch, _ in self.data.batches():
            for k, v in jax.device_get(self._step(params, batch)).items():
                totals[k] = totals.get(k, 0) + np.asarray(v, np.float64)
        return totals


@registry.evaluators.register("uvim_segmentation")
class SegmentationEvaluator(_Base):
    kind = "uvim_segmentation"

    def configure(self, num_classes: int = 2) -> None:  # type: ignore[override]
        self.num_classes = int(num_classes)

    def step(self, params: Params, batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        pred = self.prediction(params, batch, "semantics").astype(jnp.int32)
        true = self.labels(batch)[..., 0].astype(jnp.int32)
        weight = jnp.broadcast_to(batch["_mask"][:, None, None], true.shape).astype(jnp.float32)
        k = self.num_classes
        index = jnp.clip(true, 0, k - 1) * k + jnp.clip(pred, 0, k - 1)
        confusion = jnp.zeros((k * k,), jnp.float32).at[index.reshape(-1)].add(weight.reshape(-1))
        return {"confusion": confusion.reshape(k, k)}

    def run(self, params: Params) -> dict[str, float]:
        c = self.sums(params)["confusion"]
        inter = np.diag(c)
        union = c.sum(0) + c.sum(1) - inter
        present = union > 0
        iou = np.where(present, inter / np.maximum(union, 1), 0.0)
        out = {"mean_iou": float(iou[present].mean()), "pixel_accuracy": float(inter.sum() / max(c.sum(), 1))}
        out.update({f"iou_{i}": float(iou[i]) for i in range(self.num_classes) if present[i]})
        return out


@registry.evaluators.register("uvim_depth")
class DepthEvaluator(_Base):
    kind = "uvim_depth"

    def configure(self, min_depth: float = 1e-3, max_depth: float = 10.0) -> None:  # type: ignore[override]
        self.min_depth, self.max_depth = float(min_depth), float(max_depth)

    def step(self, params: Params, batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        pred = self.prediction(params, batch, "depth").astype(jnp.float32)
        gt = self.labels(batch)[..., 0].astype(jnp.float32)
        if pred.shape != gt.shape:
            pred = jax.image.resize(pred, gt.shape, "nearest")
        valid = (gt > self.min_depth) & (gt < self.max_depth)
        n = jnp.maximum(jnp.sum(valid, axis=(1, 2)), 1)
        safe_gt, safe_pred = jnp.where(valid, gt, 1.0), jnp.maximum(jnp.where(valid, pred, 1.0), 1e-6)

        def mean(x: jax.Array) -> jax.Array:
            return jnp.sum(jnp.where(valid, x, 0.0), axis=(1, 2)) / n

        ratio = jnp.maximum(safe_gt / safe_pred, safe_pred / safe_gt)
        per_image = {
            "rmse": jnp.sqrt(mean(jnp.square(safe_gt - safe_pred))),
            "abs_rel": mean(jnp.abs(safe_gt - safe_pred) / safe_gt),
            "log10": mean(jnp.abs(jnp.log10(safe_gt) - jnp.log10(safe_pred))),
            **{f"delta{i}": mean((ratio < 1.25**i).astype(jnp.float32)) for i in (1, 2, 3)},
        }
        real = batch["_mask"] & (jnp.sum(valid, axis=(1, 2)) > 0)
        sums = {k: jnp.sum(jnp.where(real, v, 0.0)) for k, v in per_image.items()}
        return {**sums, "_count": jnp.sum(real.astype(jnp.float32))}

    def run(self, params: Params) -> dict[str, float]:
        totals = self.sums(params)
        count = float(totals.pop("_count"))
        if not count:
            raise ValueError(f"{self.where}: no example had a valid depth pixel.")
        return {k: float(v) / count for k, v in totals.items()}


def psnr(a: jax.Array, b: jax.Array, dynamic_range: float = 2.0) -> jax.Array:
    """Per-image PSNR in dB of ``[B, H, W, C]`` images."""
    mse = jnp.mean(jnp.square(a.astype(jnp.float32) - b.astype(jnp.float32)), axis=(1, 2, 3))
    return 20.0 * jnp.log10(dynamic_range) - 10.0 * jnp.log10(jnp.maximum(mse, 1e-10))


@registry.evaluators.register("uvim_psnr")
class PsnrEvaluator(_Base):
    kind = "uvim_psnr"

    def step(self, params: Params, batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        pred = self.prediction(params, batch, "color")
        true = self.labels(batch)
        mask = batch["_mask"]
        out = {"psnr": jnp.sum(jnp.where(mask, psnr(pred, true), 0.0)), "_count": jnp.sum(mask.astype(jnp.float32))}
        if "image" in batch and batch["image"].shape == true.shape:
            out["psnr_grey_input"] = jnp.sum(jnp.where(mask, psnr(batch["image"], true), 0.0))
        return out

    def run(self, params: Params) -> dict[str, float]:
        totals = self.sums(params)
        count = float(totals.pop("_count"))
        return {k: float(v) / count for k, v in totals.items()}


def panoptic_counts(pred: np.ndarray, true: np.ndarray, num_classes: int) -> np.ndarray:
    """Per-class ``[tp, fp, fn, iou_sum]`` ``[num_classes + 1, 4]`` of one image's ``[H, W, 2]`` panoptic maps.

    A segment is a (class, instance id) pair; class 0 is void. Prediction and truth
    segments of the same class match when their IoU (void pixels of the prediction left
    out) exceeds 0.5, which makes matches unique.
    """
    out = np.zeros((num_classes + 1, 4))
    t_key = true[..., 0].astype(np.int64) * 1_000_003 + true[..., 1]
    p_key = pred[..., 0].astype(np.int64) * 1_000_003 + pred[..., 1]
    void = true[..., 0] == 0
    t_segs = {k: (int(k // 1_000_003), t_key == k) for k in np.unique(t_key[~void])}
    p_segs = {k: (int(k // 1_000_003), p_key == k) for k in np.unique(p_key) if k // 1_000_003 > 0}
    matched_p: set[int] = set()
    for tk, (cls, tm) in t_segs.items():
        hit = False
        for pk, (pcls, pm) in p_segs.items():
            if pcls != cls or pk in matched_p:
                continue
            inter = np.sum(tm & pm)
            union = np.sum(tm) + np.sum(pm & ~void) - inter
            iou = inter / union if union else 0.0
            if iou > 0.5:
                out[cls, 0] += 1
                out[cls, 3] += iou
                matched_p.add(pk)
                hit = True
                break
        if not hit:
            out[cls, 2] += 1
    for pk, (pcls, pm) in p_segs.items():
        if pk not in matched_p and np.sum(pm & void) <= 0.5 * np.sum(pm):
            out[min(pcls, num_classes), 1] += 1
    return out


@registry.evaluators.register("uvim_panoptic")
class PanopticEvaluator(_Base):
    kind = "uvim_panoptic"

    def configure(self, num_classes: int = 133) -> None:  # type: ignore[override]
        self.num_classes = int(num_classes)

    def step(self, params: Params, batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        return {"pred": self.prediction(params, batch, "panoptic"), "true": self.labels(batch), "mask": batch["_mask"]}

    def run(self, params: Params) -> dict[str, float]:
        counts = np.zeros((self.num_classes + 1, 4))
        for batch, _ in self.data.batches():
            out = jax.device_get(self._step(params, batch))
            for p, t, m in zip(out["pred"], out["true"], out["mask"]):
                if m:
                    counts += panoptic_counts(np.asarray(p), np.asarray(t), self.num_classes)
        tp, fp, fn, iou = counts[1:].T
        present = (tp + fp + fn) > 0
        if not present.any():
            return {"pq": 0.0, "sq": 0.0, "rq": 0.0}
        sq = np.where(tp > 0, iou / np.maximum(tp, 1), 0.0)
        rq = tp / np.maximum(tp + 0.5 * fp + 0.5 * fn, 1e-9)
        return {
            "pq": float((sq * rq)[present].mean()),
            "sq": float(sq[present].mean()),
            "rq": float(rq[present].mean()),
        }


@registry.evaluators.register("uvim_perplexity")
class CodePerplexityEvaluator:
    """Stage II's code perplexity: ``exp`` of the mean NLL per code (``code_nll``), and ``code_accuracy``."""

    def __init__(self, predict_fns: Mapping[str, Callable[..., Any]], *, pred: str = "code_nll", **kwargs: Any):
        self.mean = MeanEvaluator(predict_fns, pred=pred, **kwargs)

    def run(self, params: Params) -> dict[str, float]:
        values = self.mean.run(params)
        loss = values.pop("nll")
        return {"loss": loss, "perplexity": float(np.exp(loss)), **values}
