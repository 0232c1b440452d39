"""MLP-Mixer (arXiv:2105.01601) in flax.linen, parameter-compatible with big_vision.

Module and parameter names follow big_vision's ``models/mlp_mixer.py``: ``stem`` (the
patch-embedding conv), ``MixerBlock_{i}`` each holding ``LayerNorm_0``, ``token_mixing``
(``Dense_0``, ``Dense_1``), ``LayerNorm_1`` and ``channel_mixing``, then
``pre_head_layer_norm`` and ``head``. So the paper's and big_vision's ``.npz``
checkpoints load without renaming.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from bv.core.config import ConfigError, check_known
from bv.core.tree import flatten_with_names

Array = Any  # a jax or numpy array
Params = Any  # a nested mapping of arrays

_ACT_AXES = ("act_batch", "act_len", "act_emb")  # tokens between blocks, named as ViT names its tokens

# big_vision's Mixer sizes: hidden_dim, num_blocks, tokens_mlp_dim, channels_mlp_dim.
VARIANTS: dict[str, tuple[int, int, int, int]] = {
    "S": (512, 8, 256, 2048),
    "B": (768, 12, 384, 3072),
    "L": (1024, 24, 512, 4096),
    "H": (1280, 32, 640, 5120),
}


def decode_variant(variant: str) -> dict[str, Any]:
    """Turns ``"B"`` or ``"B/16"`` into ``hidden_dim``, ``num_blocks``, the two MLP widths (and ``patch_size``)."""
    name, sep, patch = variant.partition("/")
    if name not in VARIANTS:
        raise ConfigError(
            f"Unknown Mixer variant {variant!r}: the size must be one of {', '.join(VARIANTS)}, "
            "optionally followed by '/<patch size>' as in 'B/16'."
        )
    hidden, blocks, tokens_mlp, channels_mlp = VARIANTS[name]
    config: dict[str, Any] = {
        "hidden_dim": hidden,
        "num_blocks": blocks,
        "tokens_mlp_dim": tokens_mlp,
        "channels_mlp_dim": channels_mlp,
    }
    if sep:
        if not patch.isdigit() or int(patch) <= 0:
            raise ConfigError(
                f"Bad patch size in Mixer variant {variant!r}: expected a positive integer after '/', as in 'B/16'."
            )
        config["patch_size"] = (int(patch), int(patch))
    return config


class MlpBlock(nn.Module):
    """Dense -> GELU -> Dense back to the input width; mixes along the last axis."""

    mlp_dim: int
    approximate_gelu: bool = True

    @nn.compact
    def __call__(self, x: Array) -> Array:
        y = nn.Dense(self.mlp_dim)(x)
        y = nn.gelu(y, approximate=self.approximate_gelu)
        return nn.Dense(x.shape[-1])(y)


def _keep_mask(x: Array, drop_p: float, train: bool, module: nn.Module) -> Array | float:
    """Stochastic depth: per example, 0 (drop the branch) with probability ``drop_p``, else 1.

    As in big_vision the kept branches are not rescaled by ``1 / (1 - drop_p)`` (timm's
    ``DropPath`` does rescale); evaluation always keeps every branch at full weight.
    """
    if not train or not drop_p:
        return 1.0
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    return 1.0 - jax.random.bernoulli(module.make_rng("dropout"), drop_p, shape).astype(x.dtype)


class MixerBlock(nn.Module):
    """Token mixing (an MLP across patches) then channel mixing (an MLP across features), each pre-norm residual."""

    tokens_mlp_dim: int
    channels_mlp_dim: int
    drop_p: float = 0.0
    approximate_gelu: bool = True

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> Array:
        x = nn.with_logical_constraint(x, _ACT_AXES)
        y = nn.LayerNorm()(x)
        y = jnp.swapaxes(y, 1, 2)  # [n, channels, tokens]: the MLP mixes tokens
        y = MlpBlock(self.tokens_mlp_dim, self.approximate_gelu, name="token_mixing")(y)
        y = jnp.swapaxes(y, 1, 2)
        x = x + y * _keep_mask(x, self.drop_p, train, self)
        y = nn.LayerNorm()(x)
        y = MlpBlock(self.channels_mlp_dim, self.approximate_gelu, name="channel_mixing")(y)
        return nn.with_logical_constraint(x + y * _keep_mask(x, self.drop_p, train, self), _ACT_AXES)


class MlpMixer(nn.Module):
    """MLP-Mixer; returns ``(logits, intermediates)``.

    ``stoch_depth`` is the drop rate of the last block; block ``i`` of ``n`` drops its
    branches with rate ``stoch_depth * i / (n - 1)`` during training (needs a ``dropout``
    rng). With a falsy ``num_classes`` there is no ``head`` and the first output is the
    pooled, normalised representation. ``head_bias_init`` starts the head's bias at a
    constant (big_vision's ``init_head_bias``: -6.9 = log(1/1000) with a sigmoid loss).
    """

    num_classes: int | None = None
    patch_size: Sequence[int] = (16, 16)
    num_blocks: int = 12
    hidden_dim: int = 768
    tokens_mlp_dim: int = 384
    channels_mlp_dim: int = 3072
    stoch_depth: float = 0.0
    head_bias_init: float = 0.0
    approximate_gelu: bool = True  # tanh GELU as big_vision; False for the exact GELU of timm's weights

    def logical_axes(self, params: Params) -> dict[str, tuple[str | None, ...]]:
        """Logical axis names of ``params``, for the trainer's "logical" sharding strategy."""
        return logical_axes(params)

    def __post_init__(self) -> None:
        if not 0.0 <= self.stoch_depth < 1.0:
            raise ConfigError(f"stoch_depth must be in [0, 1), got {self.stoch_depth}.")
        if self.num_blocks < 1:
            raise ConfigError(f"num_blocks must be at least 1, got {self.num_blocks}.")
        super().__post_init__()

    @nn.compact
    def __call__(self, image: Array, *, train: bool = False) -> tuple[Array, dict[str, Any]]:
        out: dict[str, Any] = {}
        patch = tuple(self.patch_size)
        x = out["stem"] = nn.Conv(self.hidden_dim, patch, strides=patch, padding="VALID", name="stem")(image)
        n, h, w, c = x.shape
        x = out["input_tokens"] = jnp.reshape(x, [n, h * w, c])
        for i in range(self.num_blocks):
            drop_p = self.stoch_depth * i / max(self.num_blocks - 1, 1)
            x = out[f"block_{i}"] = MixerBlock(
                self.tokens_mlp_dim,
                self.channels_mlp_dim,
                drop_p,
                self.approximate_gelu,
                name=f"MixerBlock_{i}",
            )(x, train=train)
        x = nn.LayerNorm(name="pre_head_layer_norm")(x)
        x = out["pre_logits"] = jnp.mean(x, axis=1)
        if self.num_classes:
            x = out["logits"] = nn.Dense(
                self.num_classes,
                kernel_init=nn.initializers.zeros,
                bias_init=nn.initializers.constant(self.head_bias_init),
                name="head",
            )(x)
        return x, out


# Logical axis names of each parameter, for sharding (config.sharding_strategy "logical" + config.sharding_rules).
# The vocabulary is ViT's: "embed" is the width of the tokens, "mlp" the hidden units of either MLP, so
# ViT's Megatron rules [("mlp", "model")] split the token- and channel-mixing MLPs alike. "tokens" (the
# number of patches, which the token-mixing MLP mixes) has no ViT counterpart; no rule names it by default.
_LOGICAL_AXES: list[tuple[str, tuple[str | None, ...]]] = [
    (r".*token_mixing/Dense_0/kernel", ("tokens", "mlp")),
    (r".*token_mixing/Dense_1/kernel", ("mlp", "tokens")),
    (r".*token_mixing/Dense_1/bias", ("tokens",)),
    (r".*channel_mixing/Dense_0/kernel", ("embed", "mlp")),
    (r".*channel_mixing/Dense_1/kernel", ("mlp", "embed")),
    (r".*_mixing/Dense_0/bias", ("mlp",)),
    (r"stem/kernel", (None, None, None, "embed")),
    (r"head/kernel", ("embed", "classes")),
    (r"head/bias", ("classes",)),
    (r".*", ("embed",)),  # the stem's and channel MLPs' output biases, LayerNorm scales and biases: [hidden_dim]
]


def logical_axes(params: Params) -> dict[str, tuple[str | None, ...]]:
    """``{param name: logical axis names}`` for Mixer params (one name per dimension)."""
    out: dict[str, tuple[str | None, ...]] = {}
    for name, leaf in flatten_with_names(params):
        for pattern, names in _LOGICAL_AXES:
            if re.fullmatch(pattern, name) and len(names) == len(leaf.shape):
                out[name] = names
                break
    return out


def create_model(num_classes: int | None = None, *, variant: str | None = None, **kw: Any) -> MlpMixer:
    """An ``MlpMixer`` from a variant name (``"B/16"``) and explicit fields, which win over the variant's."""
    fields = {**(decode_variant(variant) if variant else {}), **kw}
    if "patch_size" in fields:
        patch = fields["patch_size"]
        fields["patch_size"] = (int(patch), int(patch)) if isinstance(patch, int) else tuple(patch)
    check_known("Mixer option (config.model key)", kw, _OPTIONS | {"variant"})
    return MlpMixer(num_classes=num_classes, **fields)


# What config.model may set: the module's fields, and the variant that sets several of them.
_OPTIONS = {f.name for f in dataclasses.fields(MlpMixer) if f.name not in ("parent", "name", "num_classes")}
