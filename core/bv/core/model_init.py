"""Initialise a model from pre-trained parameters (``config.model_init``).

The source is a bv checkpoint folder or a training workdir (its latest
checkpoint). Parameters whose names match a ``dont_load`` regex (typically the
head, ``head/.*``) keep their fresh initialisation; every other parameter must
be present in the source with the same shape.
"""

from __future__ import annotations

import os
import re
from typing import Any, Sequence

import jax
import numpy as np

from bv.core import checkpoint
from bv.core.tree import flatten_with_names, map_with_names


def _checkpoint_path(source: str) -> str:
    if os.path.isdir(os.path.join(source, checkpoint.CHECKPOINTS_DIR)):
        path = checkpoint.latest(source)
        if path is None:
            raise FileNotFoundError(f"config.model_init: the workdir {source!r} has no complete checkpoint.")
        return path
    if not os.path.isdir(source):
        raise FileNotFoundError(
            f"config.model_init: {source!r} is neither a bv checkpoint folder nor a workdir with checkpoints."
        )
    return source


def load_pretrained(source: str, init_params: Any, *, dont_load: Sequence[str] = ()) -> Any:
    """``init_params`` with every leaf not matched by ``dont_load`` replaced by the one in ``source``."""
    loaded = dict(flatten_with_names(checkpoint.load_params(_checkpoint_path(source))))
    skip = [re.compile(p) for p in dont_load]
    problems: list[str] = []
    used: set[str] = set()

    def pick(name: str, fresh: Any) -> Any:
        if any(p.fullmatch(name) for p in skip):
            return fresh
        if name not in loaded:
            problems.append(f"missing in the checkpoint: {name} {tuple(fresh.shape)}")
            return fresh
        used.add(name)
        value = np.asarray(loaded[name])
        if value.shape != tuple(fresh.shape):
            problems.append(f"shape of {name}: checkpoint {value.shape} vs model {tuple(fresh.shape)}")
            return fresh
        return jax.numpy.asarray(value, dtype=fresh.dtype)

    params = map_with_names(pick, init_params)
    unused = [n for n in loaded if n not in used and not any(p.fullmatch(n) for p in skip)]
    problems += [f"in the checkpoint but not in the model: {n}" for n in unused[:10]]
    if problems:
        raise ValueError(
            f"config.model_init={source!r} does not fit the model ({len(problems)} problems; add regexes to "
            "config.model_load.dont_load to keep those parameters freshly initialised, e.g. 'head/.*'):\n  "
            + "\n  ".join(problems[:10])
        )
    return params
