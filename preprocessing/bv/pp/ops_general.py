"""General pp ops: value rescaling, one-hot labels, and choosing which keys to keep."""

from __future__ import annotations

from typing import Callable, Sequence

import tensorflow as tf

from bv.core.registry import pp_ops
from bv.pp.utils import RNG_KEY, Data, PPOp, inkey_outkey


@pp_ops.register("value_range")
@inkey_outkey()
def get_value_range(
    vmin: float = -1,
    vmax: float = 1,
    in_min: float | Sequence[float] = 0,
    in_max: float | Sequence[float] = 255.0,
    clip_values: bool = False,
) -> Callable[[tf.Tensor], tf.Tensor]:
    """Maps values linearly from ``[in_min, in_max]`` to ``[vmin, vmax]`` as float32.

    ``in_min``/``in_max`` may be per-channel lists. ``clip_values`` clips the result to
    ``[vmin, vmax]`` (inputs outside the input range would otherwise land outside it).
    """

    def value_range(x: tf.Tensor) -> tf.Tensor:
        lo = tf.constant(in_min, tf.float32)
        hi = tf.constant(in_max, tf.float32)
        unit = (tf.cast(x, tf.float32) - lo) / (hi - lo)
        out = vmin + unit * (vmax - vmin)
        return tf.clip_by_value(out, vmin, vmax) if clip_values else out

    return value_range


@pp_ops.register("onehot")
def get_onehot(
    depth: int,
    key: str = "labels",
    key_result: str | None = None,
    multi: bool = True,
    on: float = 1.0,
    off: float = 0.0,
) -> PPOp:
    """One-hot encodes the int label(s) in ``data[key]`` into ``data[key_result or key]``.

    A scalar label gives a ``[depth]`` vector. A vector of labels gives one ``[depth]``
    multi-hot vector when ``multi`` (each present class is ``on``), else ``[n, depth]``.
    """
    if not isinstance(depth, int) or isinstance(depth, bool) or depth <= 0:
        raise ValueError(f"onehot depth must be a positive int (the number of classes), got {depth!r}.")

    def onehot(data: Data) -> Data:
        if key not in data:
            raise KeyError(f"onehot reads data[{key!r}], but the data only has keys {sorted(data)}. Pass key=....")
        labels = tf.cast(data[key], tf.int64)
        if multi and labels.shape.rank != 0:
            labels = tf.reshape(labels, [-1])
            hits = tf.scatter_nd(labels[:, None], tf.ones_like(labels, tf.float32), [depth])
            encoded = tf.minimum(hits, 1.0) * (on - off) + off  # repeated labels count once
        else:
            encoded = tf.one_hot(labels, depth, on_value=float(on), off_value=float(off))
        return {**data, key_result or key: encoded}

    return onehot


@pp_ops.register("keep")
def get_keep(*keys: str) -> PPOp:
    """Keeps only the given keys (and the ``_rng`` seed, so later random ops stay seeded)."""
    wanted = set(keys) | {RNG_KEY}

    def keep(data: Data) -> Data:
        return {k: v for k, v in data.items() if k in wanted}

    return keep


@pp_ops.register("drop")
def get_drop(*keys: str) -> PPOp:
    """Removes the given keys; keys that are absent are ignored."""
    unwanted = set(keys)

    def drop(data: Data) -> Data:
        return {k: v for k, v in data.items() if k not in unwanted}

    return drop


@pp_ops.register("copy")
def get_copy(inkey: str, outkey: str) -> PPOp:
    """Copies ``data[inkey]`` to ``data[outkey]`` (nested dicts and lists are copied, tensors shared)."""

    def copy(data: Data) -> Data:
        if inkey not in data:
            raise KeyError(f"copy reads data[{inkey!r}], but the data only has keys {sorted(data)}.")
        return {**data, outkey: tf.nest.map_structure(lambda x: x, data[inkey])}

    return copy
