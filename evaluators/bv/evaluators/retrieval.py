"""Image-text retrieval: Recall@k from images to their captions and from captions to their images.

Each image of a split comes with one caption or several (COCO and Flickr30k have about
five); all captions of an image are its positives. Image->text Recall@k is the share of
images (with at least one caption) that have a positive among the k captions most
similar to them; text->image Recall@k the share of captions whose own image is among
the k most similar images. A tie with a wrong item counts against the right one, so
the numbers do not depend on the order of the data.

As in big_vision's ``proj/image_text/retrieval.py``, but written against a task's
predict functions by name (``pred_image``, ``pred_text``). The captions of an example
travel with its image through the eval pipeline (padded to the largest count in the
split and masked), so every image meets its own captions in the same row whatever
the number of devices or hosts.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

import bv.pp
from bv.core import registry
from bv.core.data import input_pipeline
from bv.evaluators import common
from bv.evaluators.zeroshot import text_tokens_fn, unit

TEXTS = "_txt"  # [max captions, ...] tokens of an example's captions
TEXTS_MASK = "_txt_mask"  # [max captions]: which of them are real captions


def _lookup(example: Mapping[str, Any], path: tuple[str, ...], where: str) -> tf.Tensor:
    node: Any = example
    for i, key in enumerate(path):
        if not isinstance(node, Mapping) or key not in node:
            have = sorted(node) if isinstance(node, Mapping) else type(node).__name__
            raise common.EvaluatorConfigError(
                f"{where}: the examples have no text feature {'/'.join(path[: i + 1])!r} (there: {have}). "
                "Set text_key to the captions, e.g. 'captions/text' for coco_captions."
            )
        node = node[key]
    if not isinstance(node, tf.Tensor) or node.dtype != tf.string or node.shape.rank not in (0, 1):
        raise common.EvaluatorConfigError(
            f"{where}: text_key {'/'.join(path)!r} must be a string or a list of strings per example, got {node!r}."
        )
    return node


def max_captions(
    builder: tfds.core.DatasetBuilder,
    split: str,
    path: tuple[str, ...],
    where: str,
    example_pp: Callable[[dict[str, Any]], dict[str, Any]] = dict,
) -> int:
    """The largest number of captions an example of ``split`` has (reads the split once, images undecoded)."""
    skip = {k: tfds.decode.SkipDecoding() for k in ("image",) if k in builder.info.features}
    ds = builder.as_dataset(split=split, shuffle_files=False, decoders=skip or None)
    count = tf.autograph.experimental.do_not_convert(lambda ex: tf.size(_lookup(example_pp(dict(ex)), path, where)))
    counts = ds.map(count, num_parallel_calls=tf.data.AUTOTUNE)
    most = int(counts.reduce(tf.constant(0), tf.maximum).numpy())
    if most == 0:
        raise common.EvaluatorConfigError(f"{where}: no example of {split!r} has a caption under {'/'.join(path)!r}.")
    return most


def ranks(queries: np.ndarray, items: np.ndarray, positive: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """For each query with a positive item: how many negative items score at least as high as its best positive.

    ``positive(ids)`` gives the ``[len(ids), items]`` mask of the positives of the queries ``ids``.
    A rank below k is a hit at Recall@k; a tie with a negative counts against the positive.
    """
    out = []
    chunk = max(1, 2**24 // max(len(items), 1))
    for start in range(0, len(queries), chunk):
        ids = np.arange(start, min(start + chunk, len(queries)))
        scores = queries[ids] @ items.T
        pos = positive(ids)
        best = np.where(pos, scores, -np.inf).max(axis=1)
        rank = np.sum(~pos & (scores >= best[:, None]), axis=1)
        out.append(rank[pos.any(axis=1)])
    return np.concatenate(out)


@registry.evaluators.register("retrieval")
class RetrievalEvaluator:
    """Reports ``img2txt_R@k`` and ``txt2img_R@k`` for k in ``ks`` (default 1, 5, 10).

    Config:

    - ``data``: ``dict(name=..., split=...)`` of an image-text data set.
    - ``text_key``: the captions of an example, a string or list of strings; a ``/`` path
      reaches into nested features (``"captions/text"`` for coco_captions).
    - ``pp_img``: pp of the raw example to ``image`` (starting with ``decode``).
    - ``pp_txt``: pp from ``texts`` (one caption) to tokens under ``tokens_key``.
    - ``pred_image`` (``fn(params, images) -> zimg | (zimg, extras)``) and ``pred_text``
      (``fn(params, tokens) -> ztxt | (ztxt, extras)``): the task's predict functions.
    - ``normalize``: compare unit-length embeddings (cosine similarity), as contrastive
      models are trained; False uses the raw dot product.
    - ``pp_example``: pp run on the raw example first, e.g. to write captions from a class
      label (``label_caption(...)``) for a classification data set.
    - ``label_key``: match by class instead of by example: every caption of an image of
      class c is a positive of every image of class c (and the reverse), so Recall@k is the
      share of queries with an item of their own class among the k best.
    """

    def __init__(
        self,
        predict_fns: Mapping[str, Callable[..., Any]],
        *,
        data: Mapping[str, Any],
        pp_img: str,
        pp_txt: str,
        batch_size: int,
        mesh: jax.sharding.Mesh,
        text_key: str | Sequence[str] = "texts",
        pred_image: str = "embed_image",
        pred_text: str = "embed_text",
        tokens_key: str = "labels",
        ks: Sequence[int] = (1, 5, 10),
        normalize: bool = True,
        data_dir: str | None = None,
        workdir: str | None = None,
        cache: bool = False,
        pp_example: str | None = None,
        label_key: str | None = None,
        name: str = "retrieval",
    ):
        del workdir  # Nothing to write.
        where = f"Evaluator {name!r} (retrieval)"
        self.where = where
        embed_image = common.pick(predict_fns, pred_image, where, key="pred_image")
        embed_text = common.pick(predict_fns, pred_text, where, key="pred_text")
        common.check_data(data, where, example="dict(name='coco_captions', split='val')")
        self.ks = tuple(sorted({int(k) for k in ks}))
        if not self.ks or self.ks[0] < 1:
            raise common.EvaluatorConfigError(f"{where}: ks must be positive integers, got {ks!r}.")
        self.normalize = normalize
        path = tuple(text_key.split("/")) if isinstance(text_key, str) else tuple(text_key)
        builder = input_pipeline.get_builder(data["name"], data.get("data_dir", data_dir))
        example_pp = bv.pp.get_preprocess_fn(pp_example) if pp_example else dict
        most = max_captions(builder, data["split"], path, where, example_pp)
        image_pp = bv.pp.get_preprocess_fn(pp_img)
        tokens_fn, spec = text_tokens_fn(pp_txt, tokens_key, where)
        self.label_key = label_key
        keys = ("image", TEXTS, TEXTS_MASK) + ((label_key,) if label_key else ())

        @tf.autograph.experimental.do_not_convert  # plain Python: config errors surface as they are
        def preprocess(example: dict[str, Any]) -> dict[str, tf.Tensor]:
            example = example_pp(dict(example))
            texts = tf.reshape(_lookup(example, path, where), [-1])
            count = tf.shape(texts)[0]
            texts = tf.concat([texts, tf.fill([most - count], "")], axis=0)
            tokens = tf.map_fn(tokens_fn, texts, fn_output_signature=spec)
            image = image_pp(dict(example))
            if "image" not in image:
                raise common.EvaluatorConfigError(
                    f"{where}: pp_img={pp_img!r} leaves no 'image' (keys: {sorted(image)})."
                )
            out = {
                "image": image["image"],
                TEXTS: tf.ensure_shape(tokens, [most, *spec.shape]),
                TEXTS_MASK: tf.range(most) < count,
            }
            if label_key:
                if label_key not in example or example[label_key].shape.rank != 0:
                    raise common.EvaluatorConfigError(f"{where}: label_key={label_key!r} must name a scalar label.")
                out[label_key] = tf.cast(example[label_key], tf.int32)
            return out

        self.data = common.EvalData(
            data,
            preprocess,
            batch_size,
            mesh,
            where=where,
            data_dir=data_dir,
            cache=cache,
            keys=keys,
        )

        def embed(params: Any, batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
            zimg = common.first_output(embed_image(params, batch["image"]))
            tokens = batch[TEXTS]
            rows, per_row = tokens.shape[:2]
            ztxt = common.first_output(embed_text(params, tokens.reshape(rows * per_row, *tokens.shape[2:])))
            if zimg.ndim != 2 or ztxt.ndim != 2 or zimg.shape[-1] != ztxt.shape[-1]:
                raise common.EvaluatorConfigError(
                    f"{where}: image and text embeddings must be [batch, dim] with one dim; got {zimg.shape} from "
                    f"{pred_image!r} and {ztxt.shape} from {pred_text!r}."
                )
            return {
                "zimg": zimg,
                "ztxt": ztxt.reshape(rows, per_row, -1),
                "txt_mask": batch[TEXTS_MASK] & batch["_mask"][:, None],
                "mask": batch["_mask"],
                "label": batch[label_key] if label_key else batch["_mask"].astype(jnp.int32),
            }

        self._embed = jax.jit(embed, out_shardings=common.replicated(mesh))

    def embeddings(self, params: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Image embeddings ``[images, dim]``, caption embeddings ``[captions, dim]``, each caption's image,
        and each image's label (its index without ``label_key``)."""
        parts: dict[str, list[np.ndarray]] = {"zimg": [], "ztxt": [], "txt_mask": [], "mask": [], "label": []}
        for batch, _ in self.data.batches():
            out = jax.device_get(self._embed(params, batch))
            for key in parts:
                parts[key].append(np.asarray(out[key]))
        zimg, ztxt, txt_mask, mask, label = (np.concatenate(parts[k], axis=0) for k in parts)
        image_of_row = np.cumsum(mask) - 1  # real images are numbered in row order
        owner = np.broadcast_to(image_of_row[:, None], txt_mask.shape)[txt_mask]
        zimg, ztxt = zimg[mask].astype(np.float32), ztxt[txt_mask].astype(np.float32)
        label = label[mask] if self.label_key else np.arange(len(zimg))
        if self.normalize:
            zimg, ztxt = unit(zimg), unit(ztxt)
        return zimg, ztxt, owner, label

    def run(self, params: Any) -> dict[str, float]:
        """Recall@k in both directions over the whole split."""
        zimg, ztxt, owner, label = self.embeddings(params)
        if not len(zimg) or not len(ztxt):
            raise ValueError(f"{self.where}: the evaluation saw {len(zimg)} images and {len(ztxt)} captions.")
        txt_label = label[owner]  # without label_key, an image's "label" is its index: match by example
        i2t = ranks(zimg, ztxt, lambda ids: txt_label[None, :] == label[ids][:, None])
        t2i = ranks(ztxt, zimg, lambda ids: label[None, :] == txt_label[ids][:, None])
        results = {f"img2txt_R@{k}": float(np.mean(i2t < k)) for k in self.ks}
        results.update({f"txt2img_R@{k}": float(np.mean(t2i < k)) for k in self.ks})
        return results
