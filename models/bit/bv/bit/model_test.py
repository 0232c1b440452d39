"""Tests for the BiT ResNets: shapes, big_vision's parameter names, weight standardisation, GroupNorm, stem."""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bv.bit import model as bit
from bv.core import registry
from bv.core.tree import flatten_with_names

IMAGES = jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32)


def _jit(fn: Any) -> Any:
    """A cheap compile (CPU compile time, not run time, dominates these tests); eager mode is slower still."""
    return jax.jit(fn, compiler_options={"xla_backend_optimization_level": 0})


@functools.lru_cache
def _model_shapes(
    factory: Any, depth: int, num_classes: int | None
) -> tuple[dict[str, tuple[int, ...]], Any, dict[str, Any]]:
    return _shapes(factory(num_classes, depth=depth, width=1))


def _shapes(module: nn.Module, images: Any = IMAGES) -> tuple[dict[str, tuple[int, ...]], Any, dict[str, Any]]:
    params = jax.eval_shape(module.init, jax.random.PRNGKey(0), images)["params"]
    logits, out = jax.eval_shape(lambda p, x: module.apply({"params": p}, x, train=True), params, images)
    return {n: tuple(v.shape) for n, v in flatten_with_names(params)}, logits, out


@pytest.mark.parametrize("factory", [bit.create_model, bit.create_paper_model])
@pytest.mark.parametrize("depth, units", [(26, 8), (50, 16)])
def test_shapes_for_depths_26_and_50(factory: Any, depth: int, units: int) -> None:
    names, logits, out = _model_shapes(factory, depth, 1000)
    assert logits.shape == (2, 1000)
    assert out["pre_logits"].shape == (2, 2048) and out["logits_2d"].shape == (2, 7, 7, 1000)
    assert out["stem"].shape == (2, 56, 56, 64)
    for i, (side, channels) in enumerate([(56, 256), (28, 512), (14, 1024), (7, 2048)], 1):
        assert out[f"stage{i}"].shape == (2, side, side, channels)
    assert len({n.split("/")[1] for n in names if n.startswith("block")}) == max(bit.block_sizes(depth))
    assert sum(n.endswith("conv2/kernel") for n in names) == units
    assert names["head/kernel"] == (2048, 1000)


def test_width_multiplier_and_explicit_depth_list() -> None:
    names, logits, out = _shapes(
        bit.create_model(5, depth=[1, 2], width=0.5), jax.ShapeDtypeStruct((1, 64, 64, 3), "f4")
    )
    assert logits.shape == (1, 5) and out["pre_logits"].shape == (1, 256)  # 4 * 32 * 2
    assert names["conv_root/kernel"] == (7, 7, 3, 32)
    assert "block2/unit2/conv3/kernel" in names and "block3/unit1/conv1/kernel" not in names


def test_v1_parameter_names_are_big_vision_s() -> None:
    names, _, _ = _model_shapes(bit.create_model, 26, 1000)
    assert names["conv_root/kernel"] == (7, 7, 3, 64) and names["gn_root/scale"] == (64,)
    assert names["block1/unit1/conv_proj/kernel"] == (1, 1, 64, 256) and names["block1/unit1/gn_proj/bias"] == (256,)
    assert names["block2/unit1/conv2/kernel"] == (3, 3, 128, 128)
    assert names["block4/unit2/gn3/scale"] == (2048,) and names["head/bias"] == (1000,)
    assert not any(n.startswith("block1/unit2/conv_proj") for n in names)
    assert {n.split("/")[1] for n in names if n.startswith("block1/")} == {"unit1", "unit2"}


def test_v2_parameter_names_are_big_vision_s() -> None:
    names, _, out = _model_shapes(bit.create_paper_model, 26, 1000)
    assert names["root_block/conv_root/kernel"] == (7, 7, 3, 64)
    assert names["block1/unit01/gn1/scale"] == (1, 1, 1, 64) and names["block1/unit02/gn1/bias"] == (1, 1, 1, 256)
    assert names["block3/unit01/conv_proj/kernel"] == (1, 1, 512, 1024)
    assert names["norm-pre-head/scale"] == (1, 1, 1, 2048) and names["head/kernel"] == (2048, 1000)
    assert not any("gn_proj" in n or "gn_root" in n for n in names)
    assert out["norm_pre_head"].shape == (2, 7, 7, 2048)


def test_without_classes_there_is_no_head_and_the_output_is_pre_logits() -> None:
    names, logits, out = _shapes(bit.create_paper_model(None, depth=26, width=0.5))
    assert not any(n.startswith("head/") for n in names) and "logits" not in out
    assert logits.shape == out["pre_logits"].shape == (2, 1024)


@pytest.mark.parametrize("eps_in_sqrt", [False, True])
def test_weight_standardisation_normalises_each_output_filter(eps_in_sqrt: bool) -> None:
    rng = np.random.default_rng(0)
    kernel = rng.normal(3.0, 0.02, (3, 3, 8, 5)) * rng.uniform(0.1, 10, 5) + rng.normal(0, 5, 5)
    w = np.asarray(bit.weight_standardize(jnp.asarray(kernel, jnp.float32), eps=1e-10, eps_in_sqrt=eps_in_sqrt))
    np.testing.assert_allclose(w.reshape(-1, 5).mean(0), 0.0, atol=1e-4)  # float32 rounding of the large offsets
    np.testing.assert_allclose(w.reshape(-1, 5).std(0), 1.0, atol=1e-4)


