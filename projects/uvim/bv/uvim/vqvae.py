"""Stage I: the restricted oracle, a ViT VQ-VAE over the task's output, guided by the image.

The task output (a label map, depth, colours) arrives as patches, ``{name: [B, N, C, P]}``
(N patches, C channels or classes, P pixels per patch). Each input is embedded by a
``DenseGeneral`` over ``(C, P)`` (``embedding_<name>``), the image context is added
(``ctx_enc_embedding``, a patch convolution) when ``with_encoder_ctx``, and a ViT
``encoder`` runs over the patches. The patch grid is brought to ``code_len`` tokens
(``bottleneck_resize``: a bilinear resize of the grid; otherwise a learned
``bottleneck_downsample`` matrix), projected (``encoder_head``), standardised and
quantized to the codebook (:mod:`bv.uvim.codebook`). The decoder mirrors it
(``decoder_stem``, ``bottleneck_upsample`` or resize, ``ctx_dec_embedding``, ``decoder``,
``head_<name>``) and returns logits ``{name: [B, N, C, P]}``.

Parameter names follow big_vision's ``proj/uvim/vit.py``; its ``state`` collection
(``dictionary``, ``counts``) is this module's ``state`` collection too. Only the
dictionary learning lives outside the module, in the task (a moving average is not a
gradient step).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bv.core.config import ConfigError
from bv.uvim import codebook
from bv.vit.model import Encoder, posemb_sincos_2d

CODE_DROPOUT = ("none", "random", "ordered")


def grid_of(input_size: Sequence[int], patch_size: Sequence[int]) -> tuple[int, int]:
    """The patch grid ``(rows, cols)``; an image size that patches do not tile is an error."""
    (h, w), (ph, pw) = input_size, patch_size
    if h % ph or w % pw:
        raise ConfigError(f"input_size {tuple(input_size)} is not a whole number of patches of {tuple(patch_size)}.")
    return h // ph, w // pw


def posemb(module: nn.Module, kind: str, grid: tuple[int, int], width: int, name: str) -> jax.Array:
    """A learned (``learn``) or fixed (``sincos2d``) position embedding [1, rows * cols, width]."""
    if kind == "learn":
        init = nn.initializers.normal(stddev=1 / math.sqrt(width))
        return module.param(name, init, (1, grid[0] * grid[1], width), jnp.float32)
    if kind == "sincos2d":
        return jnp.asarray(posemb_sincos_2d(grid[0], grid[1], width))
    raise ConfigError(f"Unknown posemb {kind!r}: expected 'learn' or 'sincos2d'.")


def _resize_tokens(x: jax.Array, src: tuple[int, int], dst: tuple[int, int]) -> jax.Array:
    b, _, c = x.shape
    x = x.reshape(b, src[0], src[1], c)
    return jax.image.resize(x, (b, dst[0], dst[1], c), method="linear").reshape(b, dst[0] * dst[1], c)


class VQVAE(nn.Module):
    """The stage-I model; see the module docstring. ``inputs``/``outputs`` map names to ``(C, P)``."""

    inputs: Mapping[str, Sequence[int]]
    outputs: Mapping[str, Sequence[int]]
    input_size: Sequence[int] = (256, 256)
    patch_size: Sequence[int] = (8, 8)
    code_len: int = 256
    width: int = 768
    enc_depth: int = 6
    dec_depth: int = 6
    mlp_dim: int | None = None
    num_heads: int = 12
    posemb: str = "learn"
    dropout: float = 0.0
    head_zeroinit: bool = True
    dict_size: int = 512
    codeword_dim: int | None = None
    with_encoder_ctx: bool = False
    with_decoder_ctx: bool = False
    code_dropout: str = "none"
    bottleneck_resize: bool = False

    def __post_init__(self) -> None:
        if self.code_dropout not in CODE_DROPOUT:
            raise ConfigError(f"code_dropout must be one of {', '.join(CODE_DROPOUT)}, got {self.code_dropout!r}.")
        if self.dict_size < 2:
            raise ConfigError(f"dict_size (the number of codewords) must be at least 2, got {self.dict_size}.")
        if self.bottleneck_resize and round(math.sqrt(self.code_len)) ** 2 != self.code_len:
            raise ConfigError(f"bottleneck_resize needs a square code_len (a grid of codes), got {self.code_len}.")
        if self.width % self.num_heads:
            raise ConfigError(f"width={self.width} must be divisible by num_heads={self.num_heads}.")
        super().__post_init__()

    def setup(self) -> None:
        self.grid = grid_of(self.input_size, self.patch_size)
        n = self.grid[0] * self.grid[1]
        self.embeddings = {k: nn.DenseGeneral(self.width, axis=(-2, -1), name=f"embedding_{k}") for k in self.inputs}
        head_kw: dict[str, Any] = {"kernel_init": nn.initializers.zeros} if self.head_zeroinit else {}
        self.heads = {
            k: nn.DenseGeneral(tuple(shape), name=f"head_{k}", **head_kw) for k, shape in self.outputs.items()
        }
        if self.with_encoder_ctx:
            self.ctx_enc = nn.Conv(
                self.width,
                tuple(self.patch_size),
                strides=tuple(self.patch_size),
                padding="VALID",
                name="ctx_enc_embedding",
            )
        if self.with_decoder_ctx:
            self.ctx_dec = nn.Conv(
                self.width,
                tuple(self.patch_size),
                strides=tuple(self.patch_size),
                padding="VALID",
                name="ctx_dec_embedding",
            )
        self.pos_enc = posemb(self, self.posemb, self.grid, self.width, "pos_embedding_encoder")
        self.pos_dec = posemb(self, self.posemb, self.grid, self.width, "pos_embedding_decoder")
        enc_kw: dict[str, Any] = {"mlp_dim": self.mlp_dim, "num_heads": self.num_heads, "dropout": self.dropout}
        self.encoder = Encoder(depth=self.enc_depth, name="encoder", **enc_kw)
        self.decoder = Encoder(depth=self.dec_depth, name="decoder", **enc_kw)
        if not self.bottleneck_resize:
            init = nn.initializers.xavier_uniform()
            self.down = self.param("bottleneck_downsample", init, (n, self.code_len))
            self.up = self.param("bottleneck_upsample", init, (self.code_len, n))
        dim = self.codeword_dim or self.width
        norm_init = nn.initializers.normal(stddev=1.0 / math.sqrt(self.dict_size))
        self.dictionary = self.variable(
            "state", "dictionary", lambda: norm_init(self.make_rng("params"), (self.dict_size, dim))
        )
        self.counts = self.variable("state", "counts", lambda: jnp.ones((self.dict_size,), jnp.float32))
        self.encoder_head = nn.Dense(dim, name="encoder_head")
        self.decoder_stem = nn.Dense(self.width, name="decoder_stem")

    @property
    def code_grid(self) -> tuple[int, int]:
        side = round(math.sqrt(self.code_len))
        return side, side

    def codewords(self) -> jax.Array:
        return codebook.codewords(codebook.CodebookState(self.dictionary.value, self.counts.value))

    def _ctx(self, conv: nn.Module, ctx: jax.Array | None) -> jax.Array:
        if ctx is None:
            raise ValueError(
                "This VQ-VAE is guided by the image (with_*_ctx): pass ctx, the image at label resolution."
            )
        tokens = conv(ctx)
        return tokens.reshape(tokens.shape[0], -1, tokens.shape[-1])

    def encode(
        self, x: Mapping[str, jax.Array], *, ctx: jax.Array | None = None, train: bool = False
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """``(x_q, out)``: the quantized codes' vectors [B, code_len, D]; ``out`` holds
        ``bottleneck`` (before quantization), ``bottleneck_q`` and ``code`` (indices [B, code_len])."""
        missing = sorted(set(self.inputs) - set(x))
        if missing:
            raise ValueError(f"The VQ-VAE expects inputs {sorted(self.inputs)}; missing {missing}.")
        h = sum(self.embeddings[k](x[k]) for k in self.inputs)
        if self.with_encoder_ctx:
            h = h + self._ctx(self.ctx_enc, ctx)
        h, _ = self.encoder(h + self.pos_enc, deterministic=not train)
        if self.bottleneck_resize:
            h = _resize_tokens(h, self.grid, self.code_grid)
        else:
            h = jnp.einsum("btc,tn->bnc", h, self.down)
        h = self.encoder_head(h)
        h = jax.nn.standardize(h, axis=-1)
        h_q, idx = codebook.quantize(h, self.codewords())
        return h_q, {"bottleneck": h, "bottleneck_q": h_q, "code": idx}

    def decode(
        self,
        z: jax.Array,
        *,
        ctx: jax.Array | None = None,
        discrete_input: bool = False,
        train: bool = False,
    ) -> tuple[dict[str, jax.Array], dict[str, Any]]:
        """Logits ``{name: [B, N, C, P]}`` from code vectors [B, code_len, D] or code indices [B, code_len]."""
        if discrete_input:
            z = self.codewords()[z]
        if train and self.code_dropout != "none":
            # Keep a random prefix (in importance order, or a random subset) of the codes.
            importance = jnp.linspace(1.0, 0.0, self.code_len + 2)[1:-1]
            thr = jax.random.uniform(self.make_rng("dropout"), z.shape[:1])
            mask = importance[None, :] > thr[:, None]
            if self.code_dropout == "random":
                mask = jax.random.permutation(self.make_rng("dropout"), mask, axis=-1, independent=True)
            z = z * mask[:, :, None]
        h = self.decoder_stem(z)
        if self.bottleneck_resize:
            h = _resize_tokens(h, self.code_grid, self.grid)
        else:
            h = jnp.einsum("bnc,nt->btc", h, self.up)
        if self.with_decoder_ctx:
            h = h + self._ctx(self.ctx_dec, ctx)
        h, _ = self.decoder(h + self.pos_dec, deterministic=not train)
        logits = {k: head(h) for k, head in self.heads.items()}
        return logits, {"logits": logits}

    def __call__(
        self, x: Mapping[str, jax.Array], *, ctx: jax.Array | None = None, train: bool = False
    ) -> tuple[dict[str, jax.Array], dict[str, Any]]:
        z, out_enc = self.encode(x, ctx=ctx, train=train)
        logits, out_dec = self.decode(z, ctx=ctx, train=train)
        return logits, {**out_enc, **out_dec}


def num_patches(input_size: Sequence[int], patch_size: Sequence[int]) -> int:
    rows, cols = grid_of(input_size, patch_size)
    return int(np.prod((rows, cols)))
