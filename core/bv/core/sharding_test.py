import os

# 8 simulated CPU devices, before jax starts its backend; optimization level 0 makes XLA compile ~3x faster here.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
)
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import pytest  # noqa: E402
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P  # noqa: E402

from bv.core import registry, sharding  # noqa: E402
from bv.core.tree import flatten_with_names  # noqa: E402

IMAGE = (2, 16, 16, 3)


@pytest.fixture(autouse=True, scope="module")
def eight_devices():
    assert jax.device_count() == 8, "XLA_FLAGS must give 8 CPU devices before jax starts"


def small_vit():
    import bv.vit

    return bv.vit.create_model(
        num_classes=10, width=64, depth=2, mlp_dim=128, num_heads=4, patch_size=(4, 4), head_zeroinit=False
    )


def vit_state_shapes():
    """The model and the shapes of its params and Adam state (only traced: compiling flax init is slow)."""
    model = small_vit()
    tx = optax.adam(1e-3)

    def init(rng):
        params = model.init(rng, jnp.zeros(IMAGE))["params"]
        return {"params": params, "opt": tx.init(params)}

    return model, jax.eval_shape(init, jax.random.PRNGKey(0))


def random_like(shapes, seed=0):
    """Arrays of the given shapes filled on the host (values only need to be the same for both sides)."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: (0.1 * rng.standard_normal(s.shape)).astype(s.dtype), shapes)


def nbytes(x) -> int:
    return int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize


# ----------------------------------------------------------------------------
# make_mesh
# ----------------------------------------------------------------------------


def test_default_mesh_uses_every_device_on_data():
    mesh = sharding.make_mesh(None)
    assert dict(mesh.shape) == {"data": 8}
    assert sorted(d.id for d in mesh.devices.flat) == sorted(d.id for d in jax.devices())
    assert mesh.axis_types == (AxisType.Auto,)


def test_mesh_infers_the_minus_one_axis():
    mesh = sharding.make_mesh([("data", -1), ("model", 2)])
    assert mesh.axis_names == ("data", "model")
    assert dict(mesh.shape) == {"data": 4, "model": 2}
    mesh = sharding.make_mesh([["replica", 2], ["data", -1]])  # lists, as a ConfigDict gives them
    assert dict(mesh.shape) == {"replica": 2, "data": 4}
    assert dict(sharding.make_mesh([("data", 2), ("model", 4)]).shape) == {"data": 2, "model": 4}
    assert dict(sharding.make_mesh(None, devices=jax.devices()[:4]).shape) == {"data": 4}


@pytest.mark.parametrize(
    "mesh_config, message",
    [
        ([("data", 3)], r"asks for 3 devices.*there are 8"),
        ([("data", 2), ("model", 2)], r"asks for 4 devices \(2 x 2\).*there are 8"),
        ([("data", -1), ("model", 3)], r"multiply to 3, which does not divide the 8 devices"),
        ([("data", -1), ("model", -1)], r"2 axes of size -1"),
        ([("data", -1), ("data", 1)], r"names the axis 'data' twice"),
        ([("data", 0)], r"positive integer or -1"),
        ([("data",)], r"expected \(axis name, size\)"),
        ([], r"empty"),
    ],
)
def test_mesh_errors(mesh_config, message):
    with pytest.raises(ValueError, match=message):
        sharding.make_mesh(mesh_config)


# ----------------------------------------------------------------------------
# param_shardings
# ----------------------------------------------------------------------------


def test_fsdp_splits_params_and_adam_state_over_devices():
    _, shapes = vit_state_shapes()
    mesh = sharding.make_mesh([("data", -1)])
    shardings = sharding.param_shardings(shapes, mesh, [(".*", "fsdp(axis='data', min_size_mb=0)")])
    state = jax.device_put(random_like(shapes), shardings)

    per_device = sharding.bytes_per_device(state)
    total = sum(nbytes(x) for x in jax.tree.leaves(state))
    worst = max(per_device.values())
    print(f"FSDP over 8 devices: total {total} bytes, ideal {total / 8:.0f} per device, worst device {worst} bytes")
    assert len(per_device) == 8
    assert worst <= 1.15 * total / 8
    # The same figures from shapes alone, before anything is allocated.
    assert sharding.bytes_per_device(shapes, shardings) == per_device

    names = dict(flatten_with_names(shardings))
    kernel = "Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel"  # (64, 128): the larger dim is split
    assert names[f"params/{kernel}"].spec == P(None, "data")
    assert names[f"opt/0/mu/{kernel}"].spec == P(None, "data")
    assert names["opt/0/count"].spec == P()  # a scalar stays whole
    assert names["params/head/bias"].spec == P()  # 10 is not divisible by 8


def test_fsdp_min_size_keeps_small_leaves_replicated():
    _, shapes = vit_state_shapes()
    mesh = sharding.make_mesh(None)
    min_mb = 0.01  # 10 KiB: the 64x128 kernels are sharded, the biases and norms are not
    shardings = sharding.param_shardings(shapes["params"], mesh, [(".*", f"fsdp(axis='data', min_size_mb={min_mb})")])
    big = small = 0
    for (name, s), (_, x) in zip(flatten_with_names(shardings), flatten_with_names(shapes["params"])):
        if nbytes(x) < min_mb * 2**20:
            assert s.spec == P(), name
            small += 1
        elif any(d % 8 == 0 for d in x.shape):
            assert "data" in s.spec, name
            big += 1
    assert big >= 8 and small >= 8
    # big_vision's spelling of the argument works too, and 4 MiB (the default) shards nothing this small.
    for spec in ("fsdp(axis='data', min_size_to_shard_mb=4)", "fsdp"):
        default = sharding.param_shardings(shapes["params"], mesh, [(".*", spec)])
        assert all(s.spec == P() for s in jax.tree.leaves(default))


def test_shard_dim_and_composition():
    mesh = sharding.make_mesh([("data", 4), ("model", 2)])
    tree = {"w": jax.ShapeDtypeStruct((64, 128), jnp.float32), "b": jax.ShapeDtypeStruct((128,), jnp.float32)}

    def spec_of(strategy):
        return {k: v.spec for k, v in sharding.param_shardings(tree, mesh, strategy).items()}

    assert spec_of([("w", "shard_dim(axis='model', dim=-1)"), (".*", "replicate")]) == {"w": P(None, "model"), "b": P()}
    assert spec_of([(".*", "shard_dim('model', 0)")]) == {"w": P("model"), "b": P("model")}
    # shard_dim first, then fsdp takes the largest dimension still free.
    assert spec_of([(".*", "shard_dim(axis='model', dim=-1)|fsdp(axis='data', min_size_mb=0)")]) == {
        "w": P("data", "model"),
        "b": P("model"),
    }
    # fsdp over both axes (a tuple of mesh axes).
    assert spec_of([(".*", "fsdp(axis=('data', 'model'), min_size_mb=0)")]) == {
        "w": P(None, ("data", "model")),
        "b": P(("data", "model")),
    }
    with pytest.raises(ValueError, match=r"shard_dim\(dim=1\) does not fit 'b'"):
        spec_of([(".*", "shard_dim(axis='model', dim=1)")])
    assert spec_of([(".*", "shard_dim(axis='model', dim=1, ignore_ndim_error=True)")])["b"] == P()
    with pytest.raises(ValueError, match=r"'w' of shape \(64, 3\) cannot be sharded.*3 is not divisible by the 2"):
        sharding.param_shardings({"w": np.zeros((64, 3))}, mesh, [(".*", "shard_dim('model', -1)")])
    with pytest.raises(ValueError, match=r"names mesh axis 'tensor', but the mesh has 'data', 'model'"):
        spec_of([(".*", "shard_dim('tensor', 0)")])
    with pytest.raises(ValueError, match=r"already sharded.*cannot replicate"):
        spec_of([(".*", "shard_dim('model', 0)|replicate")])


def test_first_matching_regex_wins():
    _, shapes = vit_state_shapes()
    mesh = sharding.make_mesh(None)
    fsdp = "fsdp(axis='data', min_size_mb=0)"
    first = sharding.param_shardings(shapes, mesh, [(".*/bias", "replicate"), (".*", fsdp)])
    reverse = sharding.param_shardings(shapes, mesh, [(".*", fsdp), (".*/bias", "replicate")])
    first_names, reverse_names = dict(flatten_with_names(first)), dict(flatten_with_names(reverse))
    bias = "params/Transformer/encoderblock_1/MlpBlock_0/Dense_0/bias"  # (128,)
    assert first_names[bias].spec == P() and reverse_names[bias].spec == P("data")
    assert first_names["opt/0/nu/" + bias[len("params/") :]].spec == P()
    kernel = "params/embedding/kernel"  # (4, 4, 3, 64)
    assert first_names[kernel].spec == reverse_names[kernel].spec == P(None, None, None, "data")


def test_unmatched_leaf_and_unknown_strategy_are_errors():
    _, shapes = vit_state_shapes()
    mesh = sharding.make_mesh(None)
    with pytest.raises(
        ValueError,
        match=r"No sharding strategy regex matches 'Transformer/encoder_norm/bias', .* and \d+ more.*catch-all",
    ):
        sharding.param_shardings(shapes["params"], mesh, [(".*kernel", "replicate")])
    with pytest.raises(
        registry.UnknownNameError, match=r"Unknown sharding strategy 'fdsp'.*fsdp.*replicate.*shard_dim"
    ):
        sharding.param_shardings(shapes, mesh, [(".*", "fdsp(axis='data')")])
    with pytest.raises(ValueError, match=r"Bad sharding strategy 'fsdp\(size=1\)'.*size"):
        sharding.param_shardings(shapes, mesh, [(".*", "fsdp(size=1)")])
    with pytest.raises(ValueError, match=r"Bad sharding strategy regex '\('"):
        sharding.param_shardings(shapes, mesh, [("(", "replicate")])


class Annotated(nn.Module):
    @nn.compact
    def __call__(self, x):
        kernel_init = nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("embed", "mlp"))
        x = nn.Dense(16, kernel_init=kernel_init)(x)
        return nn.Dense(3)(x)


def test_logical_strategy_follows_flax_axis_names_for_params_and_opt_state():
    mesh = sharding.make_mesh([("data", 4), ("model", 2)])
    boxed = jax.eval_shape(Annotated().init, jax.random.PRNGKey(0), jnp.zeros((1, 8)))["params"]
    rules = [("mlp", "model"), ("embed", None)]
    strategy = [(".*", "logical|fsdp(axis='data', min_size_mb=0)")]

    from_boxes = sharding.param_shardings(boxed, mesh, strategy, rules=rules)
    assert from_boxes["Dense_0"]["kernel"].spec == P("data", "model")  # model by name, then fsdp
    assert from_boxes["Dense_1"]["kernel"].spec == P("data")  # (16, 3): no names, fsdp only

    params = nn.unbox(jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), boxed))
    opt = jax.eval_shape(optax.adam(1e-3).init, params)
    tree = {"params": params, "opt": opt}
    from_table = sharding.param_shardings(
        tree, mesh, [(".*", "logical")], logical_axes=nn.get_partition_spec(boxed), rules=rules
    )
    names = dict(flatten_with_names(from_table))
    assert names["params/Dense_0/kernel"].spec == P(None, "model")
    assert names["opt/0/mu/Dense_0/kernel"].spec == P(None, "model")
    assert names["opt/0/nu/Dense_1/kernel"].spec == P()
    by_name = sharding.param_shardings(tree, mesh, [(".*", "logical")], logical_axes={"Dense_0/kernel": (None, "mlp")})
    assert dict(flatten_with_names(by_name))["opt/0/nu/Dense_0/kernel"].spec == P()  # default rules: act_batch only


def test_sharded_loss_matches_unsharded():
    model, shapes = vit_state_shapes()
    mesh = sharding.make_mesh([("data", 4), ("model", 2)])
    strategy = [
        (".*MlpBlock_0/Dense_0/kernel", "shard_dim(axis='model', dim=-1)|fsdp(axis='data', min_size_mb=0)"),
        (".*MlpBlock_0/Dense_1/kernel", "shard_dim(axis='model', dim=0)|fsdp(axis='data', min_size_mb=0)"),
        (".*", "fsdp(axis='data', min_size_mb=0)"),
    ]
    shardings = sharding.param_shardings(shapes, mesh, strategy)
    state = jax.device_put(random_like(shapes), shardings)
    params = state["params"]
    assert params["Transformer"]["encoderblock_0"]["MlpBlock_0"]["Dense_0"]["kernel"].sharding.spec == P(
        "data", "model"
    )

    images = jax.random.normal(jax.random.PRNGKey(1), (8, 16, 16, 3))
    labels = jax.nn.one_hot(jnp.arange(8) % 10, 10)

    def loss_fn(params, images, labels):
        logits, _ = model.apply({"params": params}, images)
        return optax.softmax_cross_entropy(logits, labels).mean()

    expected = jax.jit(loss_fn)(jax.device_get(params), images, labels)
    batch_sharding = NamedSharding(mesh, P("data"))
    with sharding.activation_rules([("act_batch", "data")], mesh):
        sharded_loss = jax.jit(loss_fn)(params, jax.device_put(images, batch_sharding), labels)
    np.testing.assert_allclose(float(sharded_loss), float(expected), rtol=1e-6, atol=1e-6)


def test_activation_rules_shard_the_batch_and_check_axes():
    mesh = sharding.make_mesh([("data", 4), ("model", 2)])

    @jax.jit
    def f(x):
        return nn.with_logical_constraint(2 * x, ("act_batch", "act_emb"))

    with sharding.activation_rules(None, mesh) as rules:  # default: act_batch -> data
        y = f(jnp.ones((8, 6)))
    assert rules == (("act_batch", "data"),)
    assert y.sharding.spec == P("data")
    with sharding.activation_rules([["act_batch", ["data", "model"]]], mesh) as rules:
        y = f(jnp.ones((16, 6)))
    assert rules == (("act_batch", ("data", "model")),)
    assert y.sharding.spec == P(("data", "model"))
    with pytest.raises(ValueError, match=r"names mesh axis 'batch', but the mesh has 'data', 'model'"):
        with sharding.activation_rules([("act_batch", "batch")], mesh):
            pass


def test_bytes_per_device_counts_replicas_in_full():
    mesh = sharding.make_mesh([("data", 4), ("model", 2)])
    tree = {"a": jax.ShapeDtypeStruct((8, 4), jnp.float32), "b": jax.ShapeDtypeStruct((3,), jnp.bfloat16)}
    shards = {"a": NamedSharding(mesh, P("data", "model")), "b": NamedSharding(mesh, P())}
    per_device = sharding.bytes_per_device(tree, shards)
    assert per_device == {d.id: 2 * 2 * 4 + 3 * 2 for d in jax.devices()}
    with pytest.raises(ValueError, match="has no sharding"):
        sharding.bytes_per_device(tree)
