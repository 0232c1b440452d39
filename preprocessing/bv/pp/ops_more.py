"""More general pp ops: reshaping, padding, concatenating, defaults, random choice and lookups.

These complete big_vision's image/label ops (text ops: ``ops_text``).
Single-tensor ops take ``key=``/``inkey=``/``outkey=`` like the others; ``choice`` draws
from ``data["_rng"]`` when present, so its picks are a pure function of the example's seed.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import tensorflow as tf

from bv.core.registry import pp_ops
from bv.core.tree import flatten_with_names
from bv.pp.utils import Data, PPOp, inkey_outkey, next_seed, require

TensorFn = Callable[[tf.Tensor], tf.Tensor]

CLIP_MEAN = (0.48145466 * 255, 0.4578275 * 255, 0.40821073 * 255)
CLIP_STD = (0.26862954 * 255, 0.26130258 * 255, 0.27577711 * 255)
PAD_WHERE = ("after", "before", "both")


def _key_list(keys: str | Sequence[str] | None, what: str, op: str) -> list[str]:
    if keys is None:
        raise ValueError(f"pp op {op} needs {what}: a key or a list of keys.")
    out = [keys] if isinstance(keys, str) else list(keys)
    if not out or not all(isinstance(k, str) for k in out):
        raise ValueError(f"pp op {op}: {what} must be a key or a non-empty list of keys, got {keys!r}.")
    return out


# ---------------------------------------------------------------- image ops


@pp_ops.register("clip_value_range")
@inkey_outkey()
def get_clip_value_range() -> TensorFn:
    """Normalises a 0..255 image with OpenAI CLIP's per-channel mean and std (float32 out)."""
    mean = tf.constant(CLIP_MEAN, tf.float32)
    std = tf.constant(CLIP_STD, tf.float32)

    def clip_value_range(image: tf.Tensor) -> tf.Tensor:
        return (tf.cast(image, tf.float32) - mean) / std

    return clip_value_range


@pp_ops.register("convert_to_video")
@inkey_outkey()
def get_convert_to_video(num_frames: int) -> TensorFn:
    """Turns an image ``[h, w, c]`` into a video ``[num_frames, h, w, c]``: the image, then black frames."""
    if not isinstance(num_frames, int) or isinstance(num_frames, bool) or num_frames < 1:
        raise ValueError(f"convert_to_video needs num_frames >= 1 (an int), got {num_frames!r}.")

    def convert_to_video(image: tf.Tensor) -> tf.Tensor:
        return tf.pad(image[None], [[0, num_frames - 1], [0, 0], [0, 0], [0, 0]])

    return convert_to_video


# ---------------------------------------------------------------- shapes


@pp_ops.register("squeeze_last_dim")
@inkey_outkey()
def get_squeeze_last_dim() -> TensorFn:
    """Drops a trailing axis of size 1 (``[h, w, 1]`` -> ``[h, w]``); any other size is an error."""

    def squeeze_last_dim(x: tf.Tensor) -> tf.Tensor:
        return tf.squeeze(x, axis=-1)

    return squeeze_last_dim


@pp_ops.register("reshape")
@inkey_outkey()
def get_reshape(new_shape: int | Sequence[int]) -> TensorFn:
    """Reshapes to ``new_shape`` (one entry may be -1), keeping the dtype."""
    shape = [new_shape] if isinstance(new_shape, int) else list(new_shape)
    if not all(isinstance(s, int) and not isinstance(s, bool) and (s >= 0 or s == -1) for s in shape):
        raise ValueError(f"reshape needs a shape of non-negative ints (one may be -1), got {new_shape!r}.")
    if shape.count(-1) > 1:
        raise ValueError(f"reshape: at most one dimension may be -1, got {new_shape!r}.")

    def reshape(x: tf.Tensor) -> tf.Tensor:
        return tf.reshape(x, shape)

    return reshape


