"""Learning-rate schedules: a step (traced or not) to a multiplier of the base lr.

The shapes follow big_vision's ``create_learning_rate_schedule``: a decay over
the steps after warmup, then a linear warmup from 0 and a linear cooldown to 0
multiplied on top. Durations arrive here already converted to integer steps.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

from bv.core.config import ConfigError, ConfigTypeError

Schedule = Callable[[Any], jax.Array]

DECAY_TYPES = ("cosine", "linear", "polynomial", "rsqrt", "stair", "constant")

# Keyword arguments each decay type reads; others are accepted and ignored, so a
# config can switch ``decay_type`` without deleting the previous type's options.
_DECAY_KWARGS = {
    "linear": ("power", "linear_end", "end"),
    "polynomial": ("power", "linear_end", "end"),
    "rsqrt": ("timescale", "shift"),
    "stair": ("steps", "mults"),
}
_KNOWN_KWARGS = sorted({k for ks in _DECAY_KWARGS.values() for k in ks})

_HINTS = {
    "scale_with_batchsize": "multiply `base` (or the config's lr) by batch_size / 256 instead",
    "timescale_examples": "convert it to steps and pass `timescale`",
}


def _check_kwargs(kw: dict[str, Any]) -> None:
    for key in kw:
        if key in _KNOWN_KWARGS:
            continue
        if key.startswith(("warmup_", "cooldown_")):
            prefix = key.split("_", 1)[0]
            hint = f"durations must be converted to `{prefix}_steps` before building the schedule"
        else:
            hint = _HINTS.get(
                key, f"valid options: base, decay_type, warmup_steps, cooldown_steps, {', '.join(_KNOWN_KWARGS)}"
            )
        raise ConfigTypeError(f"Unknown schedule option {key!r}: {hint}.")


def _decay(
    decay_type: str, base: float, step: jax.Array, progress: jax.Array, warmup_steps: int, kw: dict
) -> jax.Array:
    """The schedule before warmup and cooldown are applied."""
    if decay_type in ("linear", "polynomial"):
        power = kw.get("power", 1)
        end = kw.get("end", kw.get("linear_end", 0.0))
        return end + (base - end) * (1.0 - progress) ** power
    if decay_type == "cosine":
        return base * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
    if decay_type == "rsqrt":
        timescale = kw.get("timescale", 10_000)
        shift = kw.get("shift", 0)
        in_decay = base / jnp.sqrt(1.0 + (step + shift - warmup_steps) / timescale)
        in_warmup = base / jnp.sqrt(1.0 + shift / timescale)
        return jnp.where(step >= warmup_steps, in_decay, in_warmup)
    if decay_type == "stair":
        boundaries = jnp.asarray(kw.get("steps", ()), jnp.float32)
        mults = jnp.asarray([1.0, *kw.get("mults", ())], jnp.float32)
        # The multiplier mults[k] applies from step steps[k] on (inclusive).
        return base * mults[jnp.searchsorted(boundaries, step, side="right")]
    return jnp.full_like(step, base)  # constant


def _check_stair(kw: dict[str, Any]) -> None:
    steps: Sequence[int] = kw.get("steps", ())
    mults: Sequence[float] = kw.get("mults", ())
    if len(steps) != len(mults):
        raise ConfigError(f"A stair schedule needs one mult per step boundary, got steps={steps} and mults={mults}.")
    if list(steps) != sorted(steps):
        raise ConfigError(f"A stair schedule's steps must be increasing, got {steps}.")


def make_schedule(
    total_steps: int,
    base: float = 1.0,
    decay_type: str = "cosine",
    warmup_steps: int = 0,
    cooldown_steps: int = 0,
    **kw: Any,
) -> Schedule:
    """Returns ``fn(step) -> float32 lr`` for ``total_steps`` of training; jit-compatible.

    Decay types and their options:
      - ``cosine``: from ``base`` to 0 over the steps after warmup.
      - ``linear`` / ``polynomial``: ``end + (base - end) * (1 - progress) ** power``
        (``power`` 1, ``end`` or ``linear_end`` 0 by default).
      - ``rsqrt``: ``base / sqrt(1 + (step + shift - warmup_steps) / timescale)``
        (``timescale`` 10_000, ``shift`` 0), flat during warmup.
      - ``stair``: ``base * mults[k]`` from step ``steps[k]`` on.
      - ``constant``: ``base``.
    On top of any of them, warmup ramps linearly from 0 over ``warmup_steps`` and
    cooldown goes linearly to 0 over the last ``cooldown_steps``.
    """
    if decay_type not in DECAY_TYPES:
        raise ConfigError(f"Unknown decay_type {decay_type!r}; valid ones: {', '.join(DECAY_TYPES)}.")
    _check_kwargs(kw)
    for name, value in (
        ("total_steps", total_steps),
        ("warmup_steps", warmup_steps),
        ("cooldown_steps", cooldown_steps),
    ):
        if int(value) != value or value < 0:
            raise ConfigError(f"{name} must be a non-negative integer number of steps, got {value!r}.")
    # Runs of 0 or 1 steps (eval-only, debugging) may have any warmup.
    if total_steps > 1 and warmup_steps >= total_steps:
        raise ConfigError(f"warmup_steps ({warmup_steps}) must be smaller than total_steps ({total_steps}).")
    if decay_type == "stair":
        _check_stair(kw)
    decay_steps = max(total_steps - warmup_steps, 1)

    def schedule(step: Any) -> jax.Array:
        step = jnp.asarray(step, jnp.float32)
        progress = jnp.clip((step - warmup_steps) / decay_steps, 0.0, 1.0)
        lr = _decay(decay_type, base, step, progress, warmup_steps, kw)
        if warmup_steps:
            lr = lr * jnp.minimum(1.0, step / warmup_steps)
        if cooldown_steps:
            lr = lr * jnp.clip((total_steps - step) / cooldown_steps, 0.0, 1.0)
        return jnp.asarray(lr, jnp.float32)

    return schedule
