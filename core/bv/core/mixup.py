"""Mixup (https://arxiv.org/abs/1710.09412) as big_vision defines it, applied by the trainer to each batch.

    config.mixup = dict(p=0.2)          # Dirichlet concentration; n=2 mixes each example with one other

Mixing coefficients ``alpha`` come from ``Dirichlet(p, ..., p)`` over ``n`` terms,
sorted in decreasing order (so a small ``p`` keeps each example mostly itself), and
example ``b`` becomes ``sum_i alpha_i * batch[b - i]`` (the batch rolled by ``i``),
for the images and the labels alike. One set of coefficients serves the whole
global batch unless ``per_example`` is set.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from bv.core.config import ConfigError


def mixup(rng: jax.Array, *arrays: jax.Array, p: float = 0.1, n: int = 2, per_example: bool = False) -> list[jax.Array]:
    """``arrays`` (same batch size) mixed with the same coefficients."""
    if p <= 0:
        raise ConfigError(f"mixup's p (the Dirichlet concentration) must be positive, got {p}.")
    if n < 2:
        raise ConfigError(f"mixup's n (how many examples are mixed into one) must be at least 2, got {n}.")
    batch = arrays[0].shape[0]
    shape = (batch,) if per_example else (1,)
    alpha = jax.random.dirichlet(rng, jnp.full((n,), p, jnp.float32), shape)
    alpha = -jnp.sort(-alpha, axis=-1)  # largest weight on the example itself

    def mix(x: jax.Array) -> jax.Array:
        if x.shape[0] != batch:
            raise ValueError(f"mixup needs arrays with the same batch size; got {batch} and {x.shape[0]}.")
        weights = [jnp.reshape(alpha[:, i], (-1,) + (1,) * (x.ndim - 1)) for i in range(n)]
        return sum(w.astype(x.dtype) * jnp.roll(x, i, axis=0) for i, w in enumerate(weights))  # type: ignore[return-value]

    return [mix(x) for x in arrays]


def mix_batch(rng: jax.Array, batch: Mapping[str, jax.Array], config: Mapping[str, Any]) -> dict[str, jax.Array]:
    """``batch`` with ``config["keys"]`` (default image and labels) mixed; ``config`` is ``config.mixup``."""
    options = dict(config)
    keys: Sequence[str] = tuple(options.pop("keys", ("image", "labels")))
    unknown = set(options) - {"p", "n", "per_example"}
    if unknown:
        raise ConfigError(f"Unknown config.mixup options {sorted(unknown)}; expected p, n, per_example, keys.")
    missing = [k for k in keys if k not in batch]
    if missing:
        raise ConfigError(f"config.mixup mixes {list(keys)}, but the batch has no {missing} (it has {sorted(batch)}).")
    mixed = mixup(rng, *(batch[k] for k in keys), **options)
    return {**batch, **dict(zip(keys, mixed))}
