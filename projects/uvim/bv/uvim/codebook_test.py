"""The codebook's rules on hand-made cases, computed by hand."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bv.uvim import codebook
from bv.uvim.codebook import CodebookState


def test_quantize_picks_the_nearest_codeword_and_passes_the_gradient_straight_through() -> None:
    e = jnp.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    x = jnp.array([[0.9, 0.2], [0.1, -0.8], [-0.6, 0.5]])
    x_q, idx = codebook.quantize(x, e)
    # Squared distances of (0.1, -0.8): 1.45 to e0, 3.25 to e1, 1.85 to e2; of (-0.6, 0.5): 2.81, 0.61, 0.41.
    np.testing.assert_array_equal(idx, [0, 0, 2])
    np.testing.assert_allclose(x_q, e[np.asarray(idx)], atol=1e-7)
    grad = jax.grad(lambda x: jnp.sum(codebook.quantize(x, e)[0] * jnp.arange(6.0).reshape(3, 2)))(x)
    np.testing.assert_allclose(grad, jnp.arange(6.0).reshape(3, 2))


def test_moving_average_update_of_counts_and_sums() -> None:
    # Two codewords in 2-D; four vectors, three of them nearest codeword 0.
    state = CodebookState(dictionary=jnp.array([[2.0, 0.0], [0.0, 4.0]]), counts=jnp.array([2.0, 4.0]))
    x = jnp.array([[[1.0, 0.0], [3.0, 1.0]], [[1.0, -1.0], [0.0, 2.0]]])  # [batch 2, tokens 2, D 2]
    idx = jnp.array([[0, 0], [0, 1]])
    counts, sums = codebook.batch_statistics(x, idx, 2)
    np.testing.assert_array_equal(counts, [3.0, 1.0])
    np.testing.assert_array_equal(sums, [[5.0, 0.0], [0.0, 2.0]])
    new = codebook.ema_update(state, counts, sums, momentum=0.5)
    np.testing.assert_allclose(new.counts, [0.5 * 2 + 3, 0.5 * 4 + 1])  # [4, 3]
    np.testing.assert_allclose(new.dictionary, [[0.5 * 2 + 5, 0.0], [0.0, 0.5 * 4 + 2]])  # [[6, 0], [0, 4]]
    # A codeword is the mean (sum / count), normalised: both point along an axis.
    np.testing.assert_allclose(codebook.codewords(new), [[1.0, 0.0], [0.0, 1.0]], atol=1e-7)


def test_codewords_are_unit_norm_means() -> None:
    state = CodebookState(dictionary=jnp.array([[3.0, 4.0], [1.0, 1.0]]), counts=jnp.array([2.0, 0.5]))
    np.testing.assert_allclose(codebook.codewords(state), [[0.6, 0.8], [2**-0.5, 2**-0.5]], rtol=1e-6)


def test_a_dead_codeword_is_restarted_as_half_of_the_most_used_one() -> None:
    state = CodebookState(
        dictionary=jnp.array([[4.0, 8.0], [7.0, 7.0], [1.0, 1.0]]), counts=jnp.array([6.0, 0.05, 2.0])
    )
    new, restarts = codebook.restart_dead_codes(state, jax.random.PRNGKey(0), min_count=0.1)
    assert int(restarts) == 1
    np.testing.assert_allclose(new.counts, [3.0, 3.0, 2.0])
    np.testing.assert_allclose(new.dictionary[0], [2.0, 4.0])  # halved
    np.testing.assert_allclose(new.dictionary[1], [2.0, 4.0], rtol=codebook.PERTURB)  # a jittered copy of it
    assert not np.array_equal(new.dictionary[1], new.dictionary[0])  # the copies can drift apart
    np.testing.assert_array_equal(new.dictionary[2], [1.0, 1.0])
    # The codeword (mean) of the split entry is unchanged by halving both sum and count.
    np.testing.assert_allclose(codebook.codewords(new)[0], codebook.codewords(state)[0], rtol=1e-6)


def test_restarts_repeat_until_no_codeword_is_dead() -> None:
    state = CodebookState(dictionary=jnp.ones((4, 3)), counts=jnp.array([8.0, 0.0, 0.01, 0.02]))
    new, restarts = codebook.restart_dead_codes(state, jax.random.PRNGKey(1), min_count=0.1)
    assert int(restarts) == 3
    assert float(jnp.min(new.counts)) >= 0.1
    np.testing.assert_allclose(sorted(np.asarray(new.counts)), [2.0, 2.0, 2.0, 2.0])
    # No dead codeword: nothing changes, bit for bit.
    again, none = codebook.restart_dead_codes(new, jax.random.PRNGKey(2), min_count=0.1)
    assert int(none) == 0
    np.testing.assert_array_equal(again.dictionary, new.dictionary)


def test_usage_metrics() -> None:
    m = codebook.usage_metrics(jnp.array([2.0, 2.0, 0.0, 0.0]))
    assert float(m["codebook_zeros_ratio"]) == 0.5
    assert float(m["codebook_max_ratio"]) == 0.5
    assert float(m["codebook_perplexity"]) == pytest.approx(2.0)
    assert float(codebook.usage_metrics(jnp.array([5.0, 0.0]))["codebook_perplexity"]) == pytest.approx(1.0)
