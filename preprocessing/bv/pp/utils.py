"""Shared plumbing for pp ops: which dict key an op reads and writes, and its random seed.

Two things every image op needs and that should be written once:

- ``key``/``inkey``/``outkey`` arguments, so the same op can work on any entry of the
  data dict (``resize(64, key="mask")``) or write its result under a new name.
- A per-op random seed taken from ``data["_rng"]``, so that random augmentations are a
  pure function of that seed and a resumed training run sees exactly the same examples.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable

import tensorflow as tf

Data = dict[str, Any]
PPOp = Callable[[Data], Data]

RNG_KEY = "_rng"
"""The data key holding an example's shape-[2] int32/int64 seed, added by the input pipeline."""


def require(data: Data, key: str, op: str) -> Any:
    """``data[key]``, or a KeyError that names the op and the keys the data has."""
    if key not in data:
        raise KeyError(f"pp op {op} reads data[{key!r}], but the data only has keys {sorted(data)}.")
    return data[key]


def next_seed(data: Data) -> tf.Tensor | None:
    """Takes a fresh stateless seed from ``data["_rng"]`` and advances that entry in place.

    The stored seed is split in two: one half is returned for the calling op, the other is
    written back, so each random op in a pipeline gets its own seed and none is ever reused.
    Returns None when the data carries no ``_rng``; the caller then uses stateful tf.random.
    """
    if RNG_KEY not in data:
        return None
    rng = tf.convert_to_tensor(data[RNG_KEY])
    if rng.dtype not in (tf.int32, tf.int64) or rng.shape.rank not in (None, 1):
        raise ValueError(
            f"data[{RNG_KEY!r}] must be a shape-[2] int32 or int64 seed tensor, got {rng.dtype.name} of shape {rng.shape}."
        )
    carry, op_seed = tf.unstack(tf.random.experimental.stateless_split(rng, num=2, alg="philox"), num=2)
    data[RNG_KEY] = carry
    return op_seed


def inkey_outkey(
    indefault: str = "image", outdefault: str = "image", *, with_seed: bool = False
) -> Callable[[Callable[..., Callable[..., Any]]], Callable[..., PPOp]]:
    """Turns a factory of single-tensor functions into a factory of ``dict -> dict`` pp ops.

    The decorated factory gains keyword arguments ``key`` (read and write the same entry),
    ``inkey`` and ``outkey`` (read one entry, write another), defaulting to ``indefault`` and
    ``outdefault``. With ``with_seed=True`` the tensor function is called as ``fn(x, seed)``,
    where ``seed`` comes from :func:`next_seed` (None without ``_rng`` in the data).
    """

    def decorator(factory: Callable[..., Callable[..., Any]]) -> Callable[..., PPOp]:
        op_name = factory.__name__.removeprefix("get_")

        @functools.wraps(factory)
        def make_op(
            *args: Any, key: str | None = None, inkey: str = indefault, outkey: str = outdefault, **kwargs: Any
        ) -> PPOp:
            read, write = (key, key) if key is not None else (inkey, outkey)
            fn = factory(*args, **kwargs)

            def op(data: Data) -> Data:
                if read not in data:
                    raise KeyError(
                        f"pp op {op_name} reads data[{read!r}], but the data only has keys {sorted(data)}. "
                        "Pass key=..., or inkey=.../outkey=..., to choose another entry."
                    )
                out = dict(data)
                x = out[read] if tf.is_tensor(out[read]) else tf.convert_to_tensor(out[read])  # numpy input
                out[write] = fn(x, next_seed(out)) if with_seed else fn(x)
                return out

            return op

        # Show the real arguments (the factory's plus the key ones) in help() and error messages.
        params = [p for p in inspect.signature(factory).parameters.values() if p.kind != p.VAR_KEYWORD]
        params += [
            inspect.Parameter("key", inspect.Parameter.KEYWORD_ONLY, default=None),
            inspect.Parameter("inkey", inspect.Parameter.KEYWORD_ONLY, default=indefault),
            inspect.Parameter("outkey", inspect.Parameter.KEYWORD_ONLY, default=outdefault),
        ]
        setattr(make_op, "__signature__", inspect.Signature(params))
        return make_op

    return decorator
