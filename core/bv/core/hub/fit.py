"""Fit loaded parameters to a model: keep, re-initialise or adapt each leaf, with one clear report.

Used by ``from_pretrained(..., num_classes=..., resolution=...)`` and by the
trainer's ``config.model_init``. Every parameter of the target model must come
from the source with its shape, unless a ``dont_load`` regex matches it (it
keeps its fresh value) or the model's ``adapt`` hook can reshape it (a position
embedding resampled to a new resolution).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from bv.core.errors import UserError

from bv.core.tree import map_with_names

# adapt(name, loaded value, target shape) -> adapted value, or None if it cannot adapt that leaf.
AdaptFn = Callable[[str, np.ndarray, tuple[int, ...]], "np.ndarray | None"]


class ParamsMismatchError(UserError, ValueError):
    """Loaded parameters that do not fit the model; the message lists the differences."""


def matches_any(name: str, patterns: Sequence[str]) -> bool:
    """Whether a ``/``-joined leaf name fully matches one of the regexes (as ``dont_load`` uses them)."""
    return any(re.fullmatch(p, name) for p in patterns)


def fit_params(
    loaded: Mapping[str, Any],
    target: Any,
    *,
    dont_load: Sequence[str] = (),
    adapt: AdaptFn | None = None,
    what: str = "The pretrained weights",
) -> Any:
    """``target`` (a tree of arrays) with each leaf replaced by its counterpart in the flat ``loaded`` mapping.

    Leaves matching a ``dont_load`` regex keep the target's value. Loaded values are cast to the
    target leaf's dtype. Raises :class:`ParamsMismatchError` listing missing, misshapen and unused names.
    """
    problems: list[str] = []
    used: set[str] = set()

    def pick(name: str, fresh: Any) -> Any:
        if matches_any(name, dont_load):
            return fresh
        if name not in loaded:
            problems.append(f"missing: {name} {tuple(fresh.shape)}")
            return fresh
        used.add(name)
        value = np.asarray(loaded[name])
        shape = tuple(fresh.shape)
        if value.shape != shape:
            adapted = adapt(name, value, shape) if adapt is not None else None
            if adapted is None or tuple(adapted.shape) != shape:
                problems.append(f"shape of {name}: source {value.shape} vs model {shape}")
                return fresh
            value = adapted
        return jax.numpy.asarray(value, dtype=fresh.dtype)

    params = map_with_names(pick, target)
    unused = [n for n in loaded if n not in used and not matches_any(n, dont_load)]
    problems += [f"not in the model: {n}" for n in unused]
    if problems:
        listed = "\n  ".join(problems[:12]) + (f"\n  ... and {len(problems) - 12} more" if len(problems) > 12 else "")
        raise ParamsMismatchError(
            f"{what} do not fit the model ({len(problems)} problems). Check the model's settings, or list "
            f"the parameters to keep freshly initialised in dont_load (e.g. 'head/.*'):\n  {listed}"
        )
    return params
