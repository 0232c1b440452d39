from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bv.core.tree import flatten_with_names
from bv.lit.text_transformer import TextTransformer, create_text_transformer

TOKENS = jnp.asarray([[5, 6, 7, 0, 0, 0], [9, 3, 0, 0, 0, 0]], jnp.int32)
SMALL: dict[str, Any] = dict(variant="mu", vocab_size=20)  # width 32, 1 block, mlp 128, 2 heads
RNG = jax.random.PRNGKey(0)


# Shapes come from jax.eval_shape (no compilation); numbers from jitted calls (eager dispatch is slow).
def _init(module: TextTransformer, tokens: jax.Array = TOKENS) -> dict:
    return jax.jit(module.init)(RNG, tokens)["params"]


def _apply(module: TextTransformer, params: dict, tokens: jax.Array = TOKENS) -> tuple[jax.Array, dict]:
    return jax.jit(module.apply)({"params": params}, tokens)


def _shapes(module: TextTransformer, tokens: jax.Array = TOKENS) -> tuple[dict, jax.ShapeDtypeStruct, dict]:
    params = jax.eval_shape(module.init, RNG, tokens)["params"]
    out, inter = jax.eval_shape(module.apply, {"params": params}, tokens)
    return params, out, inter


@pytest.mark.parametrize("pool_type", ["last", "first", "gap", "gmp", "map"])
@pytest.mark.parametrize("num_classes", [None, 16])
def test_output_shapes_for_each_pooling(pool_type: str, num_classes: int | None) -> None:
    params, out, inter = _shapes(create_text_transformer(num_classes, pool_type=pool_type, **SMALL))
    assert out.shape == (2, num_classes or 32)
    assert inter["pre_logits"].shape == (2, 32)
    assert inter["transformed"].shape == inter["embedded"].shape == (2, 6, 32)
    assert ("head" in params) == bool(num_classes)
    assert ("MAPHead_0" in params) == (pool_type == "map")


def test_param_names_are_big_vision_s() -> None:
    params, _, _ = _shapes(create_text_transformer(8, pool_type="map", **SMALL))
    shapes = {name: tuple(v.shape) for name, v in flatten_with_names(params)}
    expected = {
        "Embed_0/embedding": (20, 32),
        "pos_embedding": (1, 6, 32),  # one entry per position of the length seen at init
        "Encoder_0/encoderblock_0/LayerNorm_0/scale": (32,),
        "Encoder_0/encoderblock_0/MultiHeadDotProductAttention_0/query/kernel": (32, 2, 16),
        "Encoder_0/encoderblock_0/MlpBlock_0/Dense_0/kernel": (32, 128),
        "Encoder_0/encoderblock_0/MlpBlock_0/Dense_1/bias": (32,),
        "Encoder_0/encoder_norm/bias": (32,),
        "MAPHead_0/probe": (1, 1, 32),
        "head/kernel": (32, 8),
        "head/bias": (8,),
    }
    assert {k: shapes.get(k) for k in expected} == expected
    assert {k.split("/")[0] for k in shapes} == {"Embed_0", "pos_embedding", "Encoder_0", "MAPHead_0", "head"}


def test_scan_stacks_the_blocks_over_depth() -> None:
    params, _, _ = _shapes(create_text_transformer(None, scan=True, depth=3, **SMALL))
    assert params["Encoder_0"]["encoderblock"]["MlpBlock_0"]["Dense_0"]["kernel"].shape == (3, 32, 128)


def test_variants_set_the_sizes_and_explicit_fields_win() -> None:
    module = create_text_transformer(768, variant="B", vocab_size=100)
    assert (module.width, module.depth, module.mlp_dim, module.num_heads) == (768, 12, 3072, 12)
    module = create_text_transformer(None, variant="So400m/14", depth=2)  # a patch size part is ignored
    assert (module.width, module.depth, module.num_heads) == (1152, 2, 16)
    assert TextTransformer().width == 512 and TextTransformer().vocab_size == 32_000  # big_vision's defaults
    params, _, _ = _shapes(create_text_transformer(None, variant="S", depth=1, vocab_size=1000))
    assert params["Embed_0"]["embedding"].shape == (1000, 384)


def test_init_scales_are_big_vision_s() -> None:
    params = _init(create_text_transformer(None, variant="mu", width=256, num_heads=4, vocab_size=2000))
    # Both as in big_vision: pos_embedding ~ N(0, 1/width), and Flax's default nn.Embed init, whose
    # fan-in scaling over the feature axis also gives N(0, 1/width).
    assert np.std(np.asarray(params["pos_embedding"])) == pytest.approx(1 / 16, rel=0.15)
    assert np.std(np.asarray(params["Embed_0"]["embedding"])) == pytest.approx(1 / 16, rel=0.05)


def test_last_pools_the_last_position_and_padding_is_not_masked() -> None:
    module = create_text_transformer(None, **SMALL)
    params = _init(module)
    out, inter = _apply(module, params)
    np.testing.assert_array_equal(out, inter["transformed"][:, -1])
    first, inter = _apply(create_text_transformer(None, pool_type="first", **SMALL), params)
    np.testing.assert_array_equal(first, inter["transformed"][:, 0])
    # Pads take part in attention: another id at a pad position of row 0 changes its pooled
    # output (row 1 is untouched), and the last position (a pad) sees the text before it.
    changed = TOKENS.at[0, 3].set(11)
    out2, _ = _apply(module, params, changed)
    assert not np.allclose(out[0], out2[0])
    np.testing.assert_allclose(out[1], out2[1], rtol=1e-6)
    other_text = TOKENS.at[0, 0].set(12)
    assert not np.allclose(_apply(module, params, other_text)[0][0], out[0])


def test_dtype_mm_runs_the_encoder_in_bfloat16_with_float32_params() -> None:
    params, out, inter = _shapes(create_text_transformer(None, dtype_mm="bfloat16", **SMALL))
    assert {v.dtype for v in jax.tree.leaves(params)} == {jnp.dtype("float32")}
    assert inter["block00"]["mlp"].dtype == jnp.bfloat16 and out.shape == (2, 32)


def test_bad_inputs_and_options_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="Unknown pool_type 'tok'"):
        create_text_transformer(None, pool_type="tok", **SMALL)
    with pytest.raises(ValueError, match="int token ids of shape \\[batch, length\\]"):
        _shapes(create_text_transformer(None, **SMALL), jnp.zeros((2, 6), jnp.float32))


def test_texts_of_another_length_than_the_position_embedding_are_a_clear_error() -> None:
    model = create_text_transformer(variant="mu", depth=1, vocab_size=10)
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))
    with pytest.raises(ValueError, match="made for 8 tokens, got texts of 12.*tokenize to exactly 8"):
        model.apply(params, jnp.zeros((1, 12), jnp.int32))
