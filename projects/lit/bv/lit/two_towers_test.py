import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bv.bit  # noqa: F401  (registers bit)
import bv.lit  # noqa: F401  (registers two_towers)
import bv.mixer  # noqa: F401  (registers mixer)
import bv.vit  # noqa: F401  (registers vit)
from bv.core import registry
from bv.core.tree import flatten_with_names
from bv.lit.two_towers import TwoTowers, create_two_towers

IMAGES = jax.random.normal(jax.random.PRNGKey(1), (3, 16, 16, 3))
TOKENS = jnp.asarray([[4, 5, 6, 1], [7, 1, 0, 0], [9, 9, 9, 1]], jnp.int32)
TEXT = dict(variant="mu", vocab_size=12)
VIT = dict(variant="mu/8", head_zeroinit=False)
IMAGE_TOWERS: dict[str, dict[str, Any]] = {
    "vit": VIT,
    "bit": dict(depth=(1, 1, 1, 1), width=0.5),
    "mixer": dict(patch_size=8, hidden_dim=16, num_blocks=1, tokens_mlp_dim=8, channels_mlp_dim=32),
}
RNG = jax.random.PRNGKey(0)


# Shapes come from jax.eval_shape (no compilation); numbers from jitted calls (eager dispatch is slow).
def _init(model: TwoTowers, images: Any = IMAGES, tokens: Any = TOKENS) -> dict:
    return jax.jit(model.init)(RNG, images, tokens)["params"]


def _apply(model: TwoTowers, params: dict, images: Any, tokens: Any) -> tuple[Any, Any, dict]:
    return jax.jit(model.apply)({"params": params}, images, tokens)


def _shapes(model: TwoTowers) -> tuple[dict, Any, Any, dict]:
    params = jax.eval_shape(model.init, RNG, IMAGES, TOKENS)["params"]
    return (params, *jax.eval_shape(model.apply, {"params": params}, IMAGES, TOKENS))


@pytest.mark.parametrize("image_model", sorted(IMAGE_TOWERS))
@pytest.mark.parametrize("with_head", [True, False])
def test_any_registered_image_model_is_a_tower(image_model: str, with_head: bool) -> None:
    # Headless (out_dim None for the image), the tower's pooled features are its embedding. Note that
    # bv's BiT and Mixer start their heads at zero (they have no head_zeroinit option), so with a
    # head their image embeddings are all 0 at init.
    tower = registry.model_factory(image_model)(num_classes=None, **IMAGE_TOWERS[image_model])
    width = jax.eval_shape(tower.apply, jax.eval_shape(tower.init, RNG, IMAGES), IMAGES)[0].shape[-1]
    dim = 24 if with_head else width
    out_dim = 24 if with_head else (None, width)
    model = create_two_towers(image_model=image_model, image=IMAGE_TOWERS[image_model], text=TEXT, out_dim=out_dim)
    params, zimg, ztxt, out = _shapes(model)
    assert set(params) == {"img", "txt", "t"}
    assert ("head" in params["img"]) == with_head and params["txt"]["head"]["kernel"].shape == (32, dim)
    assert zimg.shape == ztxt.shape == (3, dim)
    assert out["img/pre_logits"].shape == (3, width) and out["txt/pre_logits"].shape == (3, 32)
    assert out["img/norm"].shape == out["txt/norm"].shape == (3, 1)


