"""Exponential moving average of the parameters (Polyak averaging): ``config.ema``.

``config.ema = dict(decay=0.9999, start_step=0)`` keeps, beside the raw
parameters, ``ema = decay * ema + (1 - decay) * params`` after every step past
``start_step`` (before it, the average simply follows the parameters, so it
starts from trained weights rather than from the random init). The average
lives in the training state: it is checkpointed and restored with it, laid out
like the parameters (FSDP shards it the same way, so it costs one more copy of
the parameters per device share, not a full copy), evaluated beside them
(``ema/test/prec@1``), and exported with ``bv-export --ema``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from bv.core.config import ConfigError


@dataclasses.dataclass(frozen=True)
class EmaConfig:
    decay: float
    start_step: int = 0


def parse(cfg: Mapping[str, Any] | None) -> EmaConfig | None:
    """``config.ema`` as an :class:`EmaConfig`, None when it is absent; bad values are clear errors."""
    if not cfg:
        return None
    cfg = dict(cfg.to_dict() if hasattr(cfg, "to_dict") else cfg)
    unknown = set(cfg) - {"decay", "start_step"}
    if unknown:
        raise ConfigError(f"config.ema has unknown keys {sorted(unknown)}; it takes 'decay' and 'start_step'.")
    if "decay" not in cfg:
        raise ConfigError("config.ema needs a 'decay', e.g. config.ema = dict(decay=0.9999).")
    decay = cfg["decay"]
    if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0.0 < decay < 1.0:
        raise ConfigError(f"config.ema.decay must be a number in (0, 1), such as 0.999, got {decay!r}.")
    start = cfg.get("start_step", 0)
    if isinstance(start, bool) or not isinstance(start, int) or start < 0:
        raise ConfigError(f"config.ema.start_step must be a whole number >= 0, got {start!r}.")
    return EmaConfig(float(decay), int(start))


def update(ema: Any, params: Any, step: jax.Array, cfg: EmaConfig) -> Any:
    """The average after step ``step`` (1 for the first) has produced ``params``; elementwise, so shardings hold."""
    averaging = step > cfg.start_step

    def one(e: jax.Array, p: jax.Array) -> jax.Array:
        mixed = cfg.decay * e.astype(jnp.float32) + (1.0 - cfg.decay) * p.astype(jnp.float32)
        return jnp.where(averaging, mixed, p.astype(jnp.float32)).astype(e.dtype)

    return jax.tree.map(one, ema, params)