@pp_ops.register("pad_to_shape")
@inkey_outkey()
def get_pad_to_shape(shape: Sequence[int | None], pad_value: Any = 0, where: str = "after") -> TensorFn:
    """Pads each axis up to ``shape`` with ``pad_value``; a None entry leaves that axis alone.

    ``where`` puts the padding ``"after"`` the data, ``"before"`` it, or splits it over ``"both"``
    sides (the extra element after). The result has a static shape where ``shape`` gives one.
    A tensor already larger than ``shape`` is an error, not a crop.
    """
    if where not in PAD_WHERE:
        raise ValueError(f"pad_to_shape: unknown where={where!r}; choose one of {', '.join(PAD_WHERE)}.")
    target = list(shape)
    if not all(t is None or (isinstance(t, int) and not isinstance(t, bool) and t >= 0) for t in target):
        raise ValueError(f"pad_to_shape needs a shape of non-negative ints or None, got {shape!r}.")

    def pads(current: tf.Tensor, wanted: int | None) -> Any:
        if wanted is None:
            return [0, 0]
        extra = wanted - current
        if where == "after":
            return tf.stack([0, extra])
        if where == "before":
            return tf.stack([extra, 0])
        return tf.stack([extra // 2, extra - extra // 2])

    def pad_to_shape(x: tf.Tensor) -> tf.Tensor:
        if x.shape.rank is not None and x.shape.rank != len(target):
            raise ValueError(
                f"pad_to_shape{tuple(target)} has {len(target)} dims but the tensor has shape {x.shape} "
                f"(rank {x.shape.rank})."
            )
        current = tf.shape(x)
        wanted = [t if t is not None else current[i] for i, t in enumerate(target)]
        check = tf.debugging.assert_less_equal(
            current, tf.cast(tf.stack(wanted), current.dtype), message=f"pad_to_shape{tuple(target)}: tensor too big"
        )
        with tf.control_dependencies([check]):
            paddings = tf.stack([pads(current[i], t) for i, t in enumerate(target)])
        out = tf.pad(x, paddings, constant_values=tf.constant(pad_value, x.dtype))
        return tf.ensure_shape(out, target)

    return pad_to_shape


@pp_ops.register("concat")
def get_concat(inkeys: Sequence[str], outkey: str | None = None, axis: int = -1) -> PPOp:
    """Concatenates ``data[k]`` for ``k`` in ``inkeys`` along ``axis`` into ``outkey`` (default: the first key)."""
    keys = _key_list(inkeys, "inkeys", "concat")
    out_key = outkey or keys[0]

    def concat(data: Data) -> Data:
        parts = [require(data, k, "concat") for k in keys]
        return {**data, out_key: tf.concat(parts, axis)}

    return concat


@pp_ops.register("rag_tensor")
@inkey_outkey()
def get_rag_tensor() -> TensorFn:
    """Wraps a tensor as a ragged tensor with one row, ``[1, (n), ...]``, for ``ragged_batch``."""

    def rag_tensor(x: tf.Tensor) -> tf.RaggedTensor:
        return tf.RaggedTensor.from_tensor(x[None])

    return rag_tensor


# ---------------------------------------------------------------- dict structure


@pp_ops.register("flatten")
def get_flatten() -> PPOp:
    """Flattens nested dicts into ``/``-joined keys: ``{"a": {"b": x}}`` -> ``{"a/b": x}``."""

    def flatten(data: Data) -> Data:
        return dict(flatten_with_names(data))

    return flatten


@pp_ops.register("setdefault")
def get_setdefault(key: str, value: Any) -> PPOp:
    """Sets ``data[key]`` to ``value`` when the key is missing or holds an empty tensor.

    A present, non-empty tensor is kept; ``value`` is cast to its dtype and, for an empty
    tensor, broadcast to its shape with unknown or zero sizes taken as 1.
    """

    def setdefault(data: Data) -> Data:
        if key not in data:
            return {**data, key: tf.constant(value)}
        x = tf.convert_to_tensor(data[key])
        fill = tf.broadcast_to(tf.constant(value, x.dtype), [s or 1 for s in x.shape.as_list()])
        return {**data, key: tf.cond(tf.size(x) > 0, lambda: x, lambda: fill)}

    return setdefault


# ---------------------------------------------------------------- random choice


def _parse_choice_n(n: Any) -> tuple[int, int | None]:
    """``"single"`` -> (1, None), ``k`` -> (k, k), ``[lo, hi]`` -> (lo, hi); else a clear error."""
    if n == "single":
        return 1, None
    if isinstance(n, int) and not isinstance(n, bool) and n >= 1:
        return n, n
    if isinstance(n, (list, tuple)) and len(n) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in n):
        if 0 <= n[0] <= n[1]:
            return n[0], n[1]
    raise ValueError(
        f'choice: n must be "single", a positive int, or a [min, max] pair with 0 <= min <= max; got {n!r}.'
    )


def _in_out_keys(
    key: str | Sequence[str] | None, inkey: str | Sequence[str] | None, outkey: str | Sequence[str] | None, op: str
) -> tuple[list[str], list[str]]:
    """Pairs of (inkey, outkey) for ops over several keys; an outkey may name its inkey as ``{key}``."""
    inkeys = _key_list(inkey or key, "key or inkey", op)
    outkeys = _key_list(outkey or key or inkeys, "outkey", op)
    if len(outkeys) != len(inkeys):
        raise ValueError(f"{op}: {len(inkeys)} inkeys {inkeys} but {len(outkeys)} outkeys {outkeys}.")
    return inkeys, [o.format(key=i) for o, i in zip(outkeys, inkeys)]


@pp_ops.register("choice")
def get_choice(
    n: str | int | Sequence[int] = "single",
    key: str | Sequence[str] | None = None,
    fewer_ok: bool = False,
    inkey: str | Sequence[str] | None = None,
    outkey: str | Sequence[str] | None = None,
) -> PPOp:
    """Picks the same random entries (along axis 0) of one or more keys, e.g. one of several captions.

    ``n="single"`` picks one entry and drops the leading axis; an int ``n`` picks that many
    distinct entries and ``[min, max]`` a random number in that range, both in their original
    order. With ``fewer_ok`` a shorter input gives all its entries instead of an error.
    ``key``/``inkey``/``outkey`` may be lists (the same indices are used for all); an outkey
    may contain ``{key}``, replaced by its inkey (``outkey="{key}_choice"``).
    """
    lo, hi = _parse_choice_n(n)
    inkeys, outkeys = _in_out_keys(key, inkey, outkey, "choice")

    def choice(data: Data) -> Data:
        out = dict(data)
        values = [tf.convert_to_tensor(require(out, k, "choice")) for k in inkeys]
        count = tf.shape(values[0], out_type=tf.int32)[0]
        checks = [
            tf.debugging.assert_equal(tf.shape(v, out_type=tf.int32)[0], count, message=f"choice: {k} length differs")
            for k, v in zip(inkeys[1:], values[1:])
        ]
        if not fewer_ok:
            checks.append(tf.debugging.assert_greater_equal(count, lo, message=f"choice: fewer than {lo} entries"))
        with tf.control_dependencies(checks):
            count = tf.identity(count)

        seed = next_seed(out)
        if seed is None:  # no per-example seed: fall back to a fresh stateful one
            seed = tf.random.uniform([2], maxval=2**31 - 1, dtype=tf.int64)
        pick_seed, size_seed = tf.unstack(tf.random.experimental.stateless_split(seed, num=2))

        if hi is None:
            index = tf.random.stateless_uniform([], pick_seed, minval=0, maxval=count, dtype=tf.int32)
            for ik, ok in zip(inkeys, outkeys):
                out[ok] = tf.gather(out[ik], index)
            return out

        order = tf.random.experimental.stateless_shuffle(tf.range(count), seed=pick_seed)
        size = hi if lo == hi else tf.random.stateless_uniform([], size_seed, minval=lo, maxval=hi + 1, dtype=tf.int32)
        indices = tf.sort(order[: tf.minimum(size, count)])  # keep the original order of what is picked
        for ik, ok in zip(inkeys, outkeys):
            picked = tf.gather(out[ik], indices)
            if lo == hi and not fewer_ok:
                picked = tf.ensure_shape(picked, [hi] + [None] * (picked.shape.rank - 1))
            out[ok] = picked
        return out

    return choice


@pp_ops.register("choice_no_replacement")
def get_choice_no_replacement(
    key: str | Sequence[str] | None = None,
    inkey: str | Sequence[str] | None = None,
    outkey: str | Sequence[str] | None = None,
) -> PPOp:
    """Picks one entry (along axis 0) of one or more keys, cycling through all entries over the epochs.

    An example with ``n`` entries (e.g. captions) gives each of them once in its first ``n``
    epochs, in a random order, then again in another order, and so on. The pick is a pure
    function of the example's ``_id`` and ``_epoch`` (both added by bv's training pipeline),
    so it needs no state and survives a resume; big_vision instead counts sightings in host
    memory. Keys work as in ``choice``.
    """
    inkeys, outkeys = _in_out_keys(key, inkey, outkey, "choice_no_replacement")

    def choice_no_replacement(data: Data) -> Data:
        missing = [k for k in ("_id", "_epoch") if k not in data]
        if missing:
            raise KeyError(
                f"choice_no_replacement needs the example's _id and _epoch (bv's input pipeline adds both); "
                f"the data has no {', '.join(missing)}."
            )
        out = dict(data)
        values = [tf.convert_to_tensor(require(out, k, "choice_no_replacement")) for k in inkeys]
        count = tf.shape(values[0], out_type=tf.int64)[0]
        checks = [tf.debugging.assert_positive(count, message="choice_no_replacement: no entries to pick from")]
        checks += [
            tf.debugging.assert_equal(tf.shape(v, out_type=tf.int64)[0], count, message=f"{k} length differs")
            for k, v in zip(inkeys[1:], values[1:])
        ]
        with tf.control_dependencies(checks):
            count = tf.identity(count)
        epoch = tf.cast(data["_epoch"], tf.int64)
        cycle, position = epoch // count, epoch % count
        seed = tf.stack([tf.cast(data["_id"], tf.int64), cycle])
        index = tf.random.experimental.stateless_shuffle(tf.range(count), seed=seed)[position]
        for ik, ok in zip(inkeys, outkeys):
            out[ok] = tf.gather(out[ik], index)
        return out

    return choice_no_replacement


# ---------------------------------------------------------------- lookup


def _read_mapping(mapping: str, npzkey: str, sep: str | None) -> tuple[list[Any], list[int]]:
    """Keys and int values from an ``.npz`` array or a text file (see :func:`get_lookup`)."""
    if not tf.io.gfile.exists(mapping):
        raise FileNotFoundError(f"lookup: mapping file {mapping!r} does not exist.")
    if mapping.endswith(".npz"):
        with tf.io.gfile.GFile(mapping, "rb") as f, np.load(f, allow_pickle=False) as npz:
            if npzkey not in npz:
                raise ValueError(f"lookup: {mapping!r} has no array {npzkey!r}; it has {sorted(npz.files)}.")
            keys = npz[npzkey].tolist()
        return keys, list(range(len(keys)))
    with tf.io.gfile.GFile(mapping, "r") as f:
        lines = f.read().splitlines()
    if sep is None:
        return lines, list(range(len(lines)))
    keys, values = [], []
    for lineno, line in enumerate(lines, 1):
        parts = line.rsplit(sep, 1)
        try:
            keys.append(parts[0])
            values.append(int(parts[1]))
        except (IndexError, ValueError):
            raise ValueError(f"lookup: line {lineno} of {mapping!r} is {line!r}; expected 'key{sep}integer'.") from None
    return keys, values


@pp_ops.register("lookup")
@inkey_outkey()
def get_lookup(
    mapping: str | Mapping[Any, int], npzkey: str = "fnames", sep: str | None = None, default: int = -1
) -> TensorFn:
    """Maps keys (usually strings) to ints through a table; keys not in it give ``default``.

    ``mapping`` is a dict literal, or a file: an ``.npz`` whose array ``npzkey`` lists the keys
    (each maps to its index), or a text file with one key per line (mapped to its line
    number, from 0) or, with ``sep``, lines ``key<sep>value``.
    """
    if isinstance(mapping, Mapping):
        keys, values = list(mapping), [int(v) for v in mapping.values()]
    elif isinstance(mapping, (str, os.PathLike)):
        keys, values = _read_mapping(os.fspath(mapping), npzkey, sep)
    else:
        raise ValueError(f"lookup: mapping must be a dict or a file path, got {type(mapping).__name__}.")
    if not keys:
        raise ValueError(f"lookup: the mapping {mapping!r} is empty.")
    table: list[tf.lookup.StaticHashTable] = []  # built once, on first use, outside any tf.function

    def lookup(x: tf.Tensor) -> tf.Tensor:
        if not table:
            with tf.init_scope():
                key_dtype = tf.string if isinstance(keys[0], (str, bytes)) else tf.int64  # TF has no int32 tables
                init = tf.lookup.KeyValueTensorInitializer(tf.constant(keys, key_dtype), tf.constant(values, tf.int64))
                table.append(tf.lookup.StaticHashTable(init, default_value=tf.constant(default, tf.int64)))
        return table[0].lookup(tf.cast(x, table[0].key_dtype) if x.dtype != table[0].key_dtype else x)

    return lookup
