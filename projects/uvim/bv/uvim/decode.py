"""Sampling stage II's codes: greedy, temperature and top-k, under ``jit``, with a fixed-length cache.

The image is encoded once; a key/value cache of ``seq_len`` positions is made for the
batch, and a ``lax.scan`` feeds the decoder one token per step (0 first, then the token
it just chose), so every step costs one position of attention and the whole loop is one
compiled program. Token 0 (the start token) is never sampled: codes are ``1..dict_size``.

:func:`decode_without_cache` runs the teacher-forced model on the growing prefix
instead; it is the reference the cached decoder must equal (``decode_test.py``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from bv.core.config import ConfigError
from bv.uvim.vtt import VTT

NEG_INF = -1e9


@dataclasses.dataclass(frozen=True)
class SamplingOptions:
    """``temperature`` 0 is greedy (argmax); ``top_k`` 0 samples from the whole vocabulary."""

    temperature: float = 0.0
    top_k: int = 0

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ConfigError(f"Sampling temperature must be >= 0 (0: greedy), got {self.temperature}.")
        if self.top_k < 0:
            raise ConfigError(f"Sampling top_k must be >= 0 (0: no limit), got {self.top_k}.")


def choose(logits: jax.Array, rng: jax.Array, options: SamplingOptions) -> jax.Array:
    """One token per row of ``logits`` [B, V], never token 0."""
    logits = logits.at[:, 0].set(NEG_INF)
    if options.temperature == 0:
        return jnp.argmax(logits, axis=-1)
    logits = logits / options.temperature
    if options.top_k:
        top, idx = jax.lax.top_k(logits, min(options.top_k, logits.shape[-1] - 1))
        pick = jax.random.categorical(rng, top, axis=-1)
        return jnp.take_along_axis(idx, pick[:, None], axis=-1)[:, 0]
    return jax.random.categorical(rng, logits, axis=-1)


def sample(
    model: VTT, params: Any, images: jax.Array, rng: jax.Array, options: SamplingOptions = SamplingOptions()
) -> tuple[jax.Array, jax.Array]:
    """``(codes [B, seq_len], logits [B, seq_len, vocab])``: each position's code and the logits it was drawn from."""
    encoded = model.apply({"params": params}, images, method=VTT.encode)
    b, length = images.shape[0], model.seq_len
    zeros = jnp.zeros((b, length), jnp.int32)
    _, init = model.apply({"params": params}, encoded, zeros, decode=True, method=VTT.decode, mutable=["cache"])

    def step(carry: tuple[Any, jax.Array], key: jax.Array) -> tuple[tuple[Any, jax.Array], tuple[jax.Array, jax.Array]]:
        cache, token = carry
        logits, vars_out = model.apply(
            {"params": params, "cache": cache},
            encoded,
            token[:, None],
            decode=True,
            method=VTT.decode,
            mutable=["cache"],
        )
        logits = logits[:, 0]
        nxt = choose(logits, key, options).astype(jnp.int32)
        return (vars_out["cache"], nxt), (nxt, logits)

    keys = jax.random.split(rng, length)
    _, (codes, logits) = jax.lax.scan(step, (init["cache"], jnp.zeros((b,), jnp.int32)), keys)
    return codes.T, jnp.swapaxes(logits, 0, 1)


def decode_without_cache(
    model: VTT, params: Any, images: jax.Array, rng: jax.Array, options: SamplingOptions = SamplingOptions()
) -> tuple[jax.Array, jax.Array]:
    """The same as :func:`sample`, recomputing the whole prefix at every position (no cache; slow)."""
    b, length = images.shape[0], model.seq_len
    codes = jnp.zeros((b, length), jnp.int32)
    keys = jax.random.split(rng, length)
    all_logits = []
    for t in range(length):
        out: Any = model.apply({"params": params}, images, codes)
        logits = out[:, t]  # position t sees codes[:, :t] only
        codes = codes.at[:, t].set(choose(logits, keys[t], options).astype(jnp.int32))
        all_logits.append(logits)
    return codes, jnp.stack(all_logits, axis=1)
