"""The optimizer built from a config: update values, masks, freezing and errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from bv.core.optimizers import make_optimizer, resolve_transform
from bv.core.tree import flatten_with_names


def get_count(opt_state) -> int:
    """The number of updates applied so far, read from the schedule's own counter."""
    counts = [
        leaf.count
        for leaf in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByScheduleState))
        if isinstance(leaf, optax.ScaleByScheduleState)
    ]
    return int(counts[0])


def small_params():
    return {
        "Dense_0": {"kernel": jnp.full((2, 3), 1.0), "bias": jnp.full((3,), 2.0)},
        "head": {"kernel": jnp.full((3, 2), 3.0), "bias": jnp.full((2,), 4.0)},
    }


def make_config(**fields):
    defaults = dict(lr=0.1, optax_name="big_vision.sgd", schedule=dict(decay_type="constant"))
    return ml_collections.ConfigDict({**defaults, **fields})


def ones(params):
    return jax.tree.map(jnp.ones_like, params)


def assert_tree_close(actual, expected, **kw):
    jax.tree.map(lambda a, e: np.testing.assert_allclose(np.asarray(a), np.asarray(e), **kw), actual, expected)


def test_updates_follow_lr_and_schedule():
    params = small_params()
    total = 10
    config = make_config(optax_name="scale", optax=dict(step_size=0.5), schedule=dict(decay_type="linear"))
    tx, fns = make_optimizer(config, params, total)
    assert [name for name, _ in fns] == ["lr"]
    state = tx.init(params)
    update = jax.jit(tx.update)
    for step in range(total):
        updates, state = update(ones(params), state)
        sched = (total - step) / total
        np.testing.assert_allclose(float(fns[0][1](step)), 0.1 * sched, rtol=1e-6)
        assert_tree_close(updates, jax.tree.map(lambda g: -sched * 0.1 * 0.5 * g, ones(params)), rtol=1e-5)
        assert int(get_count(state)) == step + 1


def test_lr_mults_scale_updates():
    params = small_params()
    config = make_config(lr_mults=[("head/.*", 10.0), ("Dense_0/bias", 0.5)])
    tx, _ = make_optimizer(config, params, 10)
    updates, _ = jax.jit(tx.update)(ones(params), tx.init(params))
    assert_tree_close(updates["head"], {"kernel": -np.ones((3, 2)), "bias": -np.ones(2)}, rtol=1e-6)
    assert_tree_close(updates["Dense_0"], {"kernel": -0.1 * np.ones((2, 3)), "bias": -0.05 * np.ones(3)}, rtol=1e-6)


def test_lr_mults_must_be_positive():
    with pytest.raises(ValueError, match="must be positive.*schedule=None"):
        make_optimizer(make_config(lr_mults=[("head/.*", 0.0)]), small_params(), 10)


def test_weight_decay_defaults_to_kernels_and_is_not_scaled_by_lr():
    params = small_params()
    config = make_config(lr=0.5, wd=0.1, schedule=dict(decay_type="linear"))
    tx, _ = make_optimizer(config, params, 10)
    zeros = jax.tree.map(jnp.zeros_like, params)
    state, update = tx.init(params), jax.jit(tx.update)
    updates, state = update(zeros, state, params)
    # Step 0: schedule 1; decay is wd * param on kernels, biases untouched.
    assert_tree_close(updates["Dense_0"], {"kernel": -0.1 * np.ones((2, 3)), "bias": np.zeros(3)}, atol=1e-7)
    assert_tree_close(updates["head"], {"kernel": -0.3 * np.ones((3, 2)), "bias": np.zeros(2)}, atol=1e-7)
    # Step 5: the linear schedule (0.5) multiplies the decay too.
    for _ in range(5):
        updates, state = update(zeros, state, params)
    np.testing.assert_allclose(np.asarray(updates["head"]["kernel"]), -0.5 * 0.3 * np.ones((3, 2)), rtol=1e-6)


def test_wd_mults_choose_what_decays():
    params = small_params()
    config = make_config(wd=0.1, wd_mults=[(".*/bias", 2.0), ("head/kernel", 0.5)])
    tx, _ = make_optimizer(config, params, 10)
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = jax.jit(tx.update)(zeros, tx.init(params), params)
    expected = {
        "Dense_0": {"kernel": np.zeros((2, 3)), "bias": -0.2 * 2.0 * np.ones(3)},
        "head": {"kernel": -0.05 * 3.0 * np.ones((3, 2)), "bias": -0.2 * 4.0 * np.ones(2)},
    }
    assert_tree_close(updates, expected, rtol=1e-6, atol=1e-7)