def test_weight_standardisation_epsilons_differ_as_documented() -> None:
    kernel = jnp.asarray(np.random.default_rng(1).normal(0, 0.01, (1, 1, 4, 3)), jnp.float32)
    std = np.asarray(jnp.std(kernel, axis=(0, 1, 2)))
    centred = np.asarray(kernel - jnp.mean(kernel, axis=(0, 1, 2)))
    v1 = bit.weight_standardize(kernel, eps=1e-3)
    v2 = bit.weight_standardize(kernel, eps=1e-3, eps_in_sqrt=True)
    np.testing.assert_allclose(v1, centred / (std + 1e-3), rtol=1e-5)
    np.testing.assert_allclose(v2, centred / np.sqrt(std**2 + 1e-3), rtol=1e-5)


def test_std_conv_ignores_per_filter_scale_and_shift_of_its_kernel() -> None:
    x = jnp.asarray(np.random.default_rng(2).normal(size=(1, 6, 6, 3)), jnp.float32)
    conv = bit.StdConv(4, (3, 3))
    params = _jit(conv.init)(jax.random.PRNGKey(0), x)
    kernel = params["params"]["kernel"]
    moved = {"params": {"kernel": kernel * jnp.asarray([2.0, 0.5, 7.0, 1.0]) + jnp.asarray([1.0, -3.0, 0.0, 0.2])}}
    # Equal up to the epsilon added to each filter's std (1e-5 against stds of about 0.2).
    apply = _jit(conv.apply)
    np.testing.assert_allclose(apply(params, x), apply(moved, x), rtol=1e-3, atol=1e-3)
    plain = jax.lax.conv_general_dilated(
        x, bit.weight_standardize(kernel, eps=1e-5), (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    np.testing.assert_allclose(apply(params, x), plain, atol=1e-5)


def test_paper_group_norm_matches_flax_group_norm() -> None:
    x = jnp.asarray(np.random.default_rng(3).normal(2.0, 3.0, (2, 5, 5, 64)), jnp.float32)
    ours = bit.GroupNorm()
    scale = np.random.default_rng(4).normal(size=64).astype(np.float32)
    params = {"params": {"scale": scale.reshape(1, 1, 1, 64), "bias": np.full((1, 1, 1, 64), 0.5, np.float32)}}
    ref = nn.GroupNorm(num_groups=32, epsilon=1e-5)
    ref_params = {"params": {"scale": scale, "bias": np.full(64, 0.5, np.float32)}}
    np.testing.assert_allclose(_jit(ours.apply)(params, x), _jit(ref.apply)(ref_params, x), atol=1e-5)


def test_root_pool_padding_choices() -> None:
    """big_vision pads the stem's max-pool with cells that never win; timm and the original BiT with zeros."""
    # A near-constant input: the zero-mean kernels give ~0 inside and border values of either sign.
    x = jnp.asarray(np.random.default_rng(6).normal(-1.0, 0.01, size=(1, 12, 12, 3)), jnp.float32)
    blocks = {pad: bit.RootBlock(32, ws_eps=1e-8, pool_pad=pad) for pad in bit.ROOT_POOL_PADS}
    params = {
        "params": {"conv_root": {"kernel": np.random.default_rng(7).normal(size=(7, 7, 3, 32)).astype(np.float32)}}
    }
    kernel = bit.weight_standardize(params["params"]["conv_root"]["kernel"], eps=1e-8, eps_in_sqrt=True)
    conv = np.asarray(
        jax.lax.conv_general_dilated(x, kernel, (2, 2), [(3, 3), (3, 3)], dimension_numbers=("NHWC", "HWIO", "NHWC"))
    )
    for pad, fill in (("zero", 0.0), ("-inf", -np.inf)):
        padded = np.pad(conv, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=fill)
        expected = np.stack(
            [
                np.stack([padded[:, i : i + 3, j : j + 3].max(axis=(1, 2)) for j in range(0, 6, 2)], 1)
                for i in range(0, 6, 2)
            ],
            1,
        )
        np.testing.assert_allclose(_jit(blocks[pad].apply)(params, x), expected, atol=1e-5)
    assert not np.allclose(expected, np.maximum(expected, 0.0)), "the test needs negative border maxima"


def test_forward_runs_and_starts_at_zero_logits() -> None:
    x = jnp.asarray(np.random.default_rng(5).uniform(-1, 1, (2, 32, 32, 3)), jnp.float32)
    module = bit.create_model(3, depth=[1, 1], width=0.5)  # the v2 forward is checked against timm
    logits, out = _jit(lambda x: module.init_with_output(jax.random.PRNGKey(0), x)[0])(x)
    assert logits.shape == (2, 3) and np.all(np.asarray(logits) == 0)  # zero-initialised head
    assert np.all(np.isfinite(out["pre_logits"])) and float(jnp.std(out["pre_logits"])) > 0


def test_bad_depth_and_width_are_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match="26, 50, 101, 152, 200"):
        bit.create_model(10, depth=34)
    with pytest.raises(ValueError, match="positive unit counts"):
        bit.create_paper_model(10, depth=[3, 0, 2])
    with pytest.raises(ValueError, match="multiple of 32"):
        bit.create_model(10, width=0.25)
    with pytest.raises(ValueError, match="root_pool_pad"):
        bit.create_paper_model(10, root_pool_pad="same")


def test_models_are_registered_under_big_vision_s_names() -> None:
    import bv.bit  # noqa: F401  (registers)

    assert isinstance(registry.model_factory("bit")(num_classes=2, depth=26), bit.ResNet)
    assert isinstance(registry.model_factory("bit_paper")(num_classes=2, depth=26), bit.ResNetV2)
    assert registry.hub_class("bit").__name__ == "BiT"
    assert registry.hub_class("bit_paper").__name__ == "BiTPaper"
    assert bit.depth_name((3, 4, 6, 3)) == 50 and bit.depth_name([1, 2]) == (1, 2)
