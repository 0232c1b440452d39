"""How a checkpoint stores each leaf of the training state, and the record that describes it.

Arrays are handed to Orbax as they are: a sharded ``jax.Array`` stays sharded, so each
process writes only the shards it holds and nothing is gathered. Numpy arrays and Python
numbers (the same value on every process) become numpy arrays. Typed PRNG keys are stored
as their key data and rewrapped on restore. The record (:class:`Leaf`) keeps each leaf's
true dtype and shape, which is how a restore checks that a checkpoint fits before it reads
any array.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from bv.core import tree

_NATIVE = "native"  # the array itself
_PRNG_KEY = "prng_key"  # the uint32 key data of a typed jax PRNG key


@dataclasses.dataclass(frozen=True)
class Leaf:
    """What a checkpoint records about one leaf."""

    name: str
    dtype: str  # the true dtype: "float32", "bfloat16", "key<fry>", ...
    shape: tuple[int, ...]  # the logical shape (a typed key array's shape, without the key data axis)
    encoding: str = _NATIVE
    impl: str | None = None  # the PRNG implementation of a typed key

    @property
    def is_key(self) -> bool:
        return self.encoding == _PRNG_KEY

    def describe(self) -> str:
        return f"{self.dtype}[{','.join(map(str, self.shape))}]"

    def to_json(self) -> dict[str, Any]:
        record: dict[str, Any] = {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}
        if self.encoding != _NATIVE:
            record["encoding"] = self.encoding
        if self.impl is not None:
            record["impl"] = self.impl
        return record

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> Leaf:
        return cls(
            name=record["name"],
            dtype=record["dtype"],
            shape=tuple(record["shape"]),
            encoding=record.get("encoding", _NATIVE),
            impl=record.get("impl"),
        )


def is_prng_key(x: Any) -> bool:
    dtype = getattr(x, "dtype", None)
    return dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def flatten_named(state: Any, what: str) -> tuple[list[tuple[str, Any]], Any]:
    """The named leaves of ``state`` and its treedef; names must be unique and non-empty."""
    named = tree.flatten_with_names(state)
    treedef = jax.tree_util.tree_structure(state)
    seen: set[str] = set()
    for name, _ in named:
        if name in seen:
            raise ValueError(f"Two leaves of the {what} are both named {name!r}; checkpoint leaf names must be unique.")
        if not name or any(not part for part in name.split("/")):
            raise ValueError(f"A leaf of the {what} has the name {name!r}; checkpoints need names without empty parts.")
        seen.add(name)
    return named, treedef


def encode(name: str, value: Any) -> tuple[Leaf, Any]:
    """The record and the value Orbax stores for one leaf (never gathered across processes)."""
    if is_prng_key(value):
        impl = str(jax.random.key_impl(value))
        return Leaf(name, str(value.dtype), tuple(value.shape), _PRNG_KEY, impl), jax.random.key_data(value)
    if isinstance(value, jax.Array):
        return Leaf(name, np.dtype(value.dtype).name, tuple(value.shape)), value
    array = np.asarray(value)
    if array.dtype.kind in "OUSMm" or array.dtype.fields is not None:
        raise TypeError(
            f"Leaf {name!r} is a {type(value).__name__} of dtype {array.dtype}; a checkpoint's state holds numeric "
            "arrays, PRNG keys and numbers only. Put strings and other values in `metadata`."
        )
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    return Leaf(name, array.dtype.name, tuple(array.shape)), np.ascontiguousarray(array)


def stored_shape(leaf: Leaf) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of what is on disk for ``leaf`` (key data for typed keys)."""
    if leaf.is_key:
        data = jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0, impl=leaf.impl)))
        return leaf.shape + tuple(data.shape), np.dtype(data.dtype)
    return leaf.shape, dtype_of(leaf.dtype)


def dtype_of(name: str) -> np.dtype:
    try:
        return np.dtype(name)
    except TypeError:
        raise TypeError(f"The checkpoint holds a leaf of dtype {name!r}, which this numpy/ml_dtypes does not know.")


def decode(leaf: Leaf, stored: Any, wrap_keys: bool = True) -> Any:
    """Inverse of :func:`encode`: the leaf's value (a jax key array for typed keys, if ``wrap_keys``)."""
    if leaf.is_key:
        return jax.random.wrap_key_data(stored, impl=leaf.impl) if wrap_keys else stored
    if leaf.encoding != _NATIVE:
        raise ValueError(f"Leaf {leaf.name!r} has an unknown encoding {leaf.encoding!r}; was it written by a newer bv?")
    return stored


def expected_leaf(name: str, like: Any) -> Leaf:
    """The record a template leaf asks for (the PRNG implementation is not compared)."""
    if is_prng_key(like):
        return Leaf(name, str(like.dtype), tuple(like.shape), _PRNG_KEY)
    if hasattr(like, "shape") and hasattr(like, "dtype"):
        return Leaf(name, np.dtype(like.dtype).name, tuple(like.shape))
    array = np.asarray(like)
    return Leaf(name, array.dtype.name, tuple(array.shape))


def nest(named: list[tuple[str, Any]]) -> dict[str, Any]:
    """``[("a/b", x), ("a/c", y)]`` -> ``{"a": {"b": x, "c": y}}``."""
    out: dict[str, Any] = {}
    for name, value in named:
        *parents, last = name.split("/")
        node = out
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    return out
