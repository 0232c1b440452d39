"""Decoding with the fixed-length cache equals decoding without it; sampling options behave."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bv.core.config import ConfigError
from bv.uvim import decode
from bv.uvim.vtt import VTT

SEQ, VOCAB = 6, 9


@pytest.fixture(scope="module")
def lm() -> tuple[VTT, dict, jax.Array]:
    model = VTT(
        vocab_size=VOCAB,
        seq_len=SEQ,
        input_size=(8, 8),
        patch_size=(4, 4),
        emb_dim=16,
        num_layers=2,
        num_heads=2,
        mlp_dim=32,
    )
    images = jax.random.normal(jax.random.PRNGKey(0), (3, 8, 8, 1))
    params = model.init(jax.random.PRNGKey(1), images, jnp.zeros((3, SEQ), jnp.int32))["params"]
    # The logits layer starts at zero (every code equally likely): give it weights so choices differ.
    params["decoder"]["LogitsDense"]["kernel"] = jax.random.normal(jax.random.PRNGKey(2), (16, VOCAB))
    return model, params, images


@pytest.mark.parametrize(
    "options", [decode.SamplingOptions(), decode.SamplingOptions(temperature=1.0), decode.SamplingOptions(0.7, 3)]
)
def test_cached_decoding_equals_decoding_without_cache(lm, options) -> None:
    model, params, images = lm
    rng = jax.random.PRNGKey(3)
    sample = jax.jit(lambda p, x, r: decode.sample(model, p, x, r, options))
    codes, logits = sample(params, images, rng)
    reference = jax.jit(lambda p, x, r: decode.decode_without_cache(model, p, x, r, options))
    ref_codes, ref_logits = reference(params, images, rng)
    np.testing.assert_array_equal(codes, ref_codes)
    np.testing.assert_allclose(logits, ref_logits, atol=1e-5, rtol=1e-5)
    assert codes.shape == (3, SEQ) and logits.shape == (3, SEQ, VOCAB)
    assert int(codes.min()) >= 1 and int(codes.max()) < VOCAB  # token 0 only starts a sequence


def test_greedy_picks_the_argmax_and_teacher_forcing_scores_it(lm) -> None:
    model, params, images = lm
    codes, logits = decode.sample(model, params, images, jax.random.PRNGKey(0))
    np.testing.assert_array_equal(codes, jnp.argmax(logits.at[..., 0].set(-jnp.inf), axis=-1))
    forced = model.apply({"params": params}, images, codes)  # the teacher-forced logits of the same codes
    np.testing.assert_allclose(forced, logits, atol=1e-5, rtol=1e-5)


def test_top_k_only_draws_from_the_k_best() -> None:
    logits = jnp.tile(jnp.array([[5.0, 0.0, 1.0, 3.0, 2.0, -1.0]]), (500, 1))
    picks = decode.choose(logits, jax.random.PRNGKey(0), decode.SamplingOptions(temperature=5.0, top_k=2))
    assert set(np.unique(picks).tolist()) == {3, 4}  # token 0 is never drawn: the best two others
    everything = decode.choose(logits, jax.random.PRNGKey(0), decode.SamplingOptions(temperature=5.0))
    assert 0 not in set(np.unique(everything).tolist()) and len(np.unique(everything)) == 5


def test_bad_sampling_options_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="temperature must be >= 0"):
        decode.SamplingOptions(temperature=-1.0)
    with pytest.raises(ConfigError, match="top_k must be >= 0"):
        decode.SamplingOptions(top_k=-2)
