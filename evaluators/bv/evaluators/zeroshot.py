"""Zero-shot classification with a two-tower (image, text) model, as in CLIP, LiT and SigLIP.

Every class becomes a set of texts by writing its name into each prompt template
("a photo of a {}."). The text tower embeds them all once per run; each text
embedding is scaled to unit length, a class's embeddings are averaged over the
templates, and the average is scaled to unit length again. An image is then
classified as the class whose embedding has the largest dot product with the
image embedding. One evaluator can score several data sets, each with its own
class names, templates and image pp.

This follows big_vision's ``proj/image_text/discriminative_classifier.py``, but is
written against a task's predict functions by name (``pred_image``,
``pred_text``), so any two-tower task plugs in.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

import bv.pp
from bv.core import registry, sharding
from bv.core.data import input_pipeline
from bv.evaluators import class_names as class_names_lib
from bv.evaluators import common

# A few CLIP-style templates; data sets with a domain of their own deserve their own.
DEFAULT_PROMPT_TEMPLATES = (
    "a photo of a {}.",
    "a photo of the {}.",
    "a blurry photo of a {}.",
    "a good photo of a {}.",
    "a photo of a small {}.",
    "a photo of a large {}.",
)

# What one entry of ``datasets`` may set; everything but ``class_names`` defaults to the evaluator's.
DATASET_KEYS = ("name", "split", "data_dir", "pp_img", "class_names", "prompt_templates")

TextFn = Callable[[tf.Tensor], tf.Tensor]


# ---------------------------------------------------------------------------
# Texts: from strings to tokens (tf.data) and from tokens to embeddings (devices).
# ---------------------------------------------------------------------------


def text_tokens_fn(pp_txt: str, tokens_key: str, where: str) -> tuple[TextFn, tf.TensorSpec]:
    """A TF function from one string to its tokens by ``pp_txt``, and the tokens' fixed spec.

    ``pp_txt`` reads the string from ``data["texts"]`` (as in big_vision) and must leave
    numeric tokens of a fixed shape under ``tokens_key``.
    """
    pp = bv.pp.get_preprocess_fn(pp_txt)

    @tf.autograph.experimental.do_not_convert  # plain Python: config errors surface as they are
    def tokens(text: tf.Tensor) -> tf.Tensor:
        out = pp({"texts": text})
        if tokens_key not in out:
            raise common.EvaluatorConfigError(
                f"{where}: pp_txt={pp_txt!r} leaves the keys {sorted(out)}, not the tokens key {tokens_key!r}. "
                "pp_txt reads the text from 'texts'; set tokens_key to where it writes the tokens "
                "(e.g. tokenize(..., inkey='texts', outkey='labels') with tokens_key='labels')."
            )
        return out[tokens_key]

    spec = tf.data.Dataset.from_tensors(tf.constant("")).map(tokens).element_spec
    if not isinstance(spec, tf.TensorSpec) or not spec.shape.is_fully_defined() or spec.dtype == tf.string:
        raise common.EvaluatorConfigError(
            f"{where}: pp_txt must turn a text into numeric tokens of a fixed shape (e.g. tokenize(max_len=16, ...)); "
            f"data[{tokens_key!r}] is {spec}."
        )
    return tokens, spec


def tokenize_texts(texts: Sequence[str], pp_txt: str, tokens_key: str, where: str) -> np.ndarray:
    """The tokens of each text by ``pp_txt`` (rows in the order of ``texts``)."""
    tokens, _ = text_tokens_fn(pp_txt, tokens_key, where)
    ds = tf.data.Dataset.from_tensor_slices(tf.constant(list(texts), tf.string)).map(tokens)
    return np.concatenate(list(ds.batch(1024).as_numpy_iterator()), axis=0)


def put_rows(rows: np.ndarray, sharding_: jax.sharding.Sharding) -> jax.Array:
    """A global array of ``rows``, which every process holds whole (e.g. prompts), laid out by ``sharding_``."""
    return jax.make_array_from_callback(rows.shape, sharding_, lambda index: rows[index])


class RowEmbedder:
    """Embeds host-held rows (the same on every process) with ``fn`` in batches over the mesh's batch axes.

    The result is a numpy array on every process, rows in order.
    """

    def __init__(self, fn: Callable[[Any, jax.Array], Any], mesh: jax.sharding.Mesh, batch_size: int, where: str):
        self.mesh = mesh
        self.batch_size = batch_size
        self.where = where

        def embed(params: Any, rows: jax.Array) -> jax.Array:
            z = common.first_output(fn(params, rows))
            if z.ndim != 2:
                raise common.EvaluatorConfigError(
                    f"{where}: the text embeddings must be [texts, dim]; the predict function gave shape {z.shape}."
                )
            return z

        self._embed = jax.jit(embed, out_shardings=common.replicated(mesh))

    def __call__(self, params: Any, rows: np.ndarray) -> np.ndarray:
        n = len(rows)
        shards = sharding.batch_shards(self.mesh)
        chunk = min(self.batch_size, math.ceil(n / shards) * shards)  # one shape: one compilation
        padded = math.ceil(n / chunk) * chunk
        rows = np.concatenate([rows, np.zeros((padded - n, *rows.shape[1:]), rows.dtype)], axis=0)
        layout = sharding.batch_sharding(self.mesh)
        out = [np.asarray(self._embed(params, put_rows(rows[i : i + chunk], layout))) for i in range(0, padded, chunk)]
        return np.concatenate(out, axis=0)[:n]


def unit(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """``x`` scaled to unit length along ``axis`` (zero vectors stay zero)."""
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), 1e-12)


def class_embeddings(ztxt: np.ndarray, num_classes: int, num_templates: int) -> np.ndarray:
    """``[classes, dim]`` from ``[classes * templates, dim]`` (class-major): unit, mean over templates, unit."""
    per_template = unit(ztxt).reshape(num_classes, num_templates, -1)
    return unit(per_template.mean(axis=1))


# ---------------------------------------------------------------------------
# Class names and prompts.
# ---------------------------------------------------------------------------


def resolve_class_names(
    dataset: str,
    builder: tfds.core.DatasetBuilder,
    given: Sequence[str] | None,
    label_key: str,
    where: str,
) -> list[str]:
    """``given``, else the embedded names of ``dataset``, else the TFDS label names; checked against the label count."""
    features = builder.info.features
    feature = features[label_key] if label_key in features else None
    num_classes = getattr(feature, "num_classes", None)
    if given is not None:
        if isinstance(given, str) or not all(isinstance(n, str) for n in given):
            raise common.EvaluatorConfigError(f"{where}: class_names must be a list of strings, got {given!r}.")
        names = list(given)
        source = "class_names"
    elif class_names_lib.known(dataset) is not None:
        names = list(class_names_lib.known(dataset) or ())
        source = f"the embedded class names of {dataset!r} (bv.evaluators.class_names)"
    elif isinstance(feature, tfds.features.ClassLabel):
        names = [class_names_lib.canonical(n) for n in feature.names]
        source = f"the TFDS label names of {dataset!r}"
    else:
        raise common.EvaluatorConfigError(
            f"{where}: data set {dataset!r} has no class label feature {label_key!r} to take class names from; "
            "give them as class_names=[...] (one per label id)."
        )
    if not names:
        raise common.EvaluatorConfigError(f"{where}: there are no class names for {dataset!r}.")
    if num_classes is not None and len(names) != num_classes:
        raise common.EvaluatorConfigError(
            f"{where}: {len(names)} class names ({source}) but the label {label_key!r} of {dataset!r} has "
            f"{num_classes} classes. Give exactly one name per label id, in label order."
        )
    return names


def check_templates(templates: Any, where: str) -> list[str]:
    """Prompt templates as a list; each must hold exactly one ``{}`` where the class name goes."""
    templates = [templates] if isinstance(templates, str) else list(templates or ())
    if not templates:
        raise common.EvaluatorConfigError(f"{where}: prompt_templates is empty; give at least one, e.g. ['{{}}'].")
    for t in templates:
        if not isinstance(t, str) or t.count("{}") != 1:
            raise common.EvaluatorConfigError(
                f"{where}: each prompt template needs exactly one '{{}}' for the class name, e.g. "
                f"'a photo of a {{}}.'; got {t!r}."
            )
    return templates


def prompts(class_names: Sequence[str], templates: Sequence[str]) -> list[str]:
    """All texts, class-major: class 0 in every template, then class 1, ..."""
    return [t.replace("{}", name) for name in class_names for t in templates]


# ---------------------------------------------------------------------------
# The evaluator.
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class _Dataset:
    data: common.EvalData
    class_names: list[str]
    num_templates: int
    tokens: np.ndarray  # [classes * templates, ...], class-major
    top_k: tuple[int, ...]


@registry.evaluators.register("zeroshot")
class ZeroShotEvaluator:
    """Reports ``<dataset>_prec@1`` (and ``_prec@5``, ... per ``top_k``) of zero-shot classification.

    Config:

    - ``datasets``: ``{metric prefix: dict(name=..., split=..., pp_img=..., class_names=[...],
      prompt_templates=[...], data_dir=...)}``; ``name`` defaults to the prefix, the others
      to the evaluator's settings below. ``class_names`` defaults to the embedded table
      (:mod:`bv.evaluators.class_names`), else the TFDS label names.
    - ``pp_img``: pp of the images (starting with ``decode``); it must keep ``label_key``
      (integer class ids, or ``[k]`` ids padded with -1 for several right answers).
    - ``pp_txt``: pp from ``texts`` (one string) to tokens under ``tokens_key``, e.g.
      ``tokenize(max_len=16, eos='sticky', model='c4_en', inkey='texts', outkey='labels')``.
    - ``pred_image`` (``fn(params, images) -> zimg | (zimg, extras)``) and ``pred_text``
      (``fn(params, tokens) -> ztxt | (ztxt, extras)``): the task's predict functions.
    - ``prompt_templates``: strings with one ``{}``; ``top_k``: which ``prec@k`` to report
      (a k not smaller than the number of classes is left out).
    """

    def __init__(
        self,
        predict_fns: Mapping[str, Callable[..., Any]],
        *,
        datasets: Mapping[str, Mapping[str, Any]],
        pp_txt: str,
        batch_size: int,
        mesh: jax.sharding.Mesh,
        pp_img: str | None = None,
        split: str = "test",
        prompt_templates: Sequence[str] = DEFAULT_PROMPT_TEMPLATES,
        pred_image: str = "embed_image",
        pred_text: str = "embed_text",
        tokens_key: str = "labels",
        label_key: str = "label",
        top_k: Sequence[int] = (1, 5),
        data_dir: str | None = None,
        workdir: str | None = None,
        cache: bool = False,
        name: str = "zeroshot",
    ):
        del workdir  # Nothing to write.
        where = f"Evaluator {name!r} (zeroshot)"
        self.where = where
        embed_image = common.pick(predict_fns, pred_image, where, key="pred_image")
        embed_text = common.pick(predict_fns, pred_text, where, key="pred_text")
        if not isinstance(datasets, Mapping) or not datasets:
            raise common.EvaluatorConfigError(
                f"{where}: datasets must be a non-empty dict {{prefix: dict(name=..., split=...)}}, got {datasets!r}."
            )
        ks = sorted({int(k) for k in top_k} | {1})
        self.datasets: dict[str, _Dataset] = {}
        for prefix, entry in datasets.items():
            entry = dict(entry or {})
            unknown = sorted(set(entry) - set(DATASET_KEYS))
            if unknown:
                raise common.EvaluatorConfigError(
                    f"{where}: datasets[{prefix!r}] has unknown keys {unknown}; allowed: {', '.join(DATASET_KEYS)}."
                )
            data = {
                "name": entry.get("name", prefix),
                "split": entry.get("split", split),
                "data_dir": entry.get("data_dir", data_dir),
            }
            here = f"{where}, data set {prefix!r}"
            image_pp = entry.get("pp_img", pp_img)
            if not image_pp:
                raise common.EvaluatorConfigError(
                    f"{here}: no pp_img; set the evaluator's pp_img or the data set's, e.g. "
                    "'decode|resize(224)|value_range(-1, 1)'."
                )
            builder = input_pipeline.get_builder(data["name"], data["data_dir"])
            names = resolve_class_names(data["name"], builder, entry.get("class_names"), label_key, here)
            templates = check_templates(entry.get("prompt_templates", prompt_templates), here)
            tokens = tokenize_texts(prompts(names, templates), pp_txt, tokens_key, here)
            eval_data = common.EvalData(
                data, image_pp, batch_size, mesh, where=here, cache=cache, keys=("image", label_key)
            )
            self.datasets[prefix] = _Dataset(
                eval_data, names, len(templates), tokens, tuple(k for k in ks if k == 1 or k < len(names))
            )
        self.mesh = mesh
        self._embed_texts = RowEmbedder(embed_text, mesh, batch_size, where)
        self._replicated = common.replicated(mesh)

        def eval_step(
            params: Any, batch: Mapping[str, jax.Array], classes: jax.Array, ks: tuple[int, ...]
        ) -> dict[str, jax.Array]:
            zimg = common.first_output(embed_image(params, batch["image"]))
            if zimg.ndim != 2 or zimg.shape[-1] != classes.shape[-1]:
                raise common.EvaluatorConfigError(
                    f"{where}: image embeddings must be [batch, {classes.shape[-1]}] like the text embeddings; "
                    f"{pred_image!r} gave shape {zimg.shape}."
                )
            labels = batch[label_key]
            if not jnp.issubdtype(labels.dtype, jnp.integer) or labels.ndim not in (1, 2):
                raise common.EvaluatorConfigError(
                    f"{where}: batch[{label_key!r}] must hold integer class ids ([batch], or [batch, k] padded "
                    f"with -1), got {labels.dtype}{list(labels.shape)}; keep the raw label in pp_img (no onehot)."
                )
            labels = labels[:, None] if labels.ndim == 1 else labels
            _, top = jax.lax.top_k(zimg.astype(jnp.float32) @ classes.T, max(ks))
            mask = batch["_mask"].astype(jnp.float32)
            out = {"count": jnp.sum(mask)}
            for k in ks:
                hit = jnp.any(top[:, :k, None] == labels[:, None, :], axis=(1, 2))
                out[f"prec@{k}"] = jnp.sum(hit * mask)
            return out

        self._eval_step = jax.jit(eval_step, static_argnums=3, out_shardings=self._replicated)

    def run(self, params: Any) -> dict[str, float]:
        """``<dataset>_prec@k`` of ``params`` on each data set."""
        results: dict[str, float] = {}
        for prefix, ds in self.datasets.items():
            ztxt = self._embed_texts(params, ds.tokens)
            classes = put_rows(class_embeddings(ztxt, len(ds.class_names), ds.num_templates), self._replicated)
            totals = {key: 0.0 for key in ("count", *(f"prec@{k}" for k in ds.top_k))}
            for batch, _ in ds.data.batches():
                sums = jax.device_get(self._eval_step(params, batch, classes, ds.top_k))
                for key in totals:
                    totals[key] += float(np.asarray(sums[key]))
            if not totals["count"]:
                raise ValueError(f"{self.where}: data set {prefix!r} gave no examples.")
            for k in ds.top_k:
                results[f"{prefix}_prec@{k}"] = totals[f"prec@{k}"] / totals["count"]
        return results
