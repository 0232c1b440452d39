"""Stage II: the language model, a ViT encoder on the image and an autoregressive decoder over codes.

The decoder reads the code sequence shifted right (token 0 starts it; codes are
``1..dict_size``), attends causally to itself and fully to the encoded image patches,
and predicts the next code. With ``decode=True`` it runs one token at a time against a
fixed-length key/value cache (the ``cache`` collection, ``seq_len`` long), which is what
:mod:`bv.uvim.decode` samples with under ``jit``.

Parameter names follow big_vision's ``proj/uvim/vtt.py``: ``EmbedPatches``,
``pos_embedding_encoder``, ``encoder``, ``decoder/{EmbedTargets, PosEmbedTargets,
EncDecBlock<i>/{LayerNorm1, SelfAttn, LayerNorm2, CrossAttn, LayerNorm3, MLP},
LayerNorm, LogitsDense}``.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from bv.core.config import ConfigError
from bv.uvim.vqvae import grid_of, posemb
from bv.vit.model import Encoder, MlpBlock


def shift_right(x: jax.Array) -> jax.Array:
    """``[B, L]`` -> ``[B, L]``: a 0 in front, the last token dropped (teacher forcing's inputs)."""
    return jnp.pad(x, ((0, 0), (1, 0)))[:, :-1]


class EncDecBlock(nn.Module):
    """Pre-norm decoder block: causal self-attention (cached when decoding), cross-attention, MLP."""

    mlp_dim: int
    num_heads: int
    dropout: float = 0.0
    decode: bool = False

    @nn.compact
    def __call__(self, y: jax.Array, encoded: jax.Array, mask: jax.Array | None, deterministic: bool) -> jax.Array:
        x = nn.LayerNorm(name="LayerNorm1")(y)
        x = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads, use_bias=False, dropout_rate=self.dropout, decode=self.decode, name="SelfAttn"
        )(x, mask=mask, deterministic=deterministic)
        x = nn.Dropout(self.dropout)(x, deterministic) + y
        z = nn.LayerNorm(name="LayerNorm2")(x)
        z = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads, use_bias=False, dropout_rate=self.dropout, name="CrossAttn"
        )(z, encoded, deterministic=deterministic)
        z = nn.Dropout(self.dropout)(z, deterministic) + x
        m = nn.LayerNorm(name="LayerNorm3")(z)
        return z + MlpBlock(mlp_dim=self.mlp_dim, dropout=self.dropout, name="MLP")(m, deterministic)


class Decoder(nn.Module):
    emb_dim: int
    mlp_dim: int
    num_heads: int
    num_layers: int
    vocab_size: int
    seq_len: int
    dropout: float = 0.0

    @nn.compact
    def __call__(
        self, encoded: jax.Array, targets: jax.Array, *, decode: bool = False, train: bool = False
    ) -> jax.Array:
        """Logits [B, L, vocab]. Teacher forcing: ``targets`` [B, L] are the codes to predict.
        Decoding: ``targets`` [B, 1] is the previous token (0 first); the position comes from the cache."""
        y = targets.astype(jnp.int32)
        if not decode:
            y = shift_right(y)
        y = nn.Embed(self.vocab_size, self.emb_dim, embedding_init=nn.initializers.normal(1.0), name="EmbedTargets")(y)
        pos = self.param(
            "PosEmbedTargets", nn.initializers.normal(stddev=self.emb_dim**-0.5), (1, self.seq_len, self.emb_dim)
        )
        if decode:
            # The cache is made by a first call with the whole (zero) sequence; later calls give one token.
            initializing = not self.has_variable("cache", "position")
            index = self.variable("cache", "position", lambda: jnp.zeros((), jnp.int32))
            if initializing:
                y = y + pos[:, : y.shape[1]]
            else:
                y = y + jax.lax.dynamic_slice_in_dim(pos, index.value, 1, axis=1)
                index.value = index.value + 1
            mask = None
        else:
            y = y + pos[:, : y.shape[1]]
            mask = nn.make_causal_mask(targets)
        y = nn.Dropout(self.dropout)(y, not train)
        for i in range(self.num_layers):
            y = EncDecBlock(
                mlp_dim=self.mlp_dim,
                num_heads=self.num_heads,
                dropout=self.dropout,
                decode=decode,
                name=f"EncDecBlock{i}",
            )(y, encoded, mask, not train)
        y = nn.LayerNorm(name="LayerNorm")(y)
        return nn.Dense(self.vocab_size, kernel_init=nn.initializers.zeros, name="LogitsDense")(y)  # type: ignore[no-any-return]


class VTT(nn.Module):
    """Image encoder + code decoder; ``vocab_size = dict_size + 1`` and ``seq_len = code_len`` of stage I."""

    vocab_size: int
    seq_len: int
    input_size: Sequence[int] = (256, 256)
    patch_size: Sequence[int] = (16, 16)
    emb_dim: int = 512
    num_layers: int = 6
    num_heads: int = 8
    mlp_dim: int = 2048
    dropout_rate: float = 0.0
    posemb_type: str = "sincos2d"

    def __post_init__(self) -> None:
        if self.emb_dim % self.num_heads:
            raise ConfigError(f"emb_dim={self.emb_dim} must be divisible by num_heads={self.num_heads}.")
        super().__post_init__()

    def setup(self) -> None:
        self.grid = grid_of(self.input_size, self.patch_size)
        self.pos_emb = posemb(self, self.posemb_type, self.grid, self.emb_dim, "pos_embedding_encoder")
        self.conv = nn.Conv(
            self.emb_dim, tuple(self.patch_size), strides=tuple(self.patch_size), padding="VALID", name="EmbedPatches"
        )
        self.encoder = Encoder(
            depth=self.num_layers,
            mlp_dim=self.mlp_dim,
            num_heads=self.num_heads,
            dropout=self.dropout_rate,
            name="encoder",
        )
        self.decoder = Decoder(
            emb_dim=self.emb_dim,
            mlp_dim=self.mlp_dim,
            num_heads=self.num_heads,
            num_layers=self.num_layers,
            vocab_size=self.vocab_size,
            seq_len=self.seq_len,
            dropout=self.dropout_rate,
            name="decoder",
        )

    def encode(self, image: jax.Array, train: bool = False) -> jax.Array:
        x = self.conv(image)
        x = x.reshape(x.shape[0], -1, x.shape[-1])
        encoded, _ = self.encoder(x + self.pos_emb, deterministic=not train)
        return encoded  # type: ignore[no-any-return]

    def decode(self, encoded: jax.Array, targets: jax.Array, decode: bool = False, train: bool = False) -> jax.Array:
        return self.decoder(encoded, targets, decode=decode, train=train)  # type: ignore[no-any-return]

    def __call__(self, image: jax.Array, codes: jax.Array, *, train: bool = False) -> jax.Array:
        """Teacher-forced logits [B, L, vocab] of ``codes`` [B, L] (tokens ``1..dict_size``)."""
        return self.decode(self.encode(image, train=train), codes, train=train)
