"""Schedule values at chosen steps, checked against numbers worked out by hand."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bv.core.schedules import DECAY_TYPES, make_schedule


def values(fn, steps):
    return [float(fn(s)) for s in steps]


def test_cosine_without_warmup():
    fn = make_schedule(10, base=2.0, decay_type="cosine")
    np.testing.assert_allclose(values(fn, [0, 5, 10]), [2.0, 1.0, 0.0], atol=1e-6)
    # A quarter of the way: 0.5 * (1 + cos(pi / 4)).
    np.testing.assert_allclose(float(fn(2.5)), 2.0 * 0.5 * (1 + math.cos(math.pi / 4)), rtol=1e-6)


def test_cosine_with_warmup_starts_after_warmup():
    fn = make_schedule(10, base=1.0, decay_type="cosine", warmup_steps=2)
    # Warmup ramps from 0; the decay then spans steps 2..10.
    np.testing.assert_allclose(values(fn, [0, 1, 2, 6, 10]), [0.0, 0.5, 1.0, 0.5, 0.0], atol=1e-6)


def test_cosine_is_the_default():
    np.testing.assert_allclose(float(make_schedule(4)(2)), 0.5, atol=1e-6)


def test_linear_and_its_end_value():
    fn = make_schedule(10, decay_type="linear")
    np.testing.assert_allclose(values(fn, [0, 3, 10]), [1.0, 0.7, 0.0], atol=1e-6)
    fn = make_schedule(10, decay_type="linear", linear_end=0.1)
    np.testing.assert_allclose(values(fn, [3, 10]), [0.1 + 0.9 * 0.7, 0.1], atol=1e-6)
    # `end` wins over `linear_end`, as in big_vision.
    fn = make_schedule(10, decay_type="linear", linear_end=0.1, end=0.5)
    np.testing.assert_allclose(float(fn(10)), 0.5, atol=1e-6)


def test_polynomial_power():
    fn = make_schedule(10, base=4.0, decay_type="polynomial", power=2)
    np.testing.assert_allclose(values(fn, [0, 5, 8]), [4.0, 1.0, 4.0 * 0.04], rtol=1e-6)


def test_rsqrt():
    fn = make_schedule(1000, decay_type="rsqrt", timescale=100)
    np.testing.assert_allclose(values(fn, [0, 300, 800]), [1.0, 0.5, 1 / 3], rtol=1e-6)
    # With warmup the decay starts at the end of warmup; during warmup the flat part is ramped.
    fn = make_schedule(1000, decay_type="rsqrt", timescale=100, warmup_steps=10)
    np.testing.assert_allclose(values(fn, [5, 10, 310]), [0.5, 1.0, 0.5], rtol=1e-6)
    # A shift continues a schedule as if `shift` steps had already passed.
    fn = make_schedule(1000, decay_type="rsqrt", timescale=100, shift=300)
    np.testing.assert_allclose(values(fn, [0, 500]), [0.5, 1 / 3], rtol=1e-6)


def test_rsqrt_default_timescale_is_10k():
    np.testing.assert_allclose(float(make_schedule(100_000, decay_type="rsqrt")(30_000)), 0.5, rtol=1e-6)


def test_stair_changes_at_the_boundary_step():
    fn = make_schedule(10, base=2.0, decay_type="stair", steps=[3, 6], mults=[0.1, 0.01])
    np.testing.assert_allclose(values(fn, [0, 2, 3, 5, 6, 9]), [2.0, 2.0, 0.2, 0.2, 0.02, 0.02], rtol=1e-6)


def test_constant_with_warmup_and_cooldown():
    fn = make_schedule(10, base=0.3, decay_type="constant", warmup_steps=4, cooldown_steps=4)
    expected = [0.0, 0.075, 0.3, 0.3, 0.225, 0.15, 0.075, 0.0]
    np.testing.assert_allclose(values(fn, [0, 1, 4, 6, 7, 8, 9, 10]), expected, atol=1e-6)


def test_cooldown_on_top_of_linear_decay():
    fn = make_schedule(10, decay_type="linear", cooldown_steps=2)
    # Step 9: linear gives 0.1, cooldown halves it.
    np.testing.assert_allclose(values(fn, [7, 9, 10]), [0.3, 0.05, 0.0], atol=1e-6)


@pytest.mark.parametrize("decay_type", DECAY_TYPES)
def test_jit_with_a_traced_step_matches_eager(decay_type):
    kw = dict(steps=[3], mults=[0.5]) if decay_type == "stair" else {}
    fn = make_schedule(20, decay_type=decay_type, warmup_steps=2, cooldown_steps=3, **kw)
    jitted = jax.jit(fn)
    for step in [0, 1, 3, 7, 18, 20]:
        out = jitted(jnp.int32(step))
        assert out.dtype == jnp.float32
        np.testing.assert_allclose(float(out), float(fn(step)), rtol=1e-6)


def test_tiny_runs_stay_finite():
    # Eval-only and debug runs have 0 or 1 steps and may keep their warmup.
    for total, warmup in [(0, 0), (1, 0), (1, 1), (1, 5)]:
        fn = make_schedule(total, warmup_steps=warmup)
        assert np.isfinite(float(fn(0)))


def test_unknown_decay_type_lists_valid_ones():
    with pytest.raises(ValueError, match="Unknown decay_type 'cosin'.*cosine, linear, polynomial, rsqrt, stair"):
        make_schedule(10, decay_type="cosin")


def test_unresolved_duration_is_a_clear_error():
    with pytest.raises(TypeError, match="warmup_epochs.*converted to `warmup_steps`"):
        make_schedule(10, warmup_epochs=1)
    with pytest.raises(TypeError, match="Unknown schedule option 'pwer'"):
        make_schedule(10, decay_type="polynomial", pwer=2)


def test_invalid_durations_and_stairs():
    with pytest.raises(ValueError, match="warmup_steps \\(10\\) must be smaller than total_steps \\(10\\)"):
        make_schedule(10, warmup_steps=10)
    with pytest.raises(ValueError, match="non-negative integer"):
        make_schedule(10, warmup_steps=2.5)
    with pytest.raises(ValueError, match="one mult per step"):
        make_schedule(10, decay_type="stair", steps=[3, 6], mults=[0.1])
    with pytest.raises(ValueError, match="increasing"):
        make_schedule(10, decay_type="stair", steps=[6, 3], mults=[0.1, 0.01])
