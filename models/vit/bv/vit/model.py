"""Vision Transformer (ViT) in flax.linen, parameter-compatible with big_vision.

Module and parameter names follow big_vision's ``models/vit.py`` exactly
(``embedding``, ``pos_embedding``, ``cls``, ``Transformer/encoderblock_{i}/...``,
``Transformer/encoder_norm``, ``MAPHead_0``, ``pre_logits``, ``head``), so its
published ``.npz`` checkpoints load without renaming. With ``scan=True`` the
blocks are stacked under ``Transformer/encoderblock`` with a leading depth axis;
``pyloop_to_scan`` and ``scan_to_pyloop`` convert between the two layouts.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bv.core.config import ConfigError, check_known
from bv.core.tree import flatten_with_names
from bv.vit.patch_embed import PatchEmbedding

Array = Any  # a jax or numpy array
Params = Any  # a nested mapping of arrays

POSEMB_TYPES = ("learn", "sincos2d")
POOL_TYPES = ("gap", "map", "tok", "0", "none")
_ACT_AXES = ("act_batch", "act_len", "act_emb")

# Sizes from big_vision's decode_variant (Table 2 of https://arxiv.org/abs/2106.04560, plus "mu",
# "So400m" and the shape-optimised "g-opt"/"G-opt"): width, depth, mlp_dim, num_heads.
VARIANTS: dict[str, tuple[int, int, int, int]] = {
    "mu": (32, 1, 128, 2),
    "Ti": (192, 12, 768, 3),
    "S": (384, 12, 1536, 6),
    "M": (512, 12, 2048, 8),
    "B": (768, 12, 3072, 12),
    "L": (1024, 24, 4096, 16),
    "So400m": (1152, 27, 4304, 16),
    "H": (1280, 32, 5120, 16),
    "g": (1408, 40, 6144, 16),
    "g-opt": (1536, 40, 6144, 16),
    "G": (1664, 48, 8192, 16),
    "G-opt": (1536, 48, 8192, 16),
    "e": (1792, 56, 15360, 16),
}


def decode_variant(variant: str) -> dict[str, Any]:
    """Turns ``"B"`` or ``"B/16"`` into ``width``, ``depth``, ``mlp_dim``, ``num_heads`` (and ``patch_size``)."""
    name, sep, patch = variant.partition("/")
    if name not in VARIANTS:
        raise ConfigError(
            f"Unknown ViT variant {variant!r}: the size must be one of {', '.join(VARIANTS)}, "
            "optionally followed by '/<patch size>' as in 'B/16'."
        )
    width, depth, mlp_dim, num_heads = VARIANTS[name]
    config: dict[str, Any] = {"width": width, "depth": depth, "mlp_dim": mlp_dim, "num_heads": num_heads}
    if sep:
        if not patch.isdigit() or int(patch) <= 0:
            raise ConfigError(
                f"Bad patch size in ViT variant {variant!r}: expected a positive integer after '/', as in 'B/16'."
            )
        config["patch_size"] = (int(patch), int(patch))
    return config


def posemb_sincos_2d(h: int, w: int, width: int, temperature: float = 10_000.0, dtype: Any = np.float32) -> np.ndarray:
    """Fixed 2-D sin-cos position embedding of shape [1, h*w, width] (the MoCo v3 recipe big_vision uses).

    Computed with numpy: it is a constant, so under ``jit`` it costs nothing at run time.
    """
    if width % 4:
        raise ConfigError(f"posemb='sincos2d' needs a width divisible by 4, got width={width}.")
    quarter = width // 4
    omega = 1.0 / temperature ** (np.arange(quarter) / max(quarter - 1, 1))
    rows, cols = np.mgrid[:h, :w]
    ang_x = cols.reshape(-1)[:, None] * omega[None, :]
    ang_y = rows.reshape(-1)[:, None] * omega[None, :]
    pe = np.concatenate([np.sin(ang_x), np.cos(ang_x), np.sin(ang_y), np.cos(ang_y)], axis=1)
    return pe[None].astype(dtype)


class MlpBlock(nn.Module):
    """Transformer feed-forward block: Dense -> GELU -> Dropout -> Dense."""

    mlp_dim: int | None = None  # None -> 4 * input width
    dropout: float = 0.0
    dtype_mm: str = "float32"
    approximate_gelu: bool = True  # big_vision's tanh GELU; False: the exact (erf) one, as timm and PyTorch

    @nn.compact
    def __call__(self, x: Array, deterministic: bool = True) -> Array:
        inits: dict[str, Any] = {
            "kernel_init": nn.initializers.xavier_uniform(),
            "bias_init": nn.initializers.normal(stddev=1e-6),
        }
        d = x.shape[-1]
        x = nn.Dense(self.mlp_dim or 4 * d, dtype=self.dtype_mm, **inits)(x)
        x = nn.gelu(x, approximate=self.approximate_gelu)
        x = nn.Dropout(rate=self.dropout)(x, deterministic)
        return nn.Dense(d, dtype=self.dtype_mm, **inits)(x)


class Encoder1DBlock(nn.Module):
    """Pre-norm transformer block (self-attention + MLP), returning its output and named intermediates."""

    mlp_dim: int | None = None
    num_heads: int = 12
    dropout: float = 0.0
    dtype_mm: str = "float32"
    approximate_gelu: bool = True

    @nn.compact
    def __call__(self, x: Array, deterministic: bool = True) -> tuple[Array, dict[str, Array]]:
        out: dict[str, Array] = {}
        x = nn.with_logical_constraint(x, _ACT_AXES)
        y = nn.LayerNorm()(x)
        y = out["sa"] = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads,
            kernel_init=nn.initializers.xavier_uniform(),
            deterministic=deterministic,
            dtype=self.dtype_mm,
        )(y, y)
        y = nn.with_logical_constraint(y, _ACT_AXES)
        y = nn.Dropout(rate=self.dropout)(y, deterministic)
        x = out["+sa"] = x + y

        y = nn.LayerNorm()(x)
        y = out["mlp"] = MlpBlock(
            mlp_dim=self.mlp_dim, dropout=self.dropout, dtype_mm=self.dtype_mm, approximate_gelu=self.approximate_gelu
        )(y, deterministic)
        y = nn.with_logical_constraint(y, _ACT_AXES)
        y = nn.Dropout(rate=self.dropout)(y, deterministic)
        x = out["+mlp"] = x + y
        x = nn.with_logical_constraint(x, _ACT_AXES)
        return x, out


def _remat_policy(name: str) -> Callable[..., Any]:
    """The ``jax.checkpoint_policies`` member called ``name``; an unknown name lists the valid ones."""
    policy = getattr(jax.checkpoint_policies, name, None) if not name.startswith("_") else None
    if policy is None:
        valid = sorted(n for n in dir(jax.checkpoint_policies) if not n.startswith("_"))
        raise ConfigError(
            f"Unknown remat_policy {name!r}: expected 'none' or a name from jax.checkpoint_policies "
            f"({', '.join(valid)})."
        )
    return policy  # type: ignore[no-any-return]


class Encoder(nn.Module):
    """A stack of ``depth`` blocks followed by ``encoder_norm``; scanned over depth when ``scan`` is set."""

    depth: int
    mlp_dim: int | None = None
    num_heads: int = 12
    dropout: float = 0.0
    scan: bool = False
    remat_policy: str = "nothing_saveable"
    dtype_mm: str = "float32"
    approximate_gelu: bool = True

    @nn.compact
    def __call__(self, x: Array, deterministic: bool = True) -> tuple[Array, dict[str, Any]]:
        out: dict[str, Any] = {}
        block_kw: dict[str, Any] = {
            "mlp_dim": self.mlp_dim,
            "num_heads": self.num_heads,
            "dropout": self.dropout,
            "dtype_mm": self.dtype_mm,
            "approximate_gelu": self.approximate_gelu,
        }
        if self.scan:
            block_cls: Any = Encoder1DBlock
            if self.remat_policy != "none":
                # Arguments: 0 = self, 1 = x, 2 = deterministic (a Python bool, kept static).
                block_cls = nn.remat(
                    block_cls, prevent_cse=False, static_argnums=(2,), policy=_remat_policy(self.remat_policy)
                )
            scanned = nn.scan(
                block_cls,
                variable_axes={"params": 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=nn.broadcast,
                length=self.depth,
            )
            x, stacked = scanned(name="encoderblock", **block_kw)(x, deterministic)
            for i in range(self.depth):
                out[f"block{i:02d}"] = jax.tree.map(lambda a, i=i: a[i], stacked)
        else:
            for i in range(self.depth):
                x, out[f"block{i:02d}"] = Encoder1DBlock(name=f"encoderblock_{i}", **block_kw)(x, deterministic)
        out["pre_ln"] = x  # the last block's output, before the final norm
        return nn.LayerNorm(name="encoder_norm")(x), out


class MAPHead(nn.Module):
    """Multihead attention pooling: a learned probe attends over the tokens, then a residual MLP."""

    mlp_dim: int | None = None
    num_heads: int = 12
    approximate_gelu: bool = True

    @nn.compact
    def __call__(self, x: Array) -> Array:
        n, _, d = x.shape
        probe = self.param("probe", nn.initializers.xavier_uniform(), (1, 1, d), jnp.float32)
        probe = jnp.tile(probe.astype(x.dtype), [n, 1, 1])
        x = nn.MultiHeadDotProductAttention(num_heads=self.num_heads, kernel_init=nn.initializers.xavier_uniform())(
            probe, x
        )
        y = nn.LayerNorm()(x)
        x = x + MlpBlock(mlp_dim=self.mlp_dim, approximate_gelu=self.approximate_gelu)(y)
        return x[:, 0]


class VisionTransformer(nn.Module):
    """Vision Transformer; returns ``(logits, intermediates)``.

    With a falsy ``num_classes`` there is no ``head`` and the first output is the
    pre-logits representation. ``remat_policy`` (a ``jax.checkpoint_policies``
    name, or ``"none"``) applies to the scanned blocks only, as in big_vision.
    ``dtype_mm`` is the dtype of the stem and encoder matmuls; params stay fp32.
    """

    num_classes: int | None = None
    patch_size: Sequence[int] = (16, 16)
    width: int = 768
    depth: int = 12
    mlp_dim: int | None = None  # None -> 4 * width
    num_heads: int = 12
    posemb: str = "learn"  # or "sincos2d"
    rep_size: int | bool = False  # True -> width; a number -> that size; adds a tanh "pre_logits" layer
    dropout: float = 0.0
    pool_type: str = "gap"  # "gap", "map", "tok", "0" (first token) or "none" (all tokens)
    head_zeroinit: bool = True
    scan: bool = False
    remat_policy: str = "nothing_saveable"
    dtype_mm: str = "float32"
    approximate_gelu: bool = True  # tanh GELU as big_vision; False for the exact GELU of timm's own weights
    # FlexiViT: a learned posemb stored at this grid (e.g. 7 for 7x7) and resized to the patch grid of each call.
    posemb_grid: int | None = None

    def logical_axes(self, params: Params) -> dict[str, tuple[str | None, ...]]:
        """Logical axis names of ``params``, for the trainer's "logical" sharding strategy."""
        return logical_axes(params)

    def __post_init__(self) -> None:
        self._check_options()  # fail when the model is built, not deep inside the first init
        super().__post_init__()

    def _check_options(self) -> None:
        if self.posemb not in POSEMB_TYPES:
            raise ConfigError(f"Unknown posemb {self.posemb!r}: expected one of {', '.join(POSEMB_TYPES)}.")
        if self.pool_type not in POOL_TYPES:
            raise ConfigError(f"Unknown pool_type {self.pool_type!r}: expected one of {', '.join(POOL_TYPES)}.")
        if self.width % self.num_heads:
            raise ConfigError(f"width={self.width} must be divisible by num_heads={self.num_heads}.")
        if self.scan and self.remat_policy != "none":
            _remat_policy(self.remat_policy)

    def _posemb(self, h: int, w: int, c: int) -> Array:
        if self.posemb == "learn":
            gh, gw = (self.posemb_grid, self.posemb_grid) if self.posemb_grid else (h, w)
            posemb = self.param(
                "pos_embedding", nn.initializers.normal(stddev=1 / math.sqrt(c)), (1, gh * gw, c), jnp.float32
            )
            if (gh, gw) != (h, w):  # FlexiViT: one stored grid, resized to this call's patch grid
                posemb = jax.image.resize(posemb.reshape(gh, gw, c), (h, w, c), "bilinear").reshape(1, h * w, c)
            return posemb
        return posemb_sincos_2d(h, w, c)

    @nn.compact
    def __call__(
        self, image: Array, *, train: bool = False, patch_size: int | Sequence[int] | None = None
    ) -> tuple[Array, dict[str, Any]]:
        """``patch_size`` (FlexiViT) runs the model at another patch size: the stem kernel is PI-resized."""
        out: dict[str, Any] = {}
        image = jnp.asarray(image, self.dtype_mm)
        if isinstance(patch_size, int):
            patch_size = (patch_size, patch_size)
        x = out["stem"] = PatchEmbedding(
            self.width, (self.patch_size[0], self.patch_size[1]), dtype_mm=self.dtype_mm, name="embedding"
        )(image, patch_size)
        n, h, w, c = x.shape
        x = jnp.reshape(x, [n, h * w, c])

        # The posemb covers the patch grid only; the [cls] token (if any) is added after it.
        x = out["with_posemb"] = x + self._posemb(h, w, c).astype(x.dtype)
        if self.pool_type == "tok":
            cls = self.param("cls", nn.initializers.zeros, (1, 1, c), jnp.float32)
            x = jnp.concatenate([jnp.tile(cls.astype(x.dtype), [n, 1, 1]), x], axis=1)
        x = nn.Dropout(rate=self.dropout)(x, not train)

        x, out["encoder"] = Encoder(
            depth=self.depth,
            mlp_dim=self.mlp_dim,
            num_heads=self.num_heads,
            dropout=self.dropout,
            scan=self.scan,
            remat_policy=self.remat_policy,
            dtype_mm=self.dtype_mm,
            approximate_gelu=self.approximate_gelu,
            name="Transformer",
        )(x, deterministic=not train)
        encoded = out["encoded"] = x

        if self.pool_type == "map":
            x = MAPHead(num_heads=self.num_heads, mlp_dim=self.mlp_dim, approximate_gelu=self.approximate_gelu)(x)
        elif self.pool_type == "gap":
            x = jnp.mean(x, axis=1)
        elif self.pool_type == "0":
            x = x[:, 0]
        elif self.pool_type == "tok":
            x = x[:, 0]
            encoded = encoded[:, 1:]
        out["head_input"] = x  # for "none": all tokens
        x_2d = jnp.reshape(encoded, [n, h, w, -1])

        if self.rep_size:
            rep_size = self.width if self.rep_size is True else int(self.rep_size)
            hid = nn.Dense(rep_size, name="pre_logits")
            x_2d = nn.tanh(hid(x_2d))
            x = nn.tanh(hid(x))
        out["pre_logits_2d"] = x_2d
        out["pre_logits"] = x

        if self.num_classes:
            init: dict[str, Any] = {"kernel_init": nn.initializers.zeros} if self.head_zeroinit else {}
            head = nn.Dense(self.num_classes, name="head", **init)
            out["logits_2d"] = head(x_2d)
            x = out["logits"] = head(x)
        return x, out