def test_frozen_params_are_unchanged_and_have_no_state():
    params = {"img": {"kernel": jnp.full((4, 3), 1.0), "bias": jnp.zeros(3)}, "txt": {"kernel": jnp.ones((3, 2))}}
    config = make_config(
        optax_name="scale_by_adam",
        wd=0.1,
        grad_clip_norm=1.0,
        schedule=[("img/.*", None), (".*", dict(decay_type="cosine", warmup_steps=1))],
    )
    tx, fns = make_optimizer(config, params, 6)
    assert [name for name, _ in fns] == ["lr"]
    state = tx.init(params)
    state_names = [name for name, _ in flatten_with_names(state)]
    assert not any("img" in name for name in state_names), state_names
    assert any("txt/kernel" in name for name in state_names)

    @jax.jit
    def step(params, state):
        grads = jax.tree.map(lambda p: 3.0 * p + 1.0, params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    new = params
    for _ in range(4):
        new, state = step(new, state)
    np.testing.assert_array_equal(np.asarray(new["img"]["kernel"]), np.asarray(params["img"]["kernel"]))
    np.testing.assert_array_equal(np.asarray(new["img"]["bias"]), np.asarray(params["img"]["bias"]))
    assert not np.allclose(np.asarray(new["txt"]["kernel"]), np.asarray(params["txt"]["kernel"]))
    assert int(get_count(state)) == 4


def test_multiple_schedules_with_mult():
    params = small_params()
    config = make_config(
        schedule=[
            ("head/.*", dict(decay_type="constant", mult=2.0)),
            ("Dense_0/.*", dict(decay_type="linear")),
        ]
    )
    tx, fns = make_optimizer(config, params, 10)
    assert [name for name, _ in fns] == ["lr", "lr_1"]
    np.testing.assert_allclose([float(fn(5)) for _, fn in fns], [0.2, 0.05], rtol=1e-6)
    state, update = tx.init(params), jax.jit(tx.update)
    for _ in range(6):
        updates, state = update(ones(params), state)
    # The sixth update runs at step 5.
    np.testing.assert_allclose(np.asarray(updates["head"]["bias"]), [-0.2, -0.2], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(updates["Dense_0"]["bias"]), [-0.05] * 3, rtol=1e-6)


def test_grad_clip_norm_caps_the_update_and_ignores_frozen_grads():
    params = small_params()

    def filled(value):
        return jax.tree.map(lambda p: np.full(p.shape, value, np.float32), params)

    tx, _ = make_optimizer(make_config(lr=1.0, grad_clip_norm=1.0), params, 10)
    update = jax.jit(tx.update)
    updates, _ = update(filled(10.0), tx.init(params))
    np.testing.assert_allclose(float(optax.tree.norm(updates)), 1.0, rtol=1e-5)
    # Small gradients pass unchanged.
    updates, _ = update(filled(0.01), tx.init(params))
    assert_tree_close(updates, filled(-0.01), rtol=1e-6)

    # Huge gradients of frozen params do not shrink the others.
    schedule = [("head/.*", None), (".*", {"decay_type": "constant"})]
    tx, _ = make_optimizer(make_config(lr=1.0, grad_clip_norm=1.0, schedule=schedule), params, 10)
    grads = {"Dense_0": filled(0.01)["Dense_0"], "head": filled(1000.0)["head"]}
    updates, _ = jax.jit(tx.update)(grads, tx.init(params))
    assert_tree_close(updates, {"Dense_0": filled(-0.01)["Dense_0"], "head": filled(0.0)["head"]}, rtol=1e-6)


def test_adafactor_variant_decreases_a_quadratic_loss():
    key1, key2 = jax.random.split(jax.random.PRNGKey(0))
    params = {"Dense_0": {"kernel": jax.random.normal(key1, (40, 36)), "bias": jnp.zeros(36)}}
    target = {"Dense_0": {"kernel": jax.random.normal(key2, (40, 36)), "bias": jnp.ones(36)}}

    def loss(p):
        return sum(jnp.sum((a - b) ** 2) for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(target)))

    config = make_config(optax_name="big_vision.scale_by_adafactor", lr=0.05)
    tx, _ = make_optimizer(config, params, 30)
    state = tx.init(params)
    factored = [s for s in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, optax.FactoredState))]
    factored = [s for s in factored if isinstance(s, optax.FactoredState)]
    # The 40x36 kernel keeps only row and column statistics; the bias keeps a full one.
    kernel_stats = (factored[0].v_row["Dense_0"]["kernel"], factored[0].v_col["Dense_0"]["kernel"])
    assert sorted(s.size for s in kernel_stats) == [36, 40]
    assert factored[0].v["Dense_0"]["kernel"].size == 1
    assert factored[0].v["Dense_0"]["bias"].shape == (36,)
    momentum = [s for s in jax.tree.leaves(state) if s.shape == (40, 36)]
    assert [m.dtype for m in momentum] == [jnp.bfloat16]

    loss_value = jax.jit(loss)
    losses_at_start = float(loss_value(params))

    @jax.jit
    def step(params, state):
        updates, state = tx.update(jax.grad(loss)(params), state, params)
        return optax.apply_updates(params, updates), state

    losses = []
    for _ in range(10):
        params, state = step(params, state)
        losses.append(float(loss_value(params)))
    assert losses[-1] < 0.8 * losses_at_start, losses
    assert all(b < a for a, b in zip(losses, losses[1:])), losses


