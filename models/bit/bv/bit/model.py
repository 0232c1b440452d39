"""BiT ResNets in flax.linen, parameter-compatible with big_vision.

Two families, as in big_vision:

* ``ResNet`` (model ``"bit"``, big_vision's ``models/bit.py``): ResNet v1 with GroupNorm and
  weight-standardised convolutions. Parameters: ``conv_root``, ``gn_root``,
  ``block{i}/unit{j}/{conv1,gn1,conv2,gn2,conv3,gn3,conv_proj,gn_proj}`` (units numbered from 1,
  not zero-padded) and ``head``.
* ``ResNetV2`` (model ``"bit_paper"``, big_vision's ``models/bit_paper.py``): the pre-activation
  ResNet of the BiT paper (arXiv:1912.11370). Parameters: ``root_block/conv_root``,
  ``block{i}/unit{jj}/{gn1,conv1,gn2,conv2,gn3,conv3,conv_proj}`` (units zero-padded: ``unit01``),
  ``norm-pre-head`` and ``head``; its GroupNorm keeps scale and bias as ``[1, 1, 1, C]``.

Both take NHWC images, a ``train`` keyword (unused: there is no dropout or batch statistics), and
return ``(logits, intermediates)`` with ``stem``, ``stage{i}``, ``pre_logits_2d``, ``pre_logits``
and, with a head, ``logits_2d`` and ``logits``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from bv.core.config import ConfigError, check_known
from bv.core.tree import flatten_with_names

Array = Any
Params = Any  # a nested mapping of arrays

# Bottleneck units per stage for each named depth (26 is timm's, as in big_vision).
BLOCK_SIZES: dict[int, tuple[int, ...]] = {
    26: (2, 2, 2, 2),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
    200: (3, 24, 36, 3),
}
GN_GROUPS = 32
ROOT_POOL_PADS = ("-inf", "zero")


def block_sizes(depth: int | Sequence[int]) -> tuple[int, ...]:
    """The number of bottleneck units in each stage: a named depth (26/50/101/152/200) or an explicit list."""
    if isinstance(depth, bool):
        raise ConfigError(f"depth must be an int or a list of units per stage, got {depth!r}.")
    if isinstance(depth, int):
        if depth not in BLOCK_SIZES:
            raise ConfigError(
                f"Unknown ResNet depth {depth}: expected one of {', '.join(map(str, BLOCK_SIZES))}, "
                "or a list of units per stage such as [3, 4, 6, 3]."
            )
        return BLOCK_SIZES[depth]
    sizes = tuple(depth)
    if not sizes or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in sizes):
        raise ConfigError(
            f"depth as a list must hold positive unit counts per stage, such as [3, 4, 6, 3]; got {depth!r}."
        )
    return sizes


def depth_name(sizes: Sequence[int]) -> int | tuple[int, ...]:
    """The inverse of :func:`block_sizes`: the named depth if there is one, else the tuple."""
    sizes = tuple(int(n) for n in sizes)
    for depth, known in BLOCK_SIZES.items():
        if known == sizes:
            return depth
    return sizes


def root_width(width: float) -> int:
    """Channels of the root conv (``64 * width``); every later width is a power-of-two multiple of it."""
    channels = int(64 * width)
    if channels <= 0 or channels % GN_GROUPS:
        raise ConfigError(
            f"width={width} gives {channels} root channels, which GroupNorm cannot split into {GN_GROUPS} groups; "
            "use a width whose 64 * width is a positive multiple of 32, such as 0.5, 1, 1.5, 2, 3 or 4."
        )
    return channels


def weight_standardize(kernel: Array, *, eps: float, eps_in_sqrt: bool = False) -> Array:
    """Each output filter (last axis of an HWIO kernel) shifted to zero mean and scaled to unit variance.

    ``eps_in_sqrt=False`` divides by ``std + eps`` (big_vision's v1); ``True`` by ``sqrt(var + eps)``
    (big_vision's BiT-paper model, the original BiT code and timm's ``StdConv2d``).
    """
    axes = tuple(range(kernel.ndim - 1))
    centred = kernel - jnp.mean(kernel, axis=axes, keepdims=True)
    var = jnp.mean(jnp.square(centred), axis=axes, keepdims=True)
    if eps_in_sqrt:
        return centred * jax.lax.rsqrt(var + eps)
    return centred / (jnp.sqrt(var) + eps)


class StdConv(nn.Module):
    """A bias-free convolution whose kernel is weight-standardised on every call (the ``kernel`` param is raw)."""

    features: int
    kernel_size: tuple[int, int]
    strides: tuple[int, int] = (1, 1)
    padding: str | tuple[tuple[int, int], tuple[int, int]] = "SAME"
    eps: float = 1e-5
    eps_in_sqrt: bool = False

    @nn.compact
    def __call__(self, x: Array) -> Array:
        shape = (*self.kernel_size, x.shape[-1], self.features)
        kernel = self.param("kernel", nn.initializers.lecun_normal(), shape)
        kernel = weight_standardize(kernel, eps=self.eps, eps_in_sqrt=self.eps_in_sqrt)
        padding: str | list[tuple[int, int]] = (
            self.padding if isinstance(self.padding, str) else [(int(lo), int(hi)) for lo, hi in self.padding]
        )
        return jax.lax.conv_general_dilated(
            x, kernel.astype(x.dtype), self.strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
        )


# --------------------------------------------------------------------------- v1 ("bit")


class ResidualUnit(nn.Module):
    """Post-activation bottleneck: conv1x1-GN-ReLU, conv3x3(stride)-GN-ReLU, conv1x1-GN, add, ReLU."""

    nmid: int
    strides: tuple[int, int] = (1, 1)

    @nn.compact
    def __call__(self, x: Array) -> Array:
        nout = 4 * self.nmid
        residual = x
        if x.shape[-1] != nout or self.strides != (1, 1):
            residual = StdConv(nout, (1, 1), self.strides, name="conv_proj")(x)
            residual = nn.GroupNorm(num_groups=GN_GROUPS, name="gn_proj")(residual)
        y = nn.relu(nn.GroupNorm(num_groups=GN_GROUPS, name="gn1")(StdConv(self.nmid, (1, 1), name="conv1")(x)))
        y = StdConv(self.nmid, (3, 3), self.strides, name="conv2")(y)
        y = nn.relu(nn.GroupNorm(num_groups=GN_GROUPS, name="gn2")(y))
        y = StdConv(nout, (1, 1), name="conv3")(y)
        # The last norm starts at zero scale, so each unit starts as (ReLU of) its shortcut.
        y = nn.GroupNorm(num_groups=GN_GROUPS, scale_init=nn.initializers.zeros, name="gn3")(y)
        return nn.relu(residual + y)


class ResNet(nn.Module):
    """ResNet v1 with GroupNorm and weight standardisation (big_vision's ``bit`` model)."""

    num_classes: int | None = None
    width: float = 1.0
    depth: int | tuple[int, ...] = 50

    def logical_axes(self, params: Params) -> dict[str, tuple[str | None, ...]]:
        """Logical axis names of ``params``, for the trainer's "logical" sharding strategy."""
        return logical_axes(params)

    @nn.compact
    def __call__(self, image: Array, *, train: bool = False) -> tuple[Array, dict[str, Array]]:
        del train  # no dropout, no batch statistics
        sizes = block_sizes(self.depth)
        width = root_width(self.width)
        out: dict[str, Array] = {}

        x = StdConv(width, (7, 7), (2, 2), name="conv_root")(image)
        x = nn.relu(nn.GroupNorm(num_groups=GN_GROUPS, name="gn_root")(x))
        x = out["stem"] = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")

        for i, units in enumerate(sizes):
            stride = (1, 1) if i == 0 else (2, 2)
            x = out[f"stage{i + 1}"] = ResNetStage(units, width * 2**i, stride, name=f"block{i + 1}")(x)
        return _head(x, out, self.num_classes)


# --------------------------------------------------------------------------- v2 ("bit_paper")


class GroupNorm(nn.Module):
    """GroupNorm as big_vision's BiT-paper model computes it, with ``[1, 1, 1, C]`` scale and bias."""

    num_groups: int = GN_GROUPS
    eps: float = 1e-5

    @nn.compact
    def __call__(self, x: Array) -> Array:
        channels = x.shape[-1]
        grouped = x.reshape(*x.shape[:-1], self.num_groups, channels // self.num_groups)
        axes = (*range(1, grouped.ndim - 2), grouped.ndim - 1)  # spatial dims and channels within a group
        centred = grouped - jnp.mean(grouped, axis=axes, keepdims=True)
        var = jnp.mean(jnp.square(centred), axis=axes, keepdims=True)
        x = (centred * jax.lax.rsqrt(var + self.eps)).reshape(x.shape)
        shape = (1,) * (x.ndim - 1) + (channels,)
        return x * self.param("scale", nn.initializers.ones, shape) + self.param("bias", nn.initializers.zeros, shape)


class PreActUnit(nn.Module):
    """Pre-activation bottleneck: GN-ReLU, then conv1x1, GN-ReLU-conv3x3(stride), GN-ReLU-conv1x1, add.

    The projection shortcut (when channels or stride change) reads the pre-activated input.
    """

    nmid: int
    strides: tuple[int, int] = (1, 1)
    ws_eps: float = 1e-10

    @nn.compact
    def __call__(self, x: Array) -> Array:
        nout = 4 * self.nmid

        def conv(features: int, size: int, name: str, strides: tuple[int, int] = (1, 1)) -> StdConv:
            pad = ((size // 2, size // 2),) * 2
            return StdConv(features, (size, size), strides, pad, eps=self.ws_eps, eps_in_sqrt=True, name=name)

        residual = x
        x = nn.relu(GroupNorm(name="gn1")(x))
        if residual.shape[-1] != nout or self.strides != (1, 1):
            residual = conv(nout, 1, "conv_proj", self.strides)(x)
        x = conv(self.nmid, 1, "conv1")(x)
        x = conv(self.nmid, 3, "conv2", self.strides)(nn.relu(GroupNorm(name="gn2")(x)))
        x = conv(nout, 1, "conv3")(nn.relu(GroupNorm(name="gn3")(x)))
        return x + residual


class RootBlock(nn.Module):
    """7x7/2 weight-standardised conv and a 3x3/2 max-pool (no norm: the first unit pre-activates)."""

    width: int
    ws_eps: float = 1e-10
    pool_pad: str = "-inf"

    @nn.compact
    def __call__(self, x: Array) -> Array:
        x = StdConv(self.width, (7, 7), (2, 2), ((3, 3), (3, 3)), eps=self.ws_eps, eps_in_sqrt=True, name="conv_root")(
            x
        )
        if self.pool_pad == "zero":  # the original BiT code and timm: pad with zeros, then pool
            x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
            return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")
        return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))  # padded cells never win


class ResNetV2(nn.Module):
    """The BiT paper's pre-activation ResNet v2 (big_vision's ``bit_paper`` model).

    ``ws_eps`` and ``root_pool_pad`` default to what big_vision computes (1e-10; max-pool padding
    that never wins). timm's BiT models (``resnetv2_50x1_bit``, ...) and the original BiT code pad
    the stem's max-pool with zeros (``root_pool_pad="zero"``), and timm standardises with
    ``ws_eps=1e-8``; models converted from timm set both, so they compute exactly what timm does.
    """

    num_classes: int | None = None
    width: float = 1.0
    depth: int | tuple[int, ...] = 50
    ws_eps: float = 1e-10
    root_pool_pad: str = "-inf"

    def logical_axes(self, params: Params) -> dict[str, tuple[str | None, ...]]:
        """Logical axis names of ``params``, for the trainer's "logical" sharding strategy."""
        return logical_axes(params)

    @nn.compact
    def __call__(self, image: Array, *, train: bool = False) -> tuple[Array, dict[str, Array]]:
        del train  # no dropout, no batch statistics
        if self.root_pool_pad not in ROOT_POOL_PADS:
            raise ConfigError(f"root_pool_pad must be one of {ROOT_POOL_PADS}, got {self.root_pool_pad!r}.")
        sizes = block_sizes(self.depth)
        width = root_width(self.width)
        out: dict[str, Array] = {}

        x = out["stem"] = RootBlock(width, self.ws_eps, self.root_pool_pad, name="root_block")(image)
        for i, units in enumerate(sizes):
            stride = (1, 1) if i == 0 else (2, 2)
            stage = ResNetStage(units, width * 2**i, stride, preact=True, ws_eps=self.ws_eps, name=f"block{i + 1}")
            x = out[f"stage{i + 1}"] = stage(x)
        x = out["norm_pre_head"] = GroupNorm(name="norm-pre-head")(x)
        return _head(nn.relu(x), out, self.num_classes)


# --------------------------------------------------------------------------- shared


class ResNetStage(nn.Module):
    """``units`` bottleneck units at one resolution; the first one strides and projects.

    Units are named ``unit1, unit2, ...`` in v1 and ``unit01, unit02, ...`` in v2, as big_vision names them.
    """

    units: int
    nmid: int
    first_stride: tuple[int, int] = (1, 1)
    preact: bool = False
    ws_eps: float = 1e-10  # v2 only

    @nn.compact
    def __call__(self, x: Array) -> Array:
        for j in range(self.units):
            strides = self.first_stride if j == 0 else (1, 1)
            if self.preact:
                x = PreActUnit(self.nmid, strides, self.ws_eps, name=f"unit{j + 1:02d}")(x)
            else:
                x = ResidualUnit(self.nmid, strides, name=f"unit{j + 1}")(x)
        return x


def _head(x: Array, out: dict[str, Array], num_classes: int | None) -> tuple[Array, dict[str, Array]]:
    """Global average pooling and the (zero-initialised) linear head, also applied to every position."""
    out["pre_logits_2d"] = x
    x = out["pre_logits"] = jnp.mean(x, axis=(1, 2))
    if num_classes:
        head = nn.Dense(num_classes, kernel_init=nn.initializers.zeros, name="head")
        out["logits_2d"] = head(out["pre_logits_2d"])
        x = out["logits"] = head(x)
    return x, out


# Logical axis names of each parameter, for sharding (config.sharding_strategy "logical" + config.sharding_rules).
# Convolution kernels (HWIO) name their input and output channels; GroupNorm scales and biases name the
# channels they scale as "conv_out" (the output channels of the conv before them, or of the unit before them in
# v2), so one rule [("conv_out", "model")] splits every conv's filters together with its norm. The head uses
# ViT's names. Either family (v1 "bit" or v2 "bit_paper"); both take the same table.
_LOGICAL_AXES: list[tuple[str, tuple[str | None, ...]]] = [
    (r"head/kernel", ("embed", "classes")),
    (r"head/bias", ("classes",)),
    (r".*/kernel", (None, None, "conv_in", "conv_out")),  # every StdConv: [kh, kw, in, out]
    (r".*/(scale|bias)", ("conv_out",)),  # v1's nn.GroupNorm: [C]
    (r".*/(scale|bias)", (None, None, None, "conv_out")),  # v2's GroupNorm: [1, 1, 1, C]
]


def logical_axes(params: Params) -> dict[str, tuple[str | None, ...]]:
    """``{param name: logical axis names}`` for BiT params, v1 or v2 (one name per dimension)."""
    out: dict[str, tuple[str | None, ...]] = {}
    for name, leaf in flatten_with_names(params):
        for pattern, names in _LOGICAL_AXES:
            if re.fullmatch(pattern, name) and len(names) == len(leaf.shape):
                out[name] = names
                break
    return out


def _fields(depth: int | Sequence[int], width: float) -> dict[str, Any]:
    block_sizes(depth)  # fail early, with the message a user can act on
    root_width(width)
    return {"depth": depth if isinstance(depth, int) else tuple(depth), "width": width}


def create_model(
    num_classes: int | None = None, *, depth: int | Sequence[int] = 50, width: float = 1.0, **unknown: Any
) -> ResNet:
    """A BiT ResNet v1 (``"bit"``): ``depth`` 26/50/101/152/200 or units per stage, ``width`` a multiplier of 64."""
    check_known("BiT option (config.model key)", unknown, ("depth", "width"))
    return ResNet(num_classes=num_classes, **_fields(depth, width))


def create_paper_model(
    num_classes: int | None = None,
    *,
    depth: int | Sequence[int] = 50,
    width: float = 1.0,
    ws_eps: float = 1e-10,
    root_pool_pad: str = "-inf",
    **unknown: Any,
) -> ResNetV2:
    """A BiT-paper ResNet v2 (``"bit_paper"``); see :class:`ResNetV2` for ``ws_eps`` and ``root_pool_pad``."""
    check_known("BiT option (config.model key)", unknown, ("depth", "width", "ws_eps", "root_pool_pad"))
    if root_pool_pad not in ROOT_POOL_PADS:
        raise ConfigError(f"root_pool_pad must be one of {ROOT_POOL_PADS}, got {root_pool_pad!r}.")
    return ResNetV2(num_classes=num_classes, ws_eps=float(ws_eps), root_pool_pad=root_pool_pad, **_fields(depth, width))