def test_embeddings_are_unit_norm_and_either_side_embeds_alone() -> None:
    model = create_two_towers(image=VIT, text=TEXT, out_dim=16)
    params = _init(model)
    zimg, ztxt, out = _apply(model, params, IMAGES, TOKENS)
    assert zimg.shape == ztxt.shape == (3, 16)
    np.testing.assert_allclose(np.linalg.norm(zimg, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(ztxt, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(out["img/normalized"], zimg)
    np.testing.assert_allclose(out["img/norm"][:, 0], np.linalg.norm(out["img/logits"], axis=1), rtol=1e-5)
    np.testing.assert_allclose(out["txt/norm"][:, 0], np.linalg.norm(out["txt/logits"], axis=1), rtol=1e-5)

    zimg_only, none, out_img = _apply(model, params, IMAGES, None)
    none2, ztxt_only, out_txt = _apply(model, params, None, TOKENS)
    assert none is None and none2 is None
    np.testing.assert_allclose(zimg_only, zimg, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ztxt_only, ztxt, rtol=1e-5, atol=1e-6)
    assert not any(k.startswith("txt/") for k in out_img) and not any(k.startswith("img/") for k in out_txt)
    assert "t" in out_img and "t" in out_txt


def test_temperature_and_bias_start_where_big_vision_starts_them() -> None:
    # The text side alone creates t and b too (they are made in setup), and compiles quickly.
    tiny = dict(TEXT, variant=None, width=8, depth=1, mlp_dim=8, num_heads=1)
    # big_vision's model defaults: temperature_init=1 (t = log 1 = 0), no bias.
    params = _init(create_two_towers(image=VIT, text=tiny), None)
    assert set(params) == {"txt", "t"} and params["t"].shape == (1,) and float(params["t"][0]) == 0.0
    # Its SigLIP configs: temperature_init=10, bias_init=-10 (t stored as log 10).
    model = create_two_towers(image=VIT, text=tiny, temperature_init=10.0, bias_init=-10.0)
    params = _init(model, None)
    assert params["t"].shape == params["b"].shape == (1,)
    assert float(params["t"][0]) == pytest.approx(math.log(10.0))
    assert float(params["b"][0]) == -10.0
    _, _, out = _apply(model, params, None, TOKENS)
    assert float(out["t"][0]) == pytest.approx(10.0) and float(out["t/parameter"][0]) == pytest.approx(math.log(10))
    assert float(out["b"][0]) == -10.0
    assert TwoTowers().out_dim == 128 and TwoTowers().temperature_init == 1.0 and TwoTowers().bias_init is None
    with pytest.raises(ValueError, match="temperature_init must be positive"):
        _shapes(create_two_towers(image=VIT, text=TEXT, temperature_init=0.0))


def test_headless_map_image_tower_as_in_siglip() -> None:
    # big_vision's SigLIP layout: a MAP-pooled ViT without head, the text tower projected to its width.
    model = create_two_towers(image=dict(variant="mu/8", pool_type="map"), text=TEXT, out_dim=(None, 32))
    params, zimg, ztxt, _ = _shapes(model)
    assert "head" not in params["img"] and "MAPHead_0" in params["img"]
    assert params["txt"]["head"]["kernel"].shape == (32, 32)
    assert zimg.shape == ztxt.shape == (3, 32)


def test_param_names_match_big_vision_two_towers() -> None:
    model = create_two_towers(image=VIT, text=TEXT, out_dim=8, bias_init=-10.0)
    params, _, _, _ = _shapes(model)
    names = {name for name, _ in flatten_with_names(params)}
    for name in [
        "t",
        "b",
        "img/embedding/kernel",
        "img/pos_embedding",
        "img/Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel",
        "img/head/kernel",
        "txt/Embed_0/embedding",
        "txt/pos_embedding",
        "txt/Encoder_0/encoderblock_0/MultiHeadDotProductAttention_0/query/kernel",
        "txt/Encoder_0/encoder_norm/scale",
        "txt/head/kernel",
    ]:
        assert name in names, name
    axes = model.logical_axes(params)
    assert axes["img/head/kernel"] == ("embed", "classes")
    assert axes["txt/Embed_0/embedding"] == ("vocab", "embed")
    assert axes["txt/Encoder_0/encoderblock_0/MlpBlock_0/Dense_0/kernel"] == ("embed", "mlp")


def test_registered_as_an_image_text_model_with_clear_errors() -> None:
    entry = registry.model_entry("two_towers")
    assert entry.kind == "image_text" and entry.factory is create_two_towers and entry.hub_class is bv.lit.TwoTowerModel
    with pytest.raises(ValueError, match="two_towers has no classes.*config.model.out_dim"):
        create_two_towers(num_classes=10)
    with pytest.raises(ValueError, match="Unknown text_model 'bart'.*bert.*text_transformer"):
        _shapes(create_two_towers(image=VIT, text_model="bart"))
    with pytest.raises(registry.UnknownNameError, match="Unknown model 'vitt'"):
        _shapes(create_two_towers(image_model="vitt", text=TEXT))
    # big_vision's module path for the text tower is accepted, so its configs read unchanged.
    model = create_two_towers(image=VIT, text=TEXT, text_model="proj.image_text.text_transformer")
    assert "Embed_0" in _shapes(model)[0]["txt"]
