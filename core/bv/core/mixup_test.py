"""Mixup: big_vision's definition (sorted Dirichlet weights over rolled copies), in the trainer's step."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bv.core.mixup import mix_batch, mixup


def test_mix_is_a_convex_combination_of_rolled_batches() -> None:
    x = jnp.arange(4 * 3, dtype=jnp.float32).reshape(4, 3)
    labels = jax.nn.one_hot(jnp.arange(4), 4)
    mixed_x, mixed_y = mixup(jax.random.PRNGKey(0), x, labels, p=0.5)
    a = float(mixed_y[0, 0])  # example 0 keeps weight a on itself, 1-a on example 3 (the roll by one)
    assert 0.5 <= a <= 1.0
    np.testing.assert_allclose(
        np.asarray(mixed_x), a * np.asarray(x) + (1 - a) * np.roll(np.asarray(x), 1, 0), rtol=1e-6
    )
    np.testing.assert_allclose(np.asarray(mixed_y).sum(axis=1), 1.0, rtol=1e-6)
    assert float(mixed_y[0, 3]) == pytest.approx(1 - a)


def test_three_way_and_per_example_mixing() -> None:
    labels = jax.nn.one_hot(jnp.arange(6), 6)
    (mixed,) = mixup(jax.random.PRNGKey(1), labels, p=1.0, n=3, per_example=True)
    weights = np.asarray(mixed)
    for b in range(6):  # example b = a0 * b + a1 * (b-1) + a2 * (b-2), a0 >= a1 >= a2
        a = [weights[b, (b - i) % 6] for i in range(3)]
        assert a[0] >= a[1] >= a[2] and sum(a) == pytest.approx(1.0, rel=1e-5)
    assert len({round(float(weights[b, b]), 6) for b in range(6)}) > 1  # one draw per example


def test_small_p_keeps_examples_nearly_intact_and_bad_options_fail() -> None:
    x = jax.random.normal(jax.random.PRNGKey(2), (8, 5))
    (mixed,) = mixup(jax.random.PRNGKey(3), x, p=1e-3)
    np.testing.assert_allclose(np.asarray(mixed), np.asarray(x), atol=1e-2)
    batch = {"image": x, "labels": jax.nn.one_hot(jnp.arange(8), 8)}
    with pytest.raises(ValueError, match="Unknown config.mixup options"):
        mix_batch(jax.random.PRNGKey(0), batch, {"p": 0.1, "alpha": 1})
    with pytest.raises(ValueError, match="has no"):
        mix_batch(jax.random.PRNGKey(0), batch, {"p": 0.1, "keys": ("image", "label")})
    with pytest.raises(ValueError, match="must be positive"):
        mixup(jax.random.PRNGKey(0), x, p=0.0)
