"""big_vision's own gradient transformations, reachable as ``optax_name="big_vision.<name>"``.

- ``scale_by_adafactor``: the factored Adafactor variant of "Scaling Vision
  Transformers" (factored second moments with a capped power-decay rate,
  optional block-RMS clipping, and a low-precision EMA momentum).
- ``momentum_hp``: heavy-ball momentum whose accumulator is stored in a small dtype.
- ``sgd``: the identity (plain SGD once the lr is applied).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from bv.core import registry

transforms = registry.optimizers  # big_vision's own transforms, registered in bv.core.registry


def _dtype(dtype: Any) -> Any:
    """Accepts dtypes written in configs as strings (``"bfloat16"``); ``None`` stays ``None``."""
    return None if dtype is None else jnp.dtype(dtype)


@transforms.register("scale_by_adafactor")
def scale_by_adafactor(
    min_dim_size_to_factor: int = 32,
    decay_rate: float = 0.8,
    decay_offset: int = 0,
    beta2_cap: float = 0.999,
    clipping_threshold: float | None = None,
    momentum: float | None = 0.9,
    dtype_momentum: Any = jnp.bfloat16,
    eps: float = 1e-30,
) -> optax.GradientTransformation:
    """Factored second-moment scaling, then optional block-RMS clipping, then EMA momentum.

    The second-moment decay at (0-based) step ``i`` is ``min(beta2_cap, 1 - (i + 1) ** -decay_rate)``.
    Arrays with two dimensions of at least ``min_dim_size_to_factor`` keep only row
    and column statistics. ``momentum=None`` (or 0) turns momentum off.
    """

    def decay_rate_fn(step: Any, exponent: Any) -> jax.Array:
        t = jnp.asarray(step, jnp.float32) + 1.0
        return jnp.minimum(beta2_cap, 1.0 - t ** (-exponent))

    scale_by_rms = optax.scale_by_factored_rms(
        factored=True,
        decay_rate=decay_rate,
        step_offset=decay_offset,
        min_dim_size_to_factor=min_dim_size_to_factor,
        epsilon=eps,
        decay_rate_fn=decay_rate_fn,
    )
    clip = optax.clip_by_block_rms(clipping_threshold) if clipping_threshold else optax.identity()
    mom = optax.ema(momentum, debias=False, accumulator_dtype=_dtype(dtype_momentum)) if momentum else optax.identity()
    return optax.chain(scale_by_rms, clip, mom)


@transforms.register("momentum_hp")
def momentum_hp(
    momentum: float = 0.9, dtype: Any = jnp.bfloat16, nesterov: bool = False
) -> optax.GradientTransformation:
    """Momentum (``optax.trace``) with its accumulator stored in ``dtype`` (bfloat16 by default)."""
    return optax.trace(decay=momentum, nesterov=nesterov, accumulator_dtype=_dtype(dtype))


@transforms.register("sgd")
def sgd() -> optax.GradientTransformation:
    """Plain SGD: leaves the gradient as is; the lr and schedule are applied later."""
    return optax.identity()