# Logical axis names of each parameter, for sharding (config.sharding_strategy "logical" + config.sharding_rules):
# e.g. rules [("mlp", "model"), ("heads", "model")] give Megatron-style model parallelism.
_LOGICAL_AXES: list[tuple[str, tuple[str | None, ...]]] = [
    (r".*(query|key|value)/kernel", ("embed", "heads", "kv")),
    (r".*(query|key|value)/bias", ("heads", "kv")),
    (r".*out/kernel", ("heads", "kv", "embed")),
    (r".*MlpBlock_0/Dense_0/kernel", ("embed", "mlp")),
    (r".*MlpBlock_0/Dense_0/bias", ("mlp",)),
    (r".*MlpBlock_0/Dense_1/kernel", ("mlp", "embed")),
    (r"head/kernel", ("embed", "classes")),
    (r"head/bias", ("classes",)),
    (r"pre_logits/kernel", ("embed", "embed_out")),
    (r"embedding/kernel", (None, None, None, "embed")),
    (r"(pos_embedding|cls|MAPHead_0/probe)", (None, None, "embed")),
    (r".*", ("embed",)),  # LayerNorm scales and biases, output biases: [width]
]


def logical_axes(params: Params) -> dict[str, tuple[str | None, ...]]:
    """``{param name: logical axis names}`` for ViT params (either layout; scanned blocks get "layers" first)."""
    out: dict[str, tuple[str | None, ...]] = {}
    for name, leaf in flatten_with_names(params):
        scanned = "/encoderblock/" in f"/{name}"
        ndim = len(leaf.shape) - int(scanned)
        for pattern, names in _LOGICAL_AXES:
            if re.fullmatch(pattern, name) and len(names) == ndim:
                out[name] = (("layers",) if scanned else ()) + names
                break
    return out


