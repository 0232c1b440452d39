"""Compiles a pp string such as ``"decode|resize(224)|value_range(-1, 1)"`` into one function.

Each ``|``-separated part names a registered pp op with Python-literal arguments; the
result applies the ops left to right to a dict of TF tensors, eagerly or inside
``tf.data.Dataset.map``.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

import tensorflow as tf

from bv.core.registry import UnknownNameError, parse_call, pp_ops
from bv.pp.utils import RNG_KEY, Data, PPOp

logger = logging.getLogger(__name__)


def _build_op(spec: str, pipeline: str) -> tuple[str, PPOp]:
    """Parses and instantiates one op, with errors that name the op and the whole pipeline."""
    try:
        name = parse_call(spec)[0]
        return name, pp_ops.call(spec)
    except UnknownNameError as e:
        raise UnknownNameError(f"{e} (in pp pipeline {pipeline!r})") from None
    except (TypeError, ValueError) as e:
        hint = ""
        try:
            name = parse_call(spec)[0]
            hint = f" Its arguments are {name}{_plain_signature(pp_ops.get(name))}."
        except (ValueError, KeyError):
            pass
        raise ValueError(f"Bad pp op {spec.strip()!r} in pipeline {pipeline!r}: {str(e).rstrip('.')}.{hint}") from e


def _plain_signature(factory: Any) -> inspect.Signature:
    """The factory's signature without type annotations, which read badly in an error message."""
    sig = inspect.signature(factory)
    params = [p.replace(annotation=inspect.Parameter.empty) for p in sig.parameters.values()]
    return sig.replace(parameters=params, return_annotation=inspect.Signature.empty)


def get_preprocess_fn(pp_pipeline: str | None, log_data: bool = False) -> PPOp:
    """Returns the ``dict -> dict`` function described by ``pp_pipeline``; empty or None is the identity.

    Ops are built (and their arguments checked) now, not when data arrives. The seed
    ``data["_rng"]`` that random ops consume is removed from the output. With ``log_data``
    the structure of the data before and after is logged the first time the function runs
    (once per tf.data trace).
    """
    ops: list[tuple[str, PPOp]] = []
    for spec in (pp_pipeline or "").split("|"):
        if spec.strip():  # tolerate "a||b" and a trailing "|"
            ops.append(_build_op(spec, pp_pipeline or ""))

    logged = not log_data

    def preprocess(data: Data) -> Data:
        nonlocal logged
        if not isinstance(data, dict):
            raise TypeError(f"A pp function takes a dict of tensors, got {type(data).__name__}.")
        if not logged:
            logger.info("Data before pp %r:\n%s", pp_pipeline, _describe(data))
        data = dict(data)
        for name, op in ops:
            with tf.name_scope(name):
                data = op(data)
            if not isinstance(data, dict):
                raise TypeError(f"pp op {name!r} returned {type(data).__name__}, expected a dict.")
        data.pop(RNG_KEY, None)
        if not logged:
            logger.info("Data after pp %r:\n%s", pp_pipeline, _describe(data))
            logged = True
        return data

    return preprocess


def _describe(data: Any, prefix: str = "") -> str:
    """One line per leaf: ``/``-joined name, dtype and shape (values would be too long to log)."""
    if isinstance(data, dict):
        return "\n".join(_describe(v, f"{prefix}{k}/") for k, v in data.items())
    dtype = getattr(data, "dtype", None)
    kind = getattr(dtype, "name", type(data).__name__)
    return f"  {prefix.rstrip('/')}: {kind} {tuple(getattr(data, 'shape', ()))}"
