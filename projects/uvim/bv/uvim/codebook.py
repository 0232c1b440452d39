"""The stage-I codebook: nearest-codeword quantization, its moving-average updates and dead-code restarts.

big_vision's UViM trains the dictionary as the VQ-VAE paper's appendix does, not by
gradient: each step adds the batch's per-codeword counts and sums of the (standardised)
encoder outputs to discounted running totals,

    counts <- momentum * counts + batch_counts
    sums   <- momentum * sums   + batch_sums

and a codeword is ``sums / counts``, L2-normalised. The encoder is pulled towards its
codewords by the straight-through estimator and, optionally, a commitment loss
(``w_commitment``; big_vision's UViM configs set it to 0). A codeword whose discounted
count falls below ``min_count`` (about 500 steps unused at momentum 0.995) is dead: it is
replaced by a slightly perturbed copy of the most used codeword, the two sharing that
codeword's count and sum equally, until none is dead.

Everything here is a pure function of arrays, so it runs inside the jitted train step and
is tested on hand-made cases.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

PERTURB = 1e-3  # relative jitter of a restarted codeword, so that the two copies can drift apart


class CodebookState(NamedTuple):
    """The running totals: ``dictionary`` [K, D] (discounted sums), ``counts`` [K] (discounted counts)."""

    dictionary: jax.Array
    counts: jax.Array


def codewords(state: CodebookState) -> jax.Array:
    """The unit-norm codewords [K, D]: each entry's mean encoding, normalised."""
    e = state.dictionary / state.counts[:, None]
    return e / jnp.linalg.norm(e, axis=-1, keepdims=True)


def quantize(x: jax.Array, e: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Nearest codeword of each vector of ``x`` [..., D] among ``e`` [K, D] (Euclidean).

    Returns ``(x_q, idx)``: ``x_q`` equals ``e[idx]`` in value, with the straight-through
    gradient of ``x`` (the decoder's gradient flows to the encoder unchanged).
    """
    dist = jnp.sum(x * x, axis=-1, keepdims=True) - 2 * x @ e.T + jnp.sum(e * e, axis=-1)
    idx = jnp.argmin(dist, axis=-1)
    x_q = x + jax.lax.stop_gradient(e[idx] - x)
    return x_q, idx


def batch_statistics(x: jax.Array, idx: jax.Array, dict_size: int) -> tuple[jax.Array, jax.Array]:
    """Per-codeword counts [K] and sums of the vectors assigned to it [K, D], over every vector of the batch."""
    x = jax.lax.stop_gradient(x).reshape(-1, x.shape[-1])
    idx = idx.reshape(-1)
    counts = jnp.zeros((dict_size,), jnp.float32).at[idx].add(1.0)
    sums = jnp.zeros((dict_size, x.shape[-1]), x.dtype).at[idx].add(x)
    return counts, sums


def ema_update(state: CodebookState, counts: jax.Array, sums: jax.Array, momentum: float) -> CodebookState:
    """Discounts the running totals by ``momentum`` and adds the batch's."""
    return CodebookState(state.dictionary * momentum + sums, state.counts * momentum + counts)


def restart_dead_codes(state: CodebookState, rng: jax.Array, min_count: float) -> tuple[CodebookState, jax.Array]:
    """Replaces each codeword whose count is below ``min_count`` by a split of the most used one.

    One split: the least used entry becomes the most used entry's sum times a random factor
    in ``[1 - PERTURB, 1 + PERTURB]`` (per dimension); both then get half of that entry's
    count and sum. Repeated while an entry is below ``min_count`` (at most K times). Returns
    the new state and the number of restarts.
    """
    k = state.counts.shape[0]

    def dead(carry: tuple[CodebookState, jax.Array, jax.Array]) -> jax.Array:
        s, _, n = carry
        return jnp.any(s.counts < min_count) & (n < k)

    def split(carry: tuple[CodebookState, jax.Array, jax.Array]) -> tuple[CodebookState, jax.Array, jax.Array]:
        s, key, n = carry
        key, sub = jax.random.split(key)
        e, c = s.dictionary, s.counts
        i_max, i_min = jnp.argmax(c), jnp.argmin(c)
        jitter = jax.random.uniform(sub, (e.shape[1],), e.dtype, 1.0 - PERTURB, 1.0 + PERTURB)
        e = e.at[i_min].set(e[i_max] * jitter / 2).at[i_max].set(e[i_max] / 2)
        half = c[i_max] / 2
        c = c.at[i_min].set(half).at[i_max].set(half)
        return CodebookState(e, c), key, n + 1

    state, _, restarts = jax.lax.while_loop(dead, split, (state, rng, jnp.int32(0)))
    return state, restarts


def usage_metrics(counts: jax.Array) -> dict[str, jax.Array]:
    """Code usage of one batch from its per-codeword counts [K].

    ``codebook_zeros_ratio``: the fraction of codewords unused in the batch;
    ``codebook_max_ratio``: the share of the most used codeword;
    ``codebook_perplexity``: exp of the entropy of the batch's code distribution (K when
    every codeword is used equally, 1 when one codeword takes everything).
    """
    total = jnp.maximum(jnp.sum(counts), 1.0)
    p = counts / total
    entropy = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0))
    return {
        "codebook_zeros_ratio": jnp.mean((counts == 0).astype(jnp.float32)),
        "codebook_max_ratio": jnp.max(counts) / total,
        "codebook_perplexity": jnp.exp(entropy),
    }