def create_model(num_classes: int | None = None, *, variant: str | None = None, **kw: Any) -> VisionTransformer:
    """A ``VisionTransformer`` from a variant name (``"B/16"``) and explicit fields, which win over the variant's."""
    fields = {**(decode_variant(variant) if variant else {}), **kw}
    if "patch_size" in fields:
        fields["patch_size"] = tuple(fields["patch_size"])
    check_known("ViT option (config.model key)", kw, _OPTIONS | {"variant"})
    return VisionTransformer(num_classes=num_classes, **fields)


# What config.model may set: the module's fields, and the variant that sets several of them.
_OPTIONS = {f.name for f in dataclasses.fields(VisionTransformer) if f.name not in ("parent", "name", "num_classes")}


def _bilinear_align_corners(x: np.ndarray, size: int, axis: int) -> np.ndarray:
    """Linear resize along ``axis`` with the end points kept (as ``scipy.ndimage.zoom(order=1)``)."""
    n = x.shape[axis]
    if n == size:
        return x
    pos = np.linspace(0.0, n - 1, size) if size > 1 else np.zeros(1)
    lo = np.clip(np.floor(pos).astype(int), 0, n - 1)
    hi = np.minimum(lo + 1, n - 1)
    frac = (pos - lo).reshape([-1 if a == axis else 1 for a in range(x.ndim)])
    return np.take(x, lo, axis=axis) * (1 - frac) + np.take(x, hi, axis=axis) * frac


