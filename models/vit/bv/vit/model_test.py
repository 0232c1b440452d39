"""Tests for the ViT: shapes for every variant, big_vision parameter names, scan layout, dropout, dtypes."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage
from bv.core import registry
from bv.core.tree import flatten_with_names, map_with_names
from bv.vit import (
    VARIANTS,
    VisionTransformer,
    create_model,
    decode_variant,
    pyloop_to_scan,
    resample_posemb,
    scan_to_pyloop,
)
from bv.vit.model import posemb_sincos_2d

TINY: dict[str, Any] = {"width": 32, "depth": 2, "mlp_dim": 48, "num_heads": 4, "patch_size": (4, 4)}
IMAGE = np.random.RandomState(0).uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)


def _names(params: Any) -> set[str]:
    return {name for name, _ in flatten_with_names(params)}


def _shapes(params: Any) -> dict[str, tuple[int, ...]]:
    return {name: tuple(leaf.shape) for name, leaf in flatten_with_names(params)}


def _random_params(model: VisionTransformer, seed: int = 0) -> Any:
    """Random params of the right shapes without running the (slow to compile) initialisers."""
    abstract = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), IMAGE)["params"]
    rng = np.random.RandomState(seed)

    def fill(name: str, leaf: Any) -> np.ndarray:
        noise = rng.normal(scale=0.2, size=leaf.shape).astype(np.float32)
        return noise + 1.0 if name.endswith("scale") else noise

    return map_with_names(fill, abstract)


def _jit(fn: Callable[..., Any], **kw: Any) -> Callable[..., Any]:
    """``jax.jit`` with cheap CPU compiles: compiling, not running, dominates these tiny tests."""
    return jax.jit(fn, compiler_options={"xla_backend_optimization_level": 0}, **kw)


@functools.lru_cache
def _apply(model: VisionTransformer) -> Callable[..., Any]:
    """One compiled apply per model (eager flax compiles op by op, and scanned models on every call).

    Outputs come back as numpy arrays, so that the checks on them compile nothing more.
    """
    compiled = _jit(model.apply, static_argnames=("train",))
    return lambda *args, **kw: jax.tree.map(np.asarray, compiled(*args, **kw))


def _count(params: Any) -> int:
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(params))


def _block_names(prefix: str) -> set[str]:
    names = {f"{prefix}/{ln}/{p}" for ln in ("LayerNorm_0", "LayerNorm_1") for p in ("scale", "bias")}
    names |= {f"{prefix}/MlpBlock_0/{d}/{p}" for d in ("Dense_0", "Dense_1") for p in ("kernel", "bias")}
    names |= {
        f"{prefix}/MultiHeadDotProductAttention_0/{m}/{p}"
        for m in ("query", "key", "value", "out")
        for p in ("kernel", "bias")
    }
    return names


def _expected_names(pool_type: str, depth: int = 2) -> set[str]:
    names = {"embedding/kernel", "embedding/bias", "pos_embedding", "head/kernel", "head/bias"}
    names |= {"Transformer/encoder_norm/scale", "Transformer/encoder_norm/bias"}
    for i in range(depth):
        names |= _block_names(f"Transformer/encoderblock_{i}")
    if pool_type == "tok":
        names.add("cls")
    if pool_type == "map":
        names |= {
            n.replace("Transformer/encoderblock_0", "MAPHead_0") for n in _block_names("Transformer/encoderblock_0")
        }
        names -= {"MAPHead_0/LayerNorm_1/scale", "MAPHead_0/LayerNorm_1/bias"}
        names.add("MAPHead_0/probe")
    return names


# ---------------------------------------------------------------- variants


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_variant_has_the_right_shapes(variant: str) -> None:
    # scan=True traces one block whatever the depth; eval_shape allocates nothing.
    model = create_model(7, variant=f"{variant}/16", scan=True)
    image = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
    (logits, out), variables = jax.eval_shape(lambda x: model.init_with_output(jax.random.key(0), x), image)
    width, depth, mlp_dim, heads = VARIANTS[variant]
    assert logits.shape == (2, 7)
    assert out["pre_logits"].shape == (2, width)
    assert out["encoded"].shape == (2, 4, width)
    assert out["stem"].shape == (2, 2, 2, width)
    shapes = _shapes(variables["params"])
    block = "Transformer/encoderblock"
    assert shapes[f"{block}/MultiHeadDotProductAttention_0/query/kernel"] == (depth, width, heads, width // heads)
    assert shapes[f"{block}/MultiHeadDotProductAttention_0/out/kernel"] == (depth, heads, width // heads, width)
    assert shapes[f"{block}/MlpBlock_0/Dense_0/kernel"] == (depth, width, mlp_dim)
    assert shapes["embedding/kernel"] == (16, 16, 3, width)
    assert shapes["pos_embedding"] == (1, 4, width)
    per_block = 4 * width + 4 * (width * width + width) + 2 * width * mlp_dim + mlp_dim + width
    expected = (16 * 16 * 3 + 1) * width + 4 * width + depth * per_block + 2 * width + (width + 1) * 7
    assert _count(variables["params"]) == expected


@pytest.mark.parametrize(
    "variant, image_size, expected",
    [
        # Encoder-only parameter counts of the published models (timm's counts minus head, cls and cls posemb).
        ("B/16", 224, 85_797_120),
        ("L/16", 224, 303_299_584),
    ],
)
def test_known_parameter_counts(variant: str, image_size: int, expected: int) -> None:
    model = create_model(None, variant=variant, scan=True)
    image = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
    variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), image)
    assert _count(variables["params"]) == expected


def test_decode_variant() -> None:
    assert decode_variant("So400m/14") == {
        "width": 1152,
        "depth": 27,
        "mlp_dim": 4304,
        "num_heads": 16,
        "patch_size": (14, 14),
    }
    assert decode_variant("Ti") == {"width": 192, "depth": 12, "mlp_dim": 768, "num_heads": 3}
    assert decode_variant("G-opt/14")["width"] == 1536
    model = create_model(5, variant="mu/32", depth=3)
    assert (model.width, model.depth, model.patch_size, model.num_classes) == (32, 3, (32, 32), 5)


def test_unknown_variant_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError) as err:
        decode_variant("Q/16")
    for name in ("mu", "Ti", "S", "M", "B", "L", "So400m", "H", "g", "g-opt", "G", "G-opt", "e"):
        assert name in str(err.value)
    with pytest.raises(ValueError, match="patch size"):
        decode_variant("B/x")


def test_registry_finds_vit() -> None:
    assert registry.model_factory("vit") is create_model
    model = registry.model_factory("vit")(3, variant="mu/8")
    assert isinstance(model, VisionTransformer) and model.num_classes == 3 and model.patch_size == (8, 8)


# ---------------------------------------------------------------- names and layout


@pytest.mark.parametrize("pool_type", ["gap", "map", "tok", "0", "none"])
def test_parameter_names_match_big_vision(pool_type: str) -> None:
    model = VisionTransformer(num_classes=5, pool_type=pool_type, **TINY)
    variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), IMAGE)
    assert set(variables) == {"params"}
    assert _names(variables["params"]) == _expected_names(pool_type)


def test_rep_size_adds_pre_logits() -> None:
    model = VisionTransformer(num_classes=5, rep_size=24, **TINY)
    params = _random_params(model)
    assert _names(params) == _expected_names("gap") | {"pre_logits/kernel", "pre_logits/bias"}
    _, out = _apply(model)({"params": params}, IMAGE)
    assert out["pre_logits"].shape == (2, 24)
    assert out["pre_logits_2d"].shape == (2, 4, 4, 24)
    assert float(np.max(np.abs(out["pre_logits"]))) <= 1.0  # tanh
    as_width = jax.eval_shape(lambda x: VisionTransformer(rep_size=True, **TINY).init(jax.random.key(0), x), IMAGE)[
        "params"
    ]
    assert as_width["pre_logits"]["kernel"].shape == (32, 32)  # rep_size=True -> width


def test_outputs_and_intermediates() -> None:
    model = VisionTransformer(num_classes=5, **TINY)
    logits, out = _apply(model)({"params": _random_params(model)}, IMAGE)
    assert logits.shape == (2, 5)
    np.testing.assert_allclose(out["head_input"], out["encoded"].mean(axis=1), rtol=1e-5, atol=1e-6)
    assert out["encoder"]["block01"]["+mlp"].shape == (2, 16, 32)
    np.testing.assert_array_equal(out["encoder"]["pre_ln"], out["encoder"]["block01"]["+mlp"])
    for key in ("stem", "with_posemb", "encoded", "head_input", "pre_logits", "pre_logits_2d", "logits", "logits_2d"):
        assert key in out


def test_no_head_returns_pre_logits() -> None:
    params = _random_params(VisionTransformer(num_classes=None, **TINY))
    assert not any(name.startswith("head/") for name in _names(params))
    for num_classes in (None, 0):
        x, out = _apply(VisionTransformer(num_classes=num_classes, **TINY))({"params": params}, IMAGE)
        assert x.shape == (2, 32) and "logits" not in out
        np.testing.assert_array_equal(x, out["pre_logits"])


@pytest.mark.parametrize("pool_type, shape", [("tok", (2, 5)), ("map", (2, 5)), ("0", (2, 5)), ("none", (2, 16, 5))])
def test_pool_types_and_head_shapes(pool_type: str, shape: tuple[int, ...]) -> None:
    model = VisionTransformer(num_classes=5, pool_type=pool_type, **TINY)
    logits, out = _apply(model)({"params": _random_params(model)}, IMAGE)
    assert logits.shape == shape
    assert out["logits_2d"].shape == (2, 4, 4, 5)
    assert np.all(np.isfinite(logits))
    if pool_type == "0":
        np.testing.assert_array_equal(out["head_input"], out["encoded"][:, 0])


def test_unknown_pool_type_lists_valid_ones() -> None:
    with pytest.raises(ValueError, match="gap, map, tok"):
        VisionTransformer(pool_type="avg", **TINY)


def test_initialisers() -> None:
    # One real init (the initialisers are slow to compile on CPU), covering the [cls] token and the MAP-free path.
    model = VisionTransformer(num_classes=5, pool_type="tok", **TINY)
    variables = _jit(model.init)(jax.random.key(0), IMAGE)
    params = variables["params"]
    np.testing.assert_array_equal(params["cls"], 0.0)
    np.testing.assert_array_equal(params["head"]["kernel"], 0.0)
    np.testing.assert_array_equal(_apply(model)(variables, IMAGE)[0], 0.0)  # zero-init head, zero bias
    # Learned posemb ~ N(0, 1/width).
    assert abs(float(np.std(params["pos_embedding"])) - 1 / math.sqrt(32)) < 0.03
    mlp = params["Transformer"]["encoderblock_0"]["MlpBlock_0"]["Dense_0"]
    assert 0 < float(np.max(np.abs(mlp["bias"]))) < 1e-4  # N(0, 1e-6) bias
    limit = math.sqrt(6 / (32 + 48))  # xavier_uniform bound
    assert 0.8 * limit < float(np.max(np.abs(mlp["kernel"]))) <= limit
    query = params["Transformer"]["encoderblock_0"]["MultiHeadDotProductAttention_0"]["query"]
    assert float(np.max(np.abs(query["kernel"]))) <= math.sqrt(6 / (32 + 32))  # xavier over [D, heads*head_dim]
    np.testing.assert_array_equal(query["bias"], 0.0)


# ---------------------------------------------------------------- scan


def test_scan_and_pyloop_agree() -> None:
    kw: dict[str, Any] = {"num_classes": 5, "pool_type": "map", **TINY}
    loop, scan = VisionTransformer(**kw), VisionTransformer(
        scan=True, **kw
    )  # scan remats with the default "nothing_saveable" policy
    params = _random_params(loop)
    scan_params = pyloop_to_scan(params)
    expected = jax.eval_shape(lambda x: scan.init(jax.random.key(0), x), IMAGE)["params"]
    assert _shapes(scan_params) == _shapes(expected)
    jax.tree.map(np.testing.assert_array_equal, scan_to_pyloop(scan_params), params)

    def loss(model: VisionTransformer, p: Any) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        logits, out = model.apply({"params": p}, IMAGE)
        return jnp.sum(logits**2), (logits, out["encoder"]["block01"]["sa"])

    grad_loop = _jit(jax.grad(lambda p: loss(loop, p), has_aux=True))
    grad_scan = _jit(jax.grad(lambda p: loss(scan, p), has_aux=True))
    grads, (y_loop, sa_loop) = grad_loop(params)
    scan_grads, (y_scan, sa_scan) = grad_scan(scan_params)
    np.testing.assert_allclose(y_scan, y_loop, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(sa_scan, sa_loop, atol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5), scan_to_pyloop(scan_grads), grads)

    no_remat = VisionTransformer(scan=True, remat_policy="none", **kw)
    np.testing.assert_allclose(_apply(no_remat)({"params": scan_params}, IMAGE)[0], y_loop, rtol=1e-5, atol=1e-5)


def test_unknown_remat_policy_lists_valid_ones() -> None:
    with pytest.raises(ValueError, match="nothing_saveable"):
        VisionTransformer(scan=True, remat_policy="save_nothing", **TINY)


# ---------------------------------------------------------------- dropout, posemb, dtypes


@pytest.mark.parametrize("scan", [False, True])
def test_dropout_only_in_training(scan: bool) -> None:
    model = VisionTransformer(num_classes=5, dropout=0.3, scan=scan, **TINY)
    params = _random_params(model)
    apply = _apply(model)
    a = apply({"params": params}, IMAGE)[0]
    np.testing.assert_array_equal(apply({"params": params}, IMAGE)[0], a)

    def train(seed: int) -> jax.Array:
        return apply({"params": params}, IMAGE, train=True, rngs={"dropout": jax.random.key(seed)})[0]

    t1, t2 = train(1), train(2)
    assert not np.allclose(t1, t2)
    assert not np.allclose(t1, a)
    np.testing.assert_array_equal(train(1), t1)


def test_sincos2d_posemb_has_no_params() -> None:
    model = VisionTransformer(num_classes=5, posemb="sincos2d", **TINY)
    params = _random_params(model)
    assert _names(params) == _expected_names("gap") - {"pos_embedding"}
    _, out = _apply(model)({"params": params}, IMAGE)
    added = out["with_posemb"] - out["stem"].reshape(2, 16, 32)
    np.testing.assert_allclose(added, np.broadcast_to(posemb_sincos_2d(4, 4, 32), (2, 16, 32)), atol=1e-5)
    with pytest.raises(ValueError, match="learn, sincos2d"):
        VisionTransformer(posemb="rope", **TINY)
    with pytest.raises(ValueError, match="divisible by num_heads"):
        VisionTransformer(width=30, num_heads=4)


def test_posemb_sincos_2d_values() -> None:
    pe = np.asarray(posemb_sincos_2d(3, 5, 16))
    assert pe.shape == (1, 15, 16)
    omega = 1.0 / 10_000.0 ** (np.arange(4) / 3)
    row, col = 2, 3  # token index row * w + col
    expected = np.concatenate([np.sin(col * omega), np.cos(col * omega), np.sin(row * omega), np.cos(row * omega)])
    np.testing.assert_allclose(pe[0, row * 5 + col], expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="divisible by 4"):
        posemb_sincos_2d(2, 2, 30)


def test_bfloat16_matmuls_keep_fp32_params() -> None:
    kw: dict[str, Any] = {"num_classes": 5, "pool_type": "tok", **TINY}
    model = VisionTransformer(dtype_mm="bfloat16", **kw)
    abstract = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), IMAGE)
    assert {leaf.dtype for leaf in jax.tree.leaves(abstract)} == {jnp.dtype("float32")}
    params = _random_params(model)
    logits, out = _apply(model)({"params": params}, IMAGE)
    assert out["stem"].dtype == jnp.bfloat16
    assert np.all(np.isfinite(logits))
    reference = _apply(VisionTransformer(**kw))({"params": params}, IMAGE)[0]
    np.testing.assert_allclose(logits, reference, rtol=0.1, atol=0.1)
    # The scanned stack must keep its carry's dtype; tracing it is enough to check that.
    scan = VisionTransformer(dtype_mm="bfloat16", scan=True, **kw)
    scan_out = jax.eval_shape(lambda p, x: scan.apply({"params": p}, x, train=True), pyloop_to_scan(params), IMAGE)
    assert scan_out[0].shape == (2, 5) and scan_out[1]["encoded"].dtype == jnp.float32
    assert scan_out[1]["encoder"]["block00"]["+mlp"].dtype == jnp.bfloat16


# ---------------------------------------------------------------- resample_posemb


def test_resample_posemb_keeps_values_at_same_size() -> None:
    posemb = np.random.RandomState(0).normal(size=(1, 16, 8)).astype(np.float32)
    np.testing.assert_array_equal(resample_posemb(posemb, 4, 4), posemb)


def test_resample_posemb_matches_scipy_zoom() -> None:
    posemb = np.random.RandomState(0).normal(size=(1, 49, 6)).astype(np.float32)
    new = resample_posemb(posemb, 12, 12)
    assert new.shape == (1, 144, 6) and new.dtype == np.float32
    reference = scipy.ndimage.zoom(posemb.reshape(7, 7, 6), (12 / 7, 12 / 7, 1), order=1).reshape(1, 144, 6)
    np.testing.assert_allclose(new, reference, rtol=1e-5, atol=1e-5)
    down = resample_posemb(posemb, 3, 5)
    assert down.shape == (1, 15, 6)
    grid = posemb.reshape(7, 7, 6)
    np.testing.assert_allclose(
        down.reshape(3, 5, 6)[[0, 0, -1, -1], [0, -1, 0, -1]], grid[[0, 0, -1, -1], [0, -1, 0, -1]]
    )


def test_resample_posemb_non_square_and_errors() -> None:
    posemb = np.arange(2 * 3 * 1, dtype=np.float32).reshape(1, 6, 1)  # rows [0 1 2], [3 4 5]
    new = resample_posemb(posemb, 3, 3, old_hw=(2, 3))
    np.testing.assert_allclose(new.reshape(3, 3), np.array([[0, 1, 2], [1.5, 2.5, 3.5], [3, 4, 5]]))
    with pytest.raises(ValueError, match="square"):
        resample_posemb(np.zeros((1, 17, 4)), 4, 4)
    with pytest.raises(ValueError, match=r"\[1, N, D\]"):
        resample_posemb(np.zeros((16, 4)), 4, 4)
