import os

# 8 simulated CPU devices, before jax starts its backend; optimization level 0 makes XLA compile ~3x faster here.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
)
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import pytest  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

from bv.core import sharding  # noqa: E402
from bv.core.accumulate import accumulate_grads, split_microbatches  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def eight_devices():
    assert jax.device_count() == 8, "XLA_FLAGS must give 8 CPU devices before jax starts"


@pytest.fixture(scope="module")
def vit():
    import bv.vit

    model = bv.vit.create_model(
        num_classes=10, width=32, depth=1, mlp_dim=64, num_heads=2, patch_size=(4, 4), head_zeroinit=False
    )
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))["params"])
    rng = np.random.default_rng(0)  # host-filled params: compiling flax's init is slow on these CPUs
    params = jax.tree.map(lambda s: (0.1 * rng.standard_normal(s.shape)).astype(s.dtype), shapes)

    def grad_fn(params, batch, rng):
        def loss_fn(params):
            logits, _ = model.apply({"params": params}, batch["image"])
            loss = optax.softmax_cross_entropy(logits, batch["labels"]).mean()
            accuracy = jnp.mean(jnp.argmax(logits, -1) == jnp.argmax(batch["labels"], -1))
            return loss, {"accuracy": accuracy}

        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return loss, metrics, grads

    batch = {
        "image": jax.random.normal(jax.random.PRNGKey(1), (16, 16, 16, 3)),
        "labels": jax.nn.one_hot(jax.random.randint(jax.random.PRNGKey(2), (16,), 0, 10), 10),
    }
    return params, grad_fn, batch


def test_microbatches_match_the_full_batch_and_its_adam_step(vit):
    params, grad_fn, batch = vit
    tx = optax.adam(1e-2)

    rng = jax.random.PRNGKey(0)
    loss, metrics, grads = jax.jit(grad_fn)(params, batch, rng)
    acc_loss, acc_metrics, acc_grads = jax.jit(accumulate_grads, static_argnums=(0, 4))(grad_fn, params, batch, rng, 4)

    @jax.jit
    def adam_step(params, grads):
        updates, _ = tx.update(grads, tx.init(params), params)
        return optax.apply_updates(params, updates)

    np.testing.assert_allclose(acc_loss, loss, rtol=1e-5)
    np.testing.assert_allclose(acc_metrics["accuracy"], metrics["accuracy"], rtol=1e-6)
    assert jax.tree.structure(acc_grads) == jax.tree.structure(grads)
    grads, acc_grads = jax.device_get((grads, acc_grads))
    scale = max(np.max(np.abs(g)) for g in jax.tree.leaves(grads))
    for g, a in zip(jax.tree.leaves(grads), jax.tree.leaves(acc_grads)):
        assert a.dtype == g.dtype == np.float32
        np.testing.assert_allclose(a, g, rtol=1e-5, atol=1e-6 * scale)
    assert np.sqrt(sum(np.sum(g**2) for g in jax.tree.leaves(grads))) > 0.1  # a real gradient, not zeros
    # Adam's first step is about lr * g / (|g| + eps): tiny entries amplify rounding, hence atol = lr / 1000.
    new, acc_new = adam_step(params, grads), adam_step(params, acc_grads)
    for p, a in zip(jax.tree.leaves(jax.device_get(new)), jax.tree.leaves(jax.device_get(acc_new))):
        np.testing.assert_allclose(a, p, rtol=1e-5, atol=1e-5)


