"""FlexiViT: PI-resize of the patch embedding, one model at several patch sizes, the random-patch-size task."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from bv.core import train
from bv.core.config import load_config
from bv.core.tasks import get_task
from bv.vit import create_model, pi_resize_kernel
from bv.vit.patch_embed import _linear_resize_1d

RNG = np.random.RandomState(0)


@pytest.mark.parametrize("old,new", [(7, 14), (8, 12), (7, 4), (5, 5)])
def test_resize_matrix_is_jax_bilinear_resize(old: int, new: int) -> None:
    x = RNG.randn(old).astype(np.float32)
    expected = jax.image.resize(x, (new,), "bilinear", antialias=False)
    np.testing.assert_allclose(_linear_resize_1d(old, new) @ x, np.asarray(expected), atol=1e-6)


@pytest.mark.parametrize("new", [8, 12, 14])
def test_pi_resized_kernel_on_resized_patches_gives_the_same_token(new: int) -> None:
    kernel = RNG.randn(7, 7, 3, 16).astype(np.float32)
    patches = RNG.randn(5, 7, 7, 3).astype(np.float32)
    resized = jax.image.resize(patches, (5, new, new, 3), "bilinear", antialias=False)
    tokens = np.einsum("nhwc,hwcd->nd", patches, kernel)
    again = np.einsum("nhwc,hwcd->nd", np.asarray(resized), np.asarray(pi_resize_kernel(kernel, (new, new))))
    np.testing.assert_allclose(again, tokens, rtol=1e-4, atol=1e-4 * np.abs(tokens).max())


def test_downsampling_is_the_least_squares_kernel() -> None:
    kernel = RNG.randn(8, 8, 1, 4).astype(np.float32)
    small = np.asarray(pi_resize_kernel(kernel, (4, 4)))
    patches = RNG.randn(256, 8, 8, 1).astype(np.float32)
    resized = np.asarray(jax.image.resize(patches, (256, 4, 4, 1), "bilinear", antialias=False))
    target = np.einsum("nhwc,hwcd->nd", patches, kernel)
    err = np.abs(np.einsum("nhwc,hwcd->nd", resized, small) - target).mean()
    # Any other 4x4 kernel does no better on these patches than the PI-resized one, by much.
    naive = np.asarray(jax.image.resize(kernel, (4, 4, 1, 4), "bilinear")) * 4
    assert err <= np.abs(np.einsum("nhwc,hwcd->nd", resized, naive) - target).mean()


def test_one_model_runs_at_every_patch_size_and_its_base_size_is_the_default() -> None:
    model = create_model(10, patch_size=(7, 7), posemb_grid=4, width=32, depth=1, num_heads=2, head_zeroinit=False)
    images = RNG.uniform(-1, 1, (2, 28, 28, 1)).astype(np.float32)
    params = model.init(jax.random.PRNGKey(0), images)["params"]
    assert params["pos_embedding"].shape == (1, 16, 32) and params["embedding"]["kernel"].shape == (7, 7, 1, 32)
    apply = jax.jit(model.apply, static_argnames=("patch_size",))
    for patch, tokens in [(4, 49), (7, 16), (14, 4)]:
        logits, out = apply({"params": params}, images, patch_size=patch)
        assert logits.shape == (2, 10) and out["encoded"].shape == (2, tokens, 32)
        assert np.isfinite(np.asarray(logits)).all()
    default = apply({"params": params}, images)[0]
    np.testing.assert_array_equal(np.asarray(default), np.asarray(apply({"params": params}, images, patch_size=7)[0]))


def _spec(batch: dict[str, jax.Array]) -> dict[str, jax.ShapeDtypeStruct]:
    return {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in batch.items()}


def _config(**flexi: object) -> ml_collections.ConfigDict:
    config = load_config("bv.vit.configs.flexivit_mnist:runlocal")
    config.flexi = dict(flexi) if flexi else config.flexi
    return config


def test_the_task_draws_a_patch_size_per_step_and_predicts_at_each() -> None:
    task = get_task(_config())
    batch = {
        "image": jnp.asarray(RNG.uniform(-1, 1, (4, 28, 28, 1)), jnp.float32),
        "labels": jax.nn.one_hot(jnp.arange(4), 10),
    }
    params = task.init(jax.random.PRNGKey(0), _spec(batch))
    grads_fn = jax.jit(task.grads)
    seen = set()
    for i in range(12):
        loss, metrics, grads = grads_fn(params, batch, jax.random.PRNGKey(i))
        seen.add(int(metrics["patch_size"]))
        assert np.isfinite(float(loss)) and all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
    assert seen == {4, 7, 14}
    fns = task.predict_fns()
    assert {"predict", "predict_p4", "predict_p7", "predict_p14"} <= set(fns)
    assert fns["predict_p4"](params, batch["image"])[1]["encoded"].shape[1] == 49


def test_weights_pick_the_patch_size_and_bad_configs_fail() -> None:
    task = get_task(_config(patch_sizes=(4, 14), weights=(0.0, 1.0)))
    batch = {"image": jnp.zeros((2, 28, 28, 1)), "labels": jax.nn.one_hot(jnp.arange(2), 10)}
    params = task.init(jax.random.PRNGKey(0), _spec(batch))
    sizes = {int(task.loss(params, batch, jax.random.PRNGKey(i))[1]["patch_size"]) for i in range(5)}
    assert sizes == {14}
    with pytest.raises(ValueError, match="patch_sizes must list"):
        get_task(_config(patch_sizes=()))
    with pytest.raises(ValueError, match="one non-negative weight per patch size"):
        get_task(_config(patch_sizes=(4, 7), weights=(1.0,)))


def test_runlocal_config_evaluates_three_patch_sizes(tmp_path: Path) -> None:
    config = load_config("bv.vit.configs.flexivit_mnist:runlocal")
    config.input.data.data_dir = str(tmp_path / "tfds")
    for name in config.evals:
        config.evals[name].data.data_dir = str(tmp_path / "tfds")
    final = train.train(config, str(tmp_path / "run"))
    assert {"test_p4/prec@1", "test_p7/prec@1", "test_p14/prec@1"} <= set(final)