def resample_posemb(posemb: Array, new_h: int, new_w: int, *, old_hw: tuple[int, int] | None = None) -> np.ndarray:
    """Bilinearly resizes a learned posemb grid [1, h*w, D] to [1, new_h*new_w, D] (high-res fine-tuning).

    Like big_vision (``scipy.ndimage.zoom`` with ``order=1``) the corner values are kept.
    The old grid is square unless ``old_hw`` says otherwise; the caller removes any [cls] entry first.
    """
    posemb = np.asarray(posemb)
    if posemb.ndim != 3 or posemb.shape[0] != 1:
        raise ValueError(f"resample_posemb expects a posemb of shape [1, N, D], got {posemb.shape}.")
    n = posemb.shape[1]
    if old_hw is None:
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(
                f"The posemb has {n} entries, which is not a square grid; pass old_hw=(h, w), and "
                "remove a leading [cls] entry first if there is one."
            )
        old_hw = (side, side)
    old_h, old_w = old_hw
    if old_h * old_w != n:
        raise ValueError(f"old_hw={old_hw} has {old_h * old_w} cells but the posemb has {n} entries.")
    grid = posemb.reshape(old_h, old_w, -1)
    grid = _bilinear_align_corners(grid, new_h, axis=0)
    grid = _bilinear_align_corners(grid, new_w, axis=1)
    return grid.reshape(1, new_h * new_w, -1).astype(posemb.dtype)