def test_adafactor_options_from_a_config():
    params = {"w": jnp.ones((4, 4))}
    config = make_config(
        optax_name="big_vision.scale_by_adafactor",
        optax=dict(momentum=None, clipping_threshold=1.0, min_dim_size_to_factor=2, dtype_momentum="float32"),
    )
    tx, _ = make_optimizer(config, params, 5)
    updates, _ = jax.jit(tx.update)(ones(params), tx.init(params), params)
    # Without momentum the first step is rms-normalised: every entry has magnitude lr.
    np.testing.assert_allclose(np.abs(np.asarray(updates["w"])), 0.1 * np.ones((4, 4)), rtol=1e-3)


def test_momentum_hp_accumulates_in_bfloat16():
    params = {"w": jnp.ones(3)}
    tx, _ = make_optimizer(make_config(optax_name="big_vision.momentum_hp"), params, 5)
    state, update = tx.init(params), jax.jit(tx.update)
    assert [leaf.dtype for leaf in jax.tree.leaves(state) if leaf.shape == (3,)] == [jnp.bfloat16]
    _, state = update(ones(params), state)
    updates, state = update(ones(params), state)
    np.testing.assert_allclose(np.asarray(updates["w"]), -0.1 * 1.9 * np.ones(3), rtol=1e-2)


def test_optax_names_resolve():
    assert resolve_transform("scale_by_adam") is optax.scale_by_adam
    assert resolve_transform("optax.scale_by_adam") is optax.scale_by_adam
    assert resolve_transform("contrib.scale_by_adopt") is optax.contrib.scale_by_adopt
    params = {"w": jnp.ones(3)}
    make_optimizer(make_config(optax_name="scale_by_adam", optax=dict(mu_dtype="bfloat16")), params, 5)


def test_unknown_optax_name_lists_examples():
    with pytest.raises(ValueError, match="Unknown optax_name 'scale_by_adamm'.*Did you mean 'scale_by_adam'"):
        make_optimizer(make_config(optax_name="scale_by_adamm"), small_params(), 10)
    with pytest.raises(ValueError, match="big_vision.scale_by_adafactor"):
        make_optimizer(make_config(optax_name="big_vision.adafactor"), small_params(), 10)
    with pytest.raises(ValueError, match="cannot be built with config.optax"):
        make_optimizer(make_config(optax_name="scale_by_adam", optax=dict(beta1=0.9)), small_params(), 10)


def test_unknown_decay_type_in_config():
    with pytest.raises(ValueError, match="Unknown decay_type 'cos'.*cosine"):
        make_optimizer(make_config(schedule=dict(decay_type="cos")), small_params(), 10)


@pytest.mark.parametrize(
    "fields",
    [
        dict(lr_mults=[("heads/.*", 2.0)]),
        dict(wd=0.1, wd_mults=[("heads/.*", 2.0)]),
        dict(schedule=[("heads/.*", None), (".*", {})]),
    ],
)
def test_regex_matching_nothing_is_an_error(fields):
    with pytest.raises(ValueError, match="regex 'heads/\\.\\*' matches no parameter.*'Dense_0/bias'"):
        make_optimizer(make_config(**fields), small_params(), 10)


def test_leading_slash_gets_a_hint():
    with pytest.raises(ValueError, match="never start with '/'"):
        make_optimizer(make_config(lr_mults=[("/head/.*", 2.0)]), small_params(), 10)


def test_schedule_must_cover_every_param():
    with pytest.raises(ValueError, match="not covered: 'head/bias', 'head/kernel'"):
        make_optimizer(make_config(schedule=[("Dense_0/.*", {})]), small_params(), 10)


def test_config_mistakes_are_named():
    with pytest.raises(ValueError, match="config.lr"):
        make_optimizer(ml_collections.ConfigDict({"schedule": {}}), small_params(), 10)
    with pytest.raises(ValueError, match="freezes every parameter"):
        make_optimizer(make_config(schedule=[(".*", None)]), small_params(), 10)
    with pytest.raises(ValueError, match="'mult', not 'base'"):
        make_optimizer(make_config(schedule=dict(base=2.0)), small_params(), 10)
    with pytest.raises(ValueError, match="use config.wd"):
        make_optimizer(make_config(weight_decay=0.1), small_params(), 10)
