"""Two towers: an image model and a text model embedding into one space (LiT, CLIP-style, SigLIP).

Laid out as big_vision's ``proj.image_text.two_towers``: the image tower's params
are under ``img/``, the text tower's under ``txt/``, the learned temperature is
``t`` (stored as its log) and the optional SigLIP bias ``b``. Both embeddings are
L2-normalised, so ``zimg @ ztxt.T`` is a matrix of cosine similarities; a loss
scales it by ``out["t"]`` (and shifts it by ``out["b"]``).

Defaults are big_vision's model defaults (``out_dim=128``, ``temperature_init=1``,
no bias); its LiT and SigLIP configs set ``temperature_init=10`` and SigLIP adds
``bias_init=-10`` (the SigLIP paper's ``t' = log 10``, ``b = -10``).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax.numpy as jnp

from bv.core import registry
from bv.lit.bert import BertEncoder, create_bert
from bv.lit.text_transformer import TextTransformer, create_text_transformer
from bv.vit.model import logical_axes as vit_logical_axes

Array = Any

# Text towers by name. big_vision's module path is accepted too, so its configs read unchanged.
TEXT_TOWERS: dict[str, Callable[..., nn.Module]] = {
    "text_transformer": create_text_transformer,
    "proj.image_text.text_transformer": create_text_transformer,
    "bert": create_bert,
    "proj.flaxformer.bert": create_bert,
}


def text_tower_factory(name: str) -> Callable[..., nn.Module]:
    """The factory of the text tower ``name``; an unknown name lists the known ones."""
    try:
        return TEXT_TOWERS[name]
    except KeyError:
        raise ValueError(f"Unknown text_model {name!r}: expected one of {', '.join(sorted(TEXT_TOWERS))}.") from None


def _normalize(z: Array) -> tuple[Array, Array]:
    norm = jnp.linalg.norm(z, axis=1, keepdims=True)
    return z / (norm + 1e-8), norm


class TwoTowers(nn.Module):
    """``__call__(image, text, *, train=False) -> (zimg, ztxt, out)``; either input may be None.

    - ``image_model``: any registered bv image model ("vit", "mixer", "bit", ...),
      built with ``num_classes=out_dim[0]`` and the ``image`` kwargs;
    - ``text_model``: a name in ``TEXT_TOWERS``, built with ``num_classes=out_dim[1]``
      and the ``text`` kwargs;
    - ``out_dim``: one size for both heads or ``(image, text)``; None for a tower
      keeps it headless (its pooled features are the embedding);
    - ``temperature_init``: ``t`` starts at its log; ``bias_init``: None means no ``b``.

    ``out`` holds ``t`` (exp'd), ``t/parameter`` (the log), ``b`` (as stored), and
    per tower ``img/<name>`` / ``txt/<name>``: the tower's intermediates (``pre_logits``
    ...), ``norm`` (before normalising) and ``normalized``. A tower that is not
    called has no params created at init, so init with both inputs.

    A tower whose head starts at zero gives all-zero embeddings at init: pass
    ``head_zeroinit=False`` to a ViT (as big_vision's LiT configs do), or leave
    bv's BiT and Mixer (zero-initialised heads, no option) headless.
    """

    image: Mapping[str, Any] | None = None
    text: Mapping[str, Any] | None = None
    image_model: str = "vit"
    text_model: str = "text_transformer"
    out_dim: int | None | tuple[int | None, int | None] = 128
    temperature_init: float = 1.0
    bias_init: float | None = None

    @nn.nowrap
    def _out_dims(self) -> tuple[int | None, int | None]:
        dims = self.out_dim if isinstance(self.out_dim, (tuple, list)) else (self.out_dim, self.out_dim)
        if len(dims) != 2:
            raise ValueError(f"out_dim must be an int or (image_dim, text_dim); got {self.out_dim!r}.")
        return dims[0], dims[1]

    @nn.nowrap
    def image_tower(self) -> nn.Module:
        """The image tower's module (unbound outside ``setup``)."""
        return registry.model_factory(self.image_model)(num_classes=self._out_dims()[0], **dict(self.image or {}))

    @nn.nowrap
    def text_tower(self) -> nn.Module:
        """The text tower's module (unbound outside ``setup``)."""
        return text_tower_factory(self.text_model)(num_classes=self._out_dims()[1], **dict(self.text or {}))

    @nn.nowrap
    def logical_axes(self, params: Any) -> dict[str, tuple[str | None, ...]]:
        """Logical axis names per param name (``img/...``, ``txt/...``), for the "logical" sharding strategy.

        The image tower's come from its own ``logical_axes`` (none if it has none); the
        text transformer's from ViT's table, plus ``("vocab", "embed")`` for the token embedding; the
        BERT tower's from its own ``logical_axes``.
        """
        out: dict[str, tuple[str | None, ...]] = {}
        annotate = getattr(self.image_tower(), "logical_axes", None)
        if callable(annotate) and "img" in params:
            out.update({f"img/{k}": v for k, v in annotate(params["img"]).items()})
        if "txt" in params and isinstance(self.text_tower(), TextTransformer):
            out.update({f"txt/{k}": v for k, v in vit_logical_axes(params["txt"]).items()})
            out["txt/Embed_0/embedding"] = ("vocab", "embed")
        elif "txt" in params and isinstance(bert := self.text_tower(), BertEncoder):
            out.update({f"txt/{k}": v for k, v in bert.logical_axes(params["txt"]).items()})
        return out

    def setup(self) -> None:
        if self.temperature_init <= 0:
            raise ValueError(
                f"temperature_init must be positive (t is stored as its log); got {self.temperature_init}."
            )
        # Modules made in setup take the attribute's name: params live under img/ and txt/.
        self.img = self.image_tower()
        self.txt = self.text_tower()
        log_t = math.log(self.temperature_init)
        self.t = self.param("t", lambda _, shape, dtype: jnp.full(shape, log_t, dtype), (1,), jnp.float32)
        if self.bias_init is not None:
            b_init = float(self.bias_init)
            self.b = self.param("b", lambda _, shape, dtype: jnp.full(shape, b_init, dtype), (1,), jnp.float32)

    def __call__(
        self, image: Array | None, text: Array | None = None, *, train: bool = False
    ) -> tuple[Array | None, Array | None, dict[str, Any]]:
        out: dict[str, Any] = {}
        zimg = ztxt = None
        if text is not None:
            ztxt, txt_out = self.txt(text, train=train)
            out.update({f"txt/{k}": v for k, v in txt_out.items()})
            ztxt, out["txt/norm"] = _normalize(ztxt)
            out["txt/normalized"] = ztxt
        if image is not None:
            zimg, img_out = self.img(image, train=train)
            out.update({f"img/{k}": v for k, v in img_out.items()})
            zimg, out["img/norm"] = _normalize(zimg)
            out["img/normalized"] = zimg
        out["t/parameter"] = self.t
        out["t"] = jnp.exp(self.t)
        if self.bias_init is not None:
            out["b"] = self.b
        return zimg, ztxt, out


def create_two_towers(num_classes: int | None = None, **kw: Any) -> TwoTowers:
    """The factory registered as the ``two_towers`` model; ``kw`` are ``TwoTowers`` fields.

    Two towers have no classes: their embedding sizes are ``out_dim``.
    """
    if num_classes is not None:
        raise ValueError(
            f"two_towers has no classes (got num_classes={num_classes}); set the embedding size with "
            "config.model.out_dim and leave config.num_classes unset."
        )
    for key in ("image", "text"):
        if kw.get(key) is not None:
            kw[key] = dict(kw[key])  # a ConfigDict is not hashable, and Flax fields must be
    if isinstance(kw.get("out_dim"), list):
        kw["out_dim"] = tuple(kw["out_dim"])
    return TwoTowers(**kw)
