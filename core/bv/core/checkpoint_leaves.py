"""How a checkpoint stores each leaf of the training state, and the record that describes it.

Dtypes safetensors cannot hold (bfloat16 and the other ml_dtypes, complex128) are stored
as a same-width unsigned-integer view of their bytes, or as raw bytes, so they come back
bit for bit. Typed PRNG keys are stored as their key data and rewrapped on restore. Arrays
spread over several processes are gathered by all of them first.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from bv.core import tree

# Dtypes safetensors.numpy stores as themselves; any other dtype is stored as raw bits.
_NATIVE_DTYPES = frozenset(
    np.dtype(t)
    for t in (
        np.float64,
        np.float32,
        np.float16,
        np.int64,
        np.int32,
        np.int16,
        np.int8,
        np.uint64,
        np.uint32,
        np.uint16,
        np.uint8,
        np.bool_,
        np.complex64,
    )
)
_UINT_OF_WIDTH: dict[int, np.dtype[Any]] = {
    1: np.dtype(np.uint8),
    2: np.dtype(np.uint16),
    4: np.dtype(np.uint32),
    8: np.dtype(np.uint64),
}

# How a leaf's bytes sit in the safetensors file.
_NATIVE = "native"  # the array itself
_UINT_VIEW = "uint_view"  # a same-width unsigned-integer view (bfloat16 -> uint16)
_BYTES = "bytes"  # uint8 with an extra trailing axis of the item size (complex128)
_PRNG_KEY = "prng_key"  # the uint32 key data of a typed jax PRNG key


@dataclasses.dataclass(frozen=True)
class Leaf:
    """What a checkpoint records about one leaf."""

    name: str
    dtype: str  # the true dtype: "float32", "bfloat16", "key<fry>", ...
    shape: tuple[int, ...]  # the logical shape (a typed key array's shape, without the key data axis)
    encoding: str = _NATIVE
    impl: str | None = None  # the PRNG implementation of a typed key

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
    named = tree.flatten_with_names(state)
    treedef = jax.tree_util.tree_structure(state)
    seen: set[str] = set()
    for name, _ in named:
        if name in seen:
            raise ValueError(f"Two leaves of the {what} are both named {name!r}; checkpoint leaf names must be unique.")
        if name == "__metadata__":
            raise ValueError(f"A leaf of the {what} is named '__metadata__', which safetensors reserves.")
        seen.add(name)
    return named, treedef


def encode_state(state: Any) -> tuple[list[Leaf], dict[str, np.ndarray]]:
    named, _ = flatten_named(state, what="state")
    leaves, arrays = [], {}
    for name, value in named:
        leaf, array = encode(name, value)
        leaves.append(leaf)
        arrays[name] = array
    return leaves, arrays


def to_host(name: str, value: Any) -> np.ndarray:
    if isinstance(value, jax.Array) and not value.is_fully_addressable:
        # Spread over several processes: every process takes part in gathering the whole array.
        return np.asarray(multihost_utils.process_allgather(value, tiled=True))
    return np.asarray(jax.device_get(value))


def encode(name: str, value: Any) -> tuple[Leaf, np.ndarray]:
    """The record and the safetensors-storable array for one leaf."""
    if is_prng_key(value):
        data = np.asarray(to_host(name, jax.random.key_data(value)), order="C")
        impl = str(jax.random.key_impl(value))
        return Leaf(name, str(value.dtype), tuple(value.shape), _PRNG_KEY, impl), data
    array = np.asarray(to_host(name, value), order="C")
    if array.dtype.kind in "OUSMm" or array.dtype.fields is not None:
        raise TypeError(
            f"Leaf {name!r} is a {type(value).__name__} of dtype {array.dtype}; a checkpoint's state holds numeric "
            "arrays, PRNG keys and numbers only. Put strings and other values in `metadata`."
        )
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    leaf = Leaf(name, array.dtype.name, tuple(array.shape))
    if array.dtype in _NATIVE_DTYPES:
        return leaf, array
    width = array.dtype.itemsize
    if width in _UINT_OF_WIDTH:
        return dataclasses.replace(leaf, encoding=_UINT_VIEW), array.view(_UINT_OF_WIDTH[width])
    raw = array.reshape(-1).view(np.uint8).reshape(array.shape + (width,))
    return dataclasses.replace(leaf, encoding=_BYTES), raw


def _dtype(name: str) -> np.dtype:
    try:
        return np.dtype(name)
    except TypeError:
        raise TypeError(f"The checkpoint holds a leaf of dtype {name!r}, which this numpy/ml_dtypes does not know.")


def decode(leaf: Leaf, stored: np.ndarray, wrap_keys: bool = True) -> Any:
    """Inverse of :func:`encode`: the leaf's value with its true dtype (a jax key array for typed keys)."""
    if leaf.encoding == _PRNG_KEY:
        return jax.random.wrap_key_data(jnp.asarray(stored), impl=leaf.impl) if wrap_keys else stored
    if leaf.encoding == _NATIVE:
        return stored
    if leaf.encoding == _UINT_VIEW:
        return stored.view(_dtype(leaf.dtype))
    if leaf.encoding == _BYTES:
        return np.asarray(stored, order="C").view(_dtype(leaf.dtype)).reshape(leaf.shape)
    raise ValueError(f"Leaf {leaf.name!r} has an unknown encoding {leaf.encoding!r}; was it written by a newer bv?")


def expected_leaf(name: str, like: Any) -> Leaf:
    if is_prng_key(like):
        return Leaf(name, str(like.dtype), tuple(like.shape), _PRNG_KEY)
    if hasattr(like, "shape") and hasattr(like, "dtype"):
        return Leaf(name, np.dtype(like.dtype).name, tuple(like.shape))
    array = np.asarray(like)
    return Leaf(name, array.dtype.name, tuple(array.shape))
