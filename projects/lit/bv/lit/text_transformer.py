"""The text tower of big_vision's two-tower models (LiT, CLIP-style, SigLIP), in flax.linen.

Token ids ``[B, T]`` are embedded (``Embed_0``), a learned position embedding is
added (``pos_embedding``, one entry per position of the length seen at init),
and the pre-LayerNorm encoder of bv.vit runs over them (``Encoder_0``, with
``encoderblock_{i}`` and ``encoder_norm`` inside). One vector is then pooled per
text and, when ``num_classes`` is set, projected by ``head``. These names are
big_vision's, so the text half of its two-tower ``.npz`` checkpoints loads by name.

Padding is not masked, as in big_vision: every token attends to every other one,
pads included. ``pool_type="last"`` takes the vector at the last position, which
is meaningful when the tokenizer keeps an end-of-text token there or pads with
it (big_vision's SigLIP pads with eos, and ``eos="sticky"`` keeps it when a text
is cut); with zero-padding the last position is a pad that still sees the whole
text through attention.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from bv.vit.model import Encoder, MAPHead, decode_variant

Array = Any

# big_vision's names, and the aliases it accepts for two of them.
POOL_TYPES = ("last", "first", "gap", "mean", "gmp", "max", "map")


class TextTransformer(nn.Module):
    """Transformer text encoder; returns ``(out, intermediates)`` like bv's image models.

    ``out`` is the ``head`` projection when ``num_classes`` is set, else the pooled
    vector (``intermediates["pre_logits"]``). Defaults are big_vision's (width 512,
    12 layers, 8 heads, a 32k vocabulary, ``last`` pooling); ``variant`` in
    ``create_text_transformer`` sets the sizes as for a ViT ("B", "So400m", ...).
    ``dtype_mm`` is the dtype of the encoder's matmuls; params stay float32.
    """

    num_classes: int | None = None
    width: int = 512
    depth: int = 12
    mlp_dim: int | None = 2048  # None -> 4 * width
    num_heads: int = 8
    dropout: float = 0.0
    vocab_size: int = 32_000
    pool_type: str = "last"
    scan: bool = False
    remat_policy: str = "nothing_saveable"
    dtype_mm: str = "float32"
    approximate_gelu: bool = True  # big_vision's tanh GELU

    def __post_init__(self) -> None:
        if self.pool_type not in POOL_TYPES:
            raise ValueError(
                f"Unknown pool_type {self.pool_type!r} for the text transformer: expected one of {POOL_TYPES}."
            )
        if self.width % self.num_heads:
            raise ValueError(f"width={self.width} must be divisible by num_heads={self.num_heads}.")
        super().__post_init__()

    @nn.compact
    def __call__(self, text: Array, *, train: bool = False) -> tuple[Array, dict[str, Any]]:
        text = jnp.asarray(text)
        if text.ndim != 2 or not jnp.issubdtype(text.dtype, jnp.integer):
            raise ValueError(
                f"The text transformer takes int token ids of shape [batch, length]; got {text.dtype}{text.shape}."
            )
        out: dict[str, Any] = {}
        x = out["embedded"] = nn.Embed(num_embeddings=self.vocab_size, features=self.width)(text)
        _, length, width = x.shape
        if self.has_variable("params", "pos_embedding"):
            made_for: int = self.get_variable("params", "pos_embedding").shape[1]
            if made_for != length:
                raise ValueError(
                    f"The text transformer's position embedding is made for {made_for} tokens, got texts of "
                    f"{length}: tokenize to exactly {made_for} (longer texts are cut by tokenize(max_len={made_for}, "
                    "eos='sticky'), keeping their end token)."
                )
        posemb = self.param(
            "pos_embedding", nn.initializers.normal(stddev=1 / math.sqrt(width)), (1, length, width), jnp.float32
        )
        x = (x + posemb).astype(self.dtype_mm)

        x, encoder_out = Encoder(
            depth=self.depth,
            mlp_dim=self.mlp_dim,
            num_heads=self.num_heads,
            dropout=self.dropout,
            scan=self.scan,
            remat_policy=self.remat_policy,
            dtype_mm=self.dtype_mm,
            approximate_gelu=self.approximate_gelu,
        )(x, deterministic=not train)
        out.update(encoder_out)
        out["transformed"] = x

        if self.pool_type == "last":
            x = x[:, -1]
        elif self.pool_type == "first":
            x = x[:, 0]
        elif self.pool_type in ("gap", "mean"):
            x = jnp.mean(x, axis=1)
        elif self.pool_type in ("gmp", "max"):
            x = jnp.max(x, axis=1)
        else:  # "map"
            x = MAPHead(num_heads=self.num_heads, mlp_dim=self.mlp_dim, approximate_gelu=self.approximate_gelu)(x)
        out["pre_logits"] = x

        if self.num_classes:
            x = out["logits"] = nn.Dense(self.num_classes, name="head")(x)
        return x, out


def create_text_transformer(
    num_classes: int | None = None, *, variant: str | None = None, **kw: Any
) -> TextTransformer:
    """A ``TextTransformer`` from a ViT size name (``"B"``; a ``"/16"`` patch part is ignored) and fields.

    Explicit fields win over the variant's, as in big_vision.
    """
    fields = decode_variant(variant) if variant else {}
    fields.pop("patch_size", None)
    return TextTransformer(num_classes=num_classes, **{**fields, **kw})