def test_each_microbatch_gets_fold_in_of_its_index_and_its_own_examples():
    def grad_fn(params, batch, rng):
        noise = jax.random.uniform(rng)
        loss = jnp.mean(batch["x"]) + noise
        return loss, {"noise": noise, "first": batch["x"][0]}, {"w": params["w"] * loss}

    batch = {"x": jnp.arange(8.0)}
    rng = jax.random.PRNGKey(3)
    loss, metrics, grads = jax.jit(accumulate_grads, static_argnums=(0, 4))(grad_fn, {"w": 2.0}, batch, rng, 4)
    noises = [float(jax.random.uniform(jax.random.fold_in(rng, i))) for i in range(4)]
    np.testing.assert_allclose(metrics["noise"], np.mean(noises), rtol=1e-6)
    np.testing.assert_allclose(loss, 3.5 + np.mean(noises), rtol=1e-6)
    np.testing.assert_allclose(grads["w"], 2.0 * (3.5 + np.mean(noises)), rtol=1e-6)
    np.testing.assert_allclose(metrics["first"], np.mean([0, 1, 2, 3]))  # microbatch i starts at example i
    np.testing.assert_array_equal(split_microbatches(batch, 4)["x"], [[0, 4], [1, 5], [2, 6], [3, 7]])
    # One microbatch is a plain call with the step's rng.
    one = accumulate_grads(grad_fn, {"w": 2.0}, batch, rng, 1)
    np.testing.assert_allclose(one[1]["noise"], jax.random.uniform(rng))


def test_bfloat16_grads_are_summed_in_float32():
    def grad_fn(params, batch, rng):
        del rng
        g = jnp.mean(batch["x"]).astype(jnp.bfloat16)
        return g.astype(jnp.float32), {}, {"w": jnp.full((4,), g, jnp.bfloat16)}

    # 256 microbatches of 1 + 1/256: a bfloat16 running sum would stall at 256 (8 bits of mantissa).
    batch = {"x": jnp.full((256,), 1.0 + 2.0**-7)}
    _, _, grads = jax.jit(accumulate_grads, static_argnums=(0, 4))(grad_fn, {}, batch, None, 256)
    assert grads["w"].dtype == jnp.bfloat16
    np.testing.assert_allclose(grads["w"].astype(np.float32), 1.0 + 2.0**-7)


def test_batch_sharded_over_devices():
    def grad_fn(params, batch, rng):
        def loss_fn(w):
            logits = batch["x"] @ w
            return optax.softmax_cross_entropy(logits, batch["y"]).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        return loss, {}, grads

    rng = np.random.default_rng(1)
    w = jnp.asarray(rng.standard_normal((6, 3)), jnp.float32)
    batch = {"x": rng.standard_normal((32, 6)).astype(np.float32), "y": np.eye(3, dtype=np.float32)[np.arange(32) % 3]}
    mesh = sharding.make_mesh(None)
    sharded = jax.device_put(batch, NamedSharding(mesh, P("data")))
    loss, _, grads = jax.jit(accumulate_grads, static_argnums=(0, 4))(grad_fn, w, sharded, None, 2)
    full_loss, _, full_grads = jax.jit(grad_fn)(w, batch, None)
    np.testing.assert_allclose(loss, full_loss, rtol=1e-5)
    np.testing.assert_allclose(grads, full_grads, rtol=1e-5, atol=1e-7)


def test_errors():
    def grad_fn(params, batch, rng):
        return jnp.mean(batch["x"]), {}, {}

    with pytest.raises(ValueError, match=r"A batch of 10 examples cannot be split into 4 equal microbatches"):
        accumulate_grads(grad_fn, {}, {"x": jnp.zeros((10, 3))}, None, 4)
    with pytest.raises(ValueError, match=r"same leading \(batch\) axis.*\['6', '8'\]"):
        accumulate_grads(grad_fn, {}, {"x": jnp.zeros((8,)), "y": jnp.zeros((6,))}, None, 2)
    with pytest.raises(ValueError, match=r"positive integer, got 0"):
        accumulate_grads(grad_fn, {}, {"x": jnp.zeros((8,))}, None, 0)
    with pytest.raises(ValueError, match=r"positive integer, got 2.0"):
        accumulate_grads(grad_fn, {}, {"x": jnp.zeros((8,))}, None, 2.0)
