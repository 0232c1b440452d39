import jax.numpy as jnp
import numpy as np
import pytest

from bv.core import losses


def test_softmax_xent_matches_hand_computed_value() -> None:
    logits = jnp.array([[2.0, 0.0, -1.0]])
    labels = jnp.array([[1.0, 0.0, 0.0]])
    expected = -np.log(np.exp(2.0) / (np.exp(2.0) + 1.0 + np.exp(-1.0)))
    np.testing.assert_allclose(losses.softmax_xent(logits, labels), [expected], rtol=1e-6)


def test_label_smoothing_mixes_in_the_uniform_distribution() -> None:
    logits = jnp.array([[2.0, 0.0, -1.0, 0.5]])
    labels = jnp.array([[0.0, 1.0, 0.0, 0.0]])
    smoothed = losses.softmax_xent(logits, labels, label_smoothing=0.2)
    targets = np.array([[0.05, 0.85, 0.05, 0.05]])
    log_p = np.log(np.exp(logits) / np.exp(logits).sum())
    np.testing.assert_allclose(smoothed, -(targets * log_p).sum(-1), rtol=1e-6)
    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 1\)"):
        losses.softmax_xent(logits, labels, label_smoothing=1.0)


def test_sigmoid_xent_sums_binary_cross_entropies() -> None:
    logits = jnp.array([[0.0, 3.0]])
    labels = jnp.array([[1.0, 0.0]])
    expected = np.log(2.0) + np.log1p(np.exp(3.0))
    np.testing.assert_allclose(losses.sigmoid_xent(logits, labels), [expected], rtol=1e-6)


def test_losses_are_registered_by_name() -> None:
    assert losses.get("softmax_xent") is losses.softmax_xent
    with pytest.raises(
        KeyError,
        match="Unknown loss .softmax_xnet.. Did you mean .softmax_xent.?.*Known loss names: sigmoid_xent, softmax_xent",
    ):
        losses.get("softmax_xnet")
