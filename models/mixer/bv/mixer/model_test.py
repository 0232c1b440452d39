"""MlpMixer: big_vision's sizes and parameter names, outputs, stochastic depth, the registry."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bv.core import registry
from bv.core.tree import flatten_with_names
from bv.mixer import MlpMixer, create_model, decode_variant

TINY: dict[str, Any] = {"hidden_dim": 16, "num_blocks": 3, "tokens_mlp_dim": 8, "channels_mlp_dim": 32}


_FAST = {"xla_backend_optimization_level": 0}  # on CPU compiling, not running, dominates these tests


def _images(n: int = 4, res: int = 32, seed: int = 0) -> jax.Array:
    return jax.random.uniform(jax.random.key(seed), (n, res, res, 3), minval=-1, maxval=1)


def _shapes(model: MlpMixer, res: int) -> dict[str, tuple[int, ...]]:
    params = jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, res, res, 3), jnp.float32))
    return {name: tuple(leaf.shape) for name, leaf in flatten_with_names(params["params"])}


@functools.cache
def _model(**kw: Any) -> tuple[MlpMixer, Any]:
    """A tiny Mixer (patch 8 on 32 px: 16 tokens) and its ``apply``, compiled once per ``train``."""
    model = create_model(10, patch_size=8, **{**TINY, **kw})
    return model, jax.jit(model.apply, static_argnames=("train",), compiler_options=_FAST)


@functools.cache
def _params() -> Any:
    """Initialised params of the tiny Mixer, with a random (non-zero) head so that logits use every parameter."""
    model = create_model(10, patch_size=8, head_bias_init=-6.9, **TINY)
    params = jax.jit(model.init, compiler_options=_FAST)(jax.random.key(1), _images(1))["params"]
    head = {"kernel": jax.random.normal(jax.random.key(2), (16, 10)), "bias": params["head"]["bias"]}
    return {**params, "head": head}


@pytest.mark.parametrize(
    "variant,hidden,blocks,tokens_mlp,channels_mlp",
    [
        ("S/32", 512, 8, 256, 2048),
        ("S/16", 512, 8, 256, 2048),
        ("B/16", 768, 12, 384, 3072),
        ("B/32", 768, 12, 384, 3072),
        ("L/16", 1024, 24, 512, 4096),
        ("H/14", 1280, 32, 640, 5120),
    ],
)
def test_variants_have_big_vision_sizes(
    variant: str, hidden: int, blocks: int, tokens_mlp: int, channels_mlp: int
) -> None:
    patch = int(variant.split("/")[1])
    shapes = _shapes(create_model(1000, variant=variant), 224)
    seq_len = (224 // patch) ** 2
    assert shapes["stem/kernel"] == (patch, patch, 3, hidden)
    assert len({n.split("/")[0] for n in shapes if n.startswith("MixerBlock_")}) == blocks
    last = f"MixerBlock_{blocks - 1}"
    assert shapes[f"{last}/token_mixing/Dense_0/kernel"] == (seq_len, tokens_mlp)
    assert shapes[f"{last}/token_mixing/Dense_1/kernel"] == (tokens_mlp, seq_len)
    assert shapes[f"{last}/channel_mixing/Dense_0/kernel"] == (hidden, channels_mlp)
    assert shapes[f"{last}/channel_mixing/Dense_1/kernel"] == (channels_mlp, hidden)
    assert shapes["head/kernel"] == (hidden, 1000)


def test_parameter_names_are_big_vision_s() -> None:
    names = set(_shapes(create_model(5, patch_size=(8, 8), **{**TINY, "num_blocks": 1}), 32))
    block = {f"MixerBlock_0/LayerNorm_{i}/{k}" for i in (0, 1) for k in ("scale", "bias")} | {
        f"MixerBlock_0/{mlp}/Dense_{i}/{k}"
        for mlp in ("token_mixing", "channel_mixing")
        for i in (0, 1)
        for k in ("kernel", "bias")
    }
    top = {f"{m}/{k}" for m in ("stem", "head") for k in ("kernel", "bias")}
    top |= {"pre_head_layer_norm/scale", "pre_head_layer_norm/bias"}
    assert names == block | top


def test_outputs_and_intermediates() -> None:
    _, apply = _model()
    params = _params()
    logits, out = apply({"params": params}, _images(2), train=False)
    assert logits.shape == (2, 10)
    assert out["stem"].shape == (2, 4, 4, 16) and out["input_tokens"].shape == (2, 16, 16)
    assert [k for k in out if k.startswith("block_")] == ["block_0", "block_1", "block_2"]
    assert out["pre_logits"].shape == (2, 16)
    np.testing.assert_allclose(out["logits"], logits)
    np.testing.assert_allclose(out["pre_logits"] @ params["head"]["kernel"] + params["head"]["bias"], logits, atol=1e-5)


def test_no_head_returns_the_pooled_representation() -> None:
    model = create_model(None, patch_size=8, **TINY)
    params = {k: v for k, v in _params().items() if k != "head"}
    assert set(_shapes(model, 32)) == {n for n, _ in flatten_with_names(params)}
    features, out = jax.jit(model.apply, compiler_options=_FAST)({"params": params}, _images(2))
    assert features.shape == (2, 16) and "logits" not in out
    np.testing.assert_array_equal(features, out["pre_logits"])


def test_fresh_head_is_zero_with_the_asked_bias() -> None:
    model = create_model(7, patch_size=8, head_bias_init=-6.9, **TINY)
    head = jax.jit(model.init, compiler_options=_FAST)(jax.random.key(0), _images(1))["params"]["head"]
    assert not np.any(head["kernel"])
    np.testing.assert_allclose(head["bias"], np.full(7, -6.9, np.float32))


def test_stochastic_depth_changes_outputs_only_in_training() -> None:
    _, plain = _model()
    _, apply = _model(stoch_depth=0.9)
    params, images = {"params": _params()}, _images(32)
    _, clean = plain(params, images, train=False)
    # Evaluation: no rng needed, and the rate plays no part.
    logits, _ = apply(params, images, train=False)
    np.testing.assert_array_equal(logits, clean["logits"])
    _, a = apply(params, images, train=True, rngs={"dropout": jax.random.key(3)})
    _, b = apply(params, images, train=True, rngs={"dropout": jax.random.key(4)})
    assert not np.allclose(a["logits"], b["logits"])  # the draw depends on the rng
    # Block i drops each branch with rate 0.9 * i / 2: never in the first block; in the second an
    # example keeps both branches with probability 0.55 ** 2 = 0.3.
    np.testing.assert_allclose(a["block_0"], clean["block_0"], atol=1e-6)
    changed = np.abs(np.asarray(a["block_1"]) - np.asarray(clean["block_1"])).max(axis=(1, 2)) > 1e-5
    assert 0.45 < changed.mean() < 0.95
    with pytest.raises(Exception, match="dropout"):
        apply(params, images, train=True)


def test_decode_variant_and_errors() -> None:
    assert decode_variant("L") == {
        "hidden_dim": 1024,
        "num_blocks": 24,
        "tokens_mlp_dim": 512,
        "channels_mlp_dim": 4096,
    }
    assert decode_variant("H/14")["patch_size"] == (14, 14)
    with pytest.raises(ValueError, match="must be one of S, B, L, H"):
        decode_variant("Ti/16")
    with pytest.raises(ValueError, match="positive integer"):
        decode_variant("B/x")
    with pytest.raises(ValueError, match="stoch_depth"):
        create_model(10, variant="S/16", stoch_depth=1.0)
    # Explicit fields win over the variant's; an int patch size is square.
    model = create_model(3, variant="B/16", num_blocks=2, patch_size=8)
    assert model.num_blocks == 2 and model.hidden_dim == 768 and model.patch_size == (8, 8)


def test_registered_as_mixer() -> None:
    assert registry.model_factory("mixer") is create_model
    from bv.mixer import Mixer

    assert registry.hub_class("mixer") is Mixer


def test_approximate_gelu_switches_the_activation() -> None:
    _, tanh = _model()
    _, exact = _model(approximate_gelu=False)
    params, images = {"params": _params()}, _images(2)
    diff = np.abs(np.asarray(tanh(params, images, train=False)[0]) - np.asarray(exact(params, images, train=False)[0]))
    assert 0 < diff.max() < 0.1
