"""Classification losses on logits and (one-hot or multi-hot) label arrays."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from bv.core import registry
from bv.core.config import ConfigError

Loss = Callable[..., jax.Array]
losses = registry.losses  # the loss registry (bv.core.registry.losses)


def get(name: str) -> Loss:
    """The loss registered as ``name`` (``softmax_xent``, ``sigmoid_xent``, ...)."""
    return registry.losses.get(name)  # type: ignore[no-any-return]


def smooth_labels(labels: jax.Array, smoothing: float) -> jax.Array:
    """Mixes one-hot labels with the uniform distribution: ``(1 - s) * y + s / K``."""
    if not 0.0 <= smoothing < 1.0:
        raise ConfigError(f"label_smoothing must be in [0, 1), got {smoothing}.")
    if smoothing == 0.0:
        return labels
    return labels * (1.0 - smoothing) + smoothing / labels.shape[-1]


@losses.register("softmax_xent")
def softmax_xent(logits: jax.Array, labels: jax.Array, *, label_smoothing: float = 0.0) -> jax.Array:
    """Per-example softmax cross-entropy, shape ``logits.shape[:-1]``.

    ``labels`` are (possibly multi-hot) targets; they are used as given, so a
    multi-hot row counts every positive class.
    """
    labels = smooth_labels(labels.astype(jnp.float32), label_smoothing)
    return -jnp.sum(labels * jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1), axis=-1)


@losses.register("sigmoid_xent")
def sigmoid_xent(logits: jax.Array, labels: jax.Array, *, label_smoothing: float = 0.0) -> jax.Array:
    """Per-example sum over classes of independent binary cross-entropies."""
    labels = smooth_labels(labels.astype(jnp.float32), label_smoothing)
    logits = logits.astype(jnp.float32)
    return -jnp.sum(labels * jax.nn.log_sigmoid(logits) + (1.0 - labels) * jax.nn.log_sigmoid(-logits), axis=-1)
