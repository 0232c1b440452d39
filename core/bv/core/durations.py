"""Durations in a config, given as steps, epochs, examples or a fraction of training, turned into steps.

A duration named ``warmup`` is set by exactly one of ``warmup_steps``,
``warmup_epochs``, ``warmup_examples`` or ``warmup_percent`` (a fraction of the
total steps in [0, 1], as in big_vision). A field set to ``None`` counts as not
given, so a command line can switch forms (``--config.total_epochs=None
--config.total_steps=100``). The training code itself only deals in steps.

Conversions round to the nearest step (Python's ``round``), and a non-zero
duration never rounds down to zero steps.
"""

from __future__ import annotations

import enum
import math
from typing import Any

from bv.core.errors import UserError

__all__ = ["REQUIRED", "DurationError", "steps", "total_steps"]

_FORMS = ("steps", "epochs", "examples", "percent")


class DurationError(UserError, ValueError):
    """A duration that is missing, given twice, or cannot be converted to steps."""


class _Required(enum.Enum):
    TOKEN = 0


REQUIRED = _Required.TOKEN
"""The default of :func:`steps`: a missing duration is an error rather than a default."""


def _number(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DurationError(f"config.{key} must be a number, but is {value!r}.")
    if not math.isfinite(value) or value < 0:
        raise DurationError(f"config.{key} must be a finite number >= 0, but is {value!r}.")
    return float(value)


def _round(value: float) -> int:
    return 0 if value == 0 else max(round(value), 1)


def _given(prefix: str, config: Any, forms: tuple[str, ...]) -> dict[str, Any]:
    keys = [f"{prefix}_{form}" for form in forms]
    return {key: config[key] for key in keys if key in config and config[key] is not None}


def _convert(
    prefix: str,
    config: Any,
    forms: tuple[str, ...],
    data_size: int | None,
    batch_size: int | None,
    total_steps: int | None,
    default: int | _Required | None,
) -> int | None:
    given = _given(prefix, config, _FORMS)
    if len(given) > 1:
        listed = ", ".join(f"{k}={v!r}" for k, v in given.items())
        raise DurationError(f"Give the duration {prefix!r} only one way, but the config sets {listed}.")
    if not given:
        if isinstance(default, _Required):
            options = ", ".join(f"{prefix}_{form}" for form in forms)
            raise DurationError(f"The config gives no duration {prefix!r}: set one of {options}.")
        return default

    ((key, raw),) = given.items()
    form = key[len(prefix) + 1 :]
    if form not in forms:
        allowed = ", ".join(f"{prefix}_{f}" for f in forms)
        raise DurationError(f"config.{key} cannot be used here; use one of {allowed}.")
    value = _number(key, raw)

    if form == "steps":
        if not value.is_integer():
            raise DurationError(f"config.{key} must be a whole number of steps, but is {raw!r}.")
        return int(value)
    if form == "percent":
        if value > 1:
            raise DurationError(f"config.{key} is a fraction of training in [0, 1], but is {raw!r}.")
        if total_steps is None:
            raise DurationError(f"config.{key} needs the total number of steps, which is not known here.")
        return _round(value * total_steps)
    if not batch_size:
        raise DurationError(f"config.{key} needs the batch size to be converted to steps; use {prefix}_steps.")
    if form == "examples":
        return _round(value / batch_size)
    # Epochs.
    if not data_size:
        raise DurationError(
            f"config.{key} needs the number of training examples (data_size) to be converted to steps, and it is "
            f"not known here; use {prefix}_steps or {prefix}_examples instead."
        )
    return _round(value * data_size / batch_size)


def steps(
    prefix: str,
    config: Any,
    *,
    data_size: int | None = None,
    batch_size: int | None = None,
    total_steps: int | None = None,
    default: int | _Required | None = REQUIRED,
) -> int | None:
    """The duration ``prefix`` in steps, from ``{prefix}_steps|_epochs|_examples|_percent`` in ``config``.

    ``data_size`` (examples per epoch) is needed for epochs, ``batch_size`` for
    epochs and examples, ``total_steps`` for percent. When the config gives none of
    the forms, ``default`` is returned; with no default that is an error.
    """
    return _convert(prefix, config, _FORMS, data_size, batch_size, total_steps, default)


def total_steps(config: Any, data_size: int | None, batch_size: int | None) -> int:
    """The length of training, from ``total_steps``, ``total_epochs`` or ``total_examples``."""
    result = _convert("total", config, _FORMS[:3], data_size, batch_size, None, REQUIRED)
    assert result is not None  # REQUIRED never returns a default.
    return result
