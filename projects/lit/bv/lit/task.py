"""The ``image_text`` task: two towers trained on image-text pairs (LiT, CLIP-style, SigLIP).

What big_vision's contrastive and SigLIP trainers do, as a task of the one bv
trainer. A batch holds ``image`` and the text's token ids under
``config.text_key`` (default ``labels``, big_vision's key for tokenized text in
its image-text configs). Config:

- ``model_name`` (default ``two_towers``) and ``model``: the ``TwoTowers`` fields
  (``image_model``, ``image``, ``text_model``, ``text``, ``out_dim``,
  ``temperature_init``, ``bias_init``);
- ``loss``: ``softmax`` (CLIP/LiT, default), ``sigmoid`` (SigLIP, needs
  ``model.bias_init``) or ``sigmoid_chunked`` (SigLIP over the ``data`` axis
  without gathering the batch), from ``bv.lit.losses``;
- ``text_key``.

The loss sees the whole global batch (the trainer jits one step over the mesh),
which is big_vision's ``loss_use_global_batch=True``. LiT ("locked image
tuning") freezes the image tower by config, e.g.
``config.schedule = [("img/.*", None), (".*", dict(decay_type="cosine"))]``.

Predict functions for evaluators: ``embed_image`` and ``embed_text`` (the
zeroshot and retrieval evaluators' defaults) return the normalised embedding and
the tower's intermediates; ``predict`` is ``embed_image``, whose extras hold
``pre_logits`` for few-shot probes of the image tower.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import ml_collections

from bv.core import registry
from bv.core.config import ConfigError
from bv.core.tasks import Batch, Metrics, Params, Task
from bv.lit import losses

DEFAULT_MODEL = "two_towers"


def pp_tokenizers(pp: str) -> list[tuple[str, Any]]:
    """(op spec, tokenizer) of each ``tokenize`` op of a pp string."""
    import inspect

    from bv.pp.ops_text import get_tokenize, resolve_tokenizer

    found = []
    for spec in pp.split("|"):
        if not spec.strip() or registry.parse_call(spec)[0] != "tokenize":
            continue
        _, args, kwargs = registry.parse_call(spec)
        bound = inspect.signature(get_tokenize).bind_partial(*args, **kwargs).arguments
        try:
            found.append((spec.strip(), resolve_tokenizer(bound.get("model"), bound.get("tokenizer"))))
        except OSError:  # a tokenizer file not here (yet): the input pipeline reports it when it is built
            continue
    return found


def check_vocab(pp: str, model: Any) -> None:
    """Fails early when the training pp's tokenizer makes ids the text tower has no embedding for.

    An id past the embedding table would not fail in JAX (a gather out of bounds gives NaN or
    a clamped row): the run would diverge or learn nonsense instead of stopping.
    """
    tower = model.text_tower() if hasattr(model, "text_tower") else None
    vocab = getattr(tower, "vocab_size", None)
    if vocab is None:
        return
    for spec, tokenizer in pp_tokenizers(pp):
        if tokenizer.vocab_size > vocab:
            raise ConfigError(
                f"The tokenizer of {spec!r} makes ids up to {tokenizer.vocab_size - 1}, but the text tower embeds "
                f"only {vocab} ids (config.model.text.vocab_size={vocab}). Use the tokenizer the tower was trained "
                f"with, or set vocab_size to at least {tokenizer.vocab_size}."
            )


def _tower_extras(out: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """The ``img/...`` (or ``txt/...``) entries of the model's outputs, without the prefix."""
    return {k[len(prefix) :]: v for k, v in out.items() if k.startswith(prefix)}


@registry.tasks.register("image_text")
class ImageTextTask(Task):
    """Two towers pulling each image towards its own text and away from the batch's other texts."""

    def __init__(self, config: ml_collections.ConfigDict):
        super().__init__(config)
        name = config.get("model_name") or DEFAULT_MODEL
        entry = registry.model_entry(name)
        if entry.kind != "image_text":
            raise ValueError(
                f"The image_text task needs an image-text model (kind 'image_text', such as 'two_towers'); "
                f"config.model_name={name!r} is a model of kind {entry.kind!r}."
            )
        self.model = entry.factory(num_classes=config.get("num_classes"), **dict(config.get("model") or {}))
        self.loss_name = config.get("loss", "softmax")
        self.loss_fn = losses.get_loss(self.loss_name)
        if self.loss_name.startswith("sigmoid") and getattr(self.model, "bias_init", None) is None:
            raise ValueError(
                f"config.loss={self.loss_name!r} needs a learned bias: set config.model.bias_init "
                "(SigLIP starts it at -10, with config.model.temperature_init=10)."
            )
        self.text_key = config.get("text_key", "labels")
        input_pp = (config.get("input") or {}).get("pp")
        if isinstance(input_pp, str):
            check_vocab(input_pp, self.model)

    def init(self, rng: jax.Array, batch_spec: Mapping[str, jax.ShapeDtypeStruct]) -> Params:
        for key in ("image", self.text_key):
            if key not in batch_spec:
                raise KeyError(
                    f"The image_text task reads batch[{key!r}], but the training batch has only "
                    f"{sorted(batch_spec)}. Keep it in config.input.pp (or set config.text_key)."
                )
        image, text = batch_spec["image"], batch_spec[self.text_key]
        if not jnp.issubdtype(text.dtype, jnp.integer):
            raise TypeError(
                f"batch[{self.text_key!r}] must hold int token ids (tokenize it in config.input.pp); got {text.dtype}."
            )
        images = jnp.zeros((1, *image.shape[1:]), jnp.float32)
        tokens = jnp.zeros((1, *text.shape[1:]), jnp.int32)
        return self.model.init({"params": rng}, images, tokens)["params"]

    def loss(self, params: Params, batch: Batch, rng: jax.Array) -> tuple[jax.Array, Metrics]:
        zimg, ztxt, out = self.model.apply(
            {"params": params}, batch["image"], batch[self.text_key], train=True, rngs={"dropout": rng}
        )
        loss, metrics = self.loss_fn(zimg, ztxt, out["t"], out.get("b"))
        metrics = {
            **metrics,
            "t": out["t"][0],
            "t/parameter": out["t/parameter"][0],
            "nimg": jnp.mean(out["img/norm"]),
            "ntxt": jnp.mean(out["txt/norm"]),
        }
        if "b" in out:
            metrics["b"] = out["b"][0]
        return loss, metrics

    def logical_axes(self, params: Params) -> Mapping[str, tuple[str | None, ...]] | None:
        annotate = getattr(self.model, "logical_axes", None)
        return annotate(params) if callable(annotate) else None

    def predict_fns(self) -> dict[str, Callable[..., Any]]:
        def embed_image(params: Params, images: jax.Array) -> tuple[jax.Array, dict[str, Any]]:
            zimg, _, out = self.model.apply({"params": params}, images, None, train=False)
            return zimg, _tower_extras(out, "img/")

        def embed_text(params: Params, tokens: jax.Array) -> tuple[jax.Array, dict[str, Any]]:
            _, ztxt, out = self.model.apply({"params": params}, None, tokens, train=False)
            return ztxt, _tower_extras(out, "txt/")

        return {"embed_image": embed_image, "embed_text": embed_text, "predict": embed_image}