def _transformer(params: Params) -> dict[str, Any]:
    if "Transformer" not in params:
        raise ValueError(f"Not ViT params: no 'Transformer' entry among {sorted(params)}.")
    return dict(params["Transformer"])


def pyloop_to_scan(params: Params) -> dict[str, Any]:
    """Stacks ``Transformer/encoderblock_{i}`` into ``Transformer/encoderblock`` (the ``scan=True`` layout)."""
    t = _transformer(params)
    depth = len([k for k in t if k.startswith("encoderblock_")])
    if depth == 0 or any(f"encoderblock_{i}" not in t for i in range(depth)):
        raise ValueError(f"Expected Transformer/encoderblock_0..N-1, found {sorted(t)}.")
    blocks = [t.pop(f"encoderblock_{i}") for i in range(depth)]
    t["encoderblock"] = jax.tree.map(lambda *xs: np.stack([np.asarray(a) for a in xs]), *blocks)
    return {**params, "Transformer": t}


def scan_to_pyloop(params: Params) -> dict[str, Any]:
    """Splits ``Transformer/encoderblock`` (stacked over depth) into ``Transformer/encoderblock_{i}``."""
    t = _transformer(params)
    if "encoderblock" not in t:
        raise ValueError(f"Expected a stacked Transformer/encoderblock, found {sorted(t)}.")
    stacked = t.pop("encoderblock")
    depth = jax.tree.leaves(stacked)[0].shape[0]
    for i in range(depth):
        t[f"encoderblock_{i}"] = jax.tree.map(lambda a, i=i: a[i], stacked)
    return {**params, "Transformer": t}
