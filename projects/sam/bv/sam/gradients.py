"""The SAM and GSAM gradient of a batch, from any ``grads(params, batch, rng)`` function.

SAM (Foret et al., 2021): with ``g`` the gradient at ``w``, the gradient the optimizer
receives is taken at ``w + rho * g / ||g||``, the worst point of the rho-ball to first
order. ``adaptive`` scales each coordinate of that step by ``|w|`` (big_vision's
``adaptive_perturbation``: ``w + rho * |w| * g / ||g||``), so layers of different
scales are perturbed alike.

GSAM (Zhuang et al., 2022) also descends on the surrogate gap ``h = f(w_p) - f(w)``
without changing the perturbed loss: of the clean gradient ``g``, it removes the part
orthogonal to the perturbed gradient ``g_p`` (weighted by ``alpha``):

    g_gsam = g_p - alpha * (g - <g, g_p/|g_p|> g_p/|g_p|)          (minimize_fp=True, the paper's)
    g_gsam = g + alpha * (g_p - <g_p, g/|g|> g/|g|)                 (minimize_fp=False)

Norms and dot products run over every trained parameter at once, in float32, on
however the parameters are sharded (XLA adds the reductions over devices). Frozen
parameters are neither perturbed nor counted in the norms; their gradient is zero.
"""

from __future__ import annotations

from typing import Any, Callable, Collection

import jax
import jax.numpy as jnp

from bv.core.accumulate import accumulate_grads
from bv.core.tree import map_with_names

Params = Any
GradFn = Callable[[Params, Any, Any], tuple[jax.Array, dict[str, jax.Array], Params]]


def tree_vdot(a: Params, b: Params) -> jax.Array:
    """``<a, b>`` over all leaves, in float32."""
    products = jax.tree.leaves(jax.tree.map(lambda x, y: jnp.vdot(x.astype(jnp.float32), y.astype(jnp.float32)), a, b))
    if not products:
        return jnp.float32(0)
    total = products[0]
    for product in products[1:]:  # in leaf order, so the same tree always sums the same way
        total = total + product
    return total


def tree_norm(tree: Params) -> jax.Array:
    """The L2 norm of all leaves together, in float32."""
    return jnp.sqrt(tree_vdot(tree, tree))


def perturb(params: Params, grads: Params, rho: jax.Array, *, adaptive: bool = False, eps: float = 1e-12) -> Params:
    """``params + rho * g / (||g|| + eps)`` (times ``|params|`` when ``adaptive``), in each leaf's dtype."""
    scale = rho / (tree_norm(grads) + eps)

    def step(p: jax.Array, g: jax.Array) -> jax.Array:
        e = scale * g.astype(jnp.float32)
        if adaptive:
            e = jnp.abs(p.astype(jnp.float32)) * e
        return (p.astype(jnp.float32) + e).astype(p.dtype)

    return jax.tree.map(step, params, grads)


def _unit(tree: Params, eps: float) -> Params:
    scale = 1.0 / (tree_norm(tree) + eps)
    return jax.tree.map(lambda x: scale * x.astype(jnp.float32), tree)


def gsam_combine(
    clean: Params, perturbed: Params, alpha: float, *, minimize_fp: bool = True, eps: float = 1e-12
) -> Params:
    """GSAM's gradient from the clean and the perturbed gradient (see the module's docstring)."""
    if minimize_fp:
        base, other = perturbed, clean
        sign = -1.0
    else:
        base, other = clean, perturbed
        sign = 1.0
    # The part of `other` orthogonal to `base` (for minimize_fp: of the clean gradient to the perturbed one).
    unit = _unit(base, eps)
    along = tree_vdot(other, unit)
    residual = jax.tree.map(lambda o, u: o.astype(jnp.float32) - along * u, other, unit)
    return jax.tree.map(lambda b, r: (b.astype(jnp.float32) + sign * alpha * r).astype(b.dtype), base, residual)


def zero_frozen(grads: Params, frozen: Collection[str]) -> Params:
    """``grads`` with the leaves named in ``frozen`` replaced by zeros."""
    if not frozen:
        return grads
    return map_with_names(lambda name, g: jnp.zeros_like(g) if name in frozen else g, grads)


def sam_grads(
    grad_fn: GradFn,
    params: Params,
    batch: Any,
    rng: Any,
    rho: jax.Array,
    *,
    alpha: float | None = None,
    minimize_fp: bool = True,
    adaptive: bool = False,
    eps: float = 1e-12,
    num_microbatches: int = 1,
    frozen: Collection[str] = (),
) -> tuple[jax.Array, dict[str, jax.Array], Params]:
    """The clean loss and metrics of ``batch`` and its SAM gradient (GSAM's with ``alpha`` not None).

    Both passes see the same examples and ``rng`` (the same dropout); with
    ``num_microbatches > 1`` each pass accumulates over the microbatches, so the
    perturbation comes from the whole batch's gradient, as without accumulation.
    Adds the metrics ``sam_rho`` and ``sam_gap`` (perturbed minus clean loss).
    """
    loss, metrics, clean = accumulate_grads(grad_fn, params, batch, rng, num_microbatches)
    clean = zero_frozen(clean, frozen)
    # A barrier: the perturbed params are materialised before the second pass, which then compiles as the first.
    at = jax.lax.optimization_barrier(perturb(params, clean, rho, adaptive=adaptive, eps=eps))
    perturbed_loss, _, perturbed = accumulate_grads(grad_fn, at, batch, rng, num_microbatches)
    perturbed = zero_frozen(perturbed, frozen)
    if alpha is not None:
        grads = gsam_combine(clean, perturbed, alpha, minimize_fp=minimize_fp, eps=eps)
    else:
        grads = perturbed
    metrics = {**metrics, "sam_rho": jnp.asarray(rho, jnp.float32), "sam_gap": perturbed_loss - loss}
    return loss, metrics, grads
