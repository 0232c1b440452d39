"""Gradient accumulation: one optimizer step over a batch too large to fit, in equal microbatches.

For a loss that is a mean over examples, the mean of the microbatch gradients
is the gradient of the whole batch, so ``accumulate_grads`` is a drop-in
replacement for ``Task.grads`` that trades time for memory.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

GradFn = Callable[[Any, Any, Any], tuple[jax.Array, dict[str, jax.Array], Any]]


def split_microbatches(batch: Any, num_microbatches: int) -> Any:
    """Reshapes every leaf ``[B, ...]`` of ``batch`` to ``[num_microbatches, B // num_microbatches, ...]``.

    Microbatch ``i`` holds examples ``i, i + n, i + 2n, ...``: with the batch
    split over devices along its first axis, each device then gives every
    microbatch the same number of its own examples, so no data moves between
    devices.
    """
    if isinstance(num_microbatches, bool) or not isinstance(num_microbatches, (int, np.integer)):
        raise ValueError(f"num_microbatches must be a positive integer, got {num_microbatches!r}.")
    if num_microbatches < 1:
        raise ValueError(f"num_microbatches must be a positive integer, got {num_microbatches}.")
    leaves = jax.tree_util.tree_leaves(batch)
    if not leaves:
        raise ValueError("The batch has no arrays to split into microbatches.")
    sizes = {np.shape(x)[0] if np.ndim(x) else None for x in leaves}
    if len(sizes) != 1 or None in sizes:
        raise ValueError(
            f"Every array of the batch needs the same leading (batch) axis to split it into microbatches; "
            f"got leading sizes {sorted(map(str, sizes))}."
        )
    size = int(sizes.pop())  # type: ignore[arg-type]
    if size % num_microbatches:
        raise ValueError(
            f"A batch of {size} examples cannot be split into {num_microbatches} equal microbatches. "
            f"Choose a batch size divisible by {num_microbatches}, or a number of microbatches that divides {size}."
        )
    per = size // num_microbatches

    def split(x: Any) -> Any:
        x = jnp.asarray(x)
        return jnp.swapaxes(x.reshape(per, num_microbatches, *x.shape[1:]), 0, 1)

    return jax.tree.map(split, batch)


def accumulate_grads(
    grad_fn: GradFn, params: Any, batch: Any, rng: Any, num_microbatches: int
) -> tuple[jax.Array, dict[str, jax.Array], Any]:
    """``grad_fn(params, batch, rng) -> (loss, metrics, grads)`` over ``num_microbatches`` microbatches.

    Returns the mean loss, mean metrics and mean gradients; the sums are kept
    in float32 whatever the gradients' dtype, which they get back at the end.
    Microbatch ``i`` gets ``fold_in(rng, i)``; with one microbatch ``grad_fn``
    is called on the whole batch with ``rng`` itself, so a run without
    accumulation is unchanged. Runs as one ``lax.scan``: ``grad_fn`` is traced once.
    """
    micro = split_microbatches(batch, num_microbatches)
    if num_microbatches == 1:
        return grad_fn(params, batch, rng)

    def rng_for(i: jax.Array) -> Any:
        return None if rng is None else jax.random.fold_in(rng, i)

    first = jax.tree.map(lambda x: x[0], micro)
    out_shapes = jax.eval_shape(grad_fn, params, first, rng_for(jnp.int32(0)))
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32), out_shapes)

    def body(total: Any, inputs: tuple[jax.Array, Any]) -> tuple[Any, None]:
        i, microbatch = inputs
        out = grad_fn(params, microbatch, rng_for(i))
        return jax.tree.map(lambda t, x: t + x.astype(jnp.float32), total, out), None

    total, _ = jax.lax.scan(body, zeros, (jnp.arange(num_microbatches, dtype=jnp.int32), micro))

    def mean(t: jax.Array, shape: jax.ShapeDtypeStruct) -> jax.Array:
        m = t / num_microbatches
        return m.astype(shape.dtype) if jnp.issubdtype(shape.dtype, jnp.floating) else m

    loss, metrics, grads = jax.tree.map(mean, total, out_shapes)
    return loss, metrics, grads
