"""The ``sam`` task inside the trainer's own step (``make_train_step``): exact equalities, accumulation, per-shard
perturbation, mixup and frozen parameters, on a tiny ViT and fixed random batches.

Steps are compiled with XLA's backend optimisations off (``xla_backend_optimization_level=0``):
it compiles about three times faster, and the bitwise comparisons need it. With them on,
LLVM may round the same HLO differently in two compiled programs (last-bit differences
in the first layers' gradients, seen here), which says nothing about the math.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from bv.core.optimizers import make_optimizer
from bv.core.run_plan import resolve_schedule
from bv.core.tasks import ClassificationTask, StepInfo, get_task
from bv.core.train_state import make_train_step
from bv.core.tree import flatten_with_names
from bv.sam import SamTask, frozen_names, sam_grads
from bv.sam.task import inner_config

TOTAL_STEPS = 6
BATCH = 8
TINY_VIT = dict(patch_size=(4, 4), width=16, depth=1, num_heads=2, mlp_dim=32, pool_type="gap", head_zeroinit=False)


# Momentum SGD where runs are compared to a tolerance: Adam divides by the root of the squared
# gradient, so a gradient that is zero in exact math (the attention's key bias) makes its
# rounding noise into full-size updates.
MOMENTUM = dict(optax_name="trace", optax=dict(decay=0.9), lr=0.1)


def _config(sam: dict[str, Any] | None = None, **extra: Any) -> ml_collections.ConfigDict:
    fields: dict[str, Any] = dict(
        model_name="vit",
        model=TINY_VIT,
        num_classes=10,
        optax_name="scale_by_adam",
        lr=1e-2,
        wd=1e-4,
        grad_clip_norm=1.0,
        schedule=dict(decay_type="cosine", warmup_steps=1),
    )
    if sam is not None:
        fields.update(task="sam", sam=sam)
    return ml_collections.ConfigDict({**fields, **extra})


def _batches(n: int = TOTAL_STEPS) -> list[dict[str, jax.Array]]:
    rng = np.random.default_rng(0)
    return [
        {
            "image": jnp.asarray(rng.uniform(-1, 1, (BATCH, 16, 16, 1)), jnp.float32),
            "labels": jax.nn.one_hot(rng.integers(0, 10, BATCH), 10),
        }
        for _ in range(n)
    ]


EXACT: dict[str, Any] = {"xla_backend_optimization_level": 0}
SPEC = {"image": jax.ShapeDtypeStruct((BATCH, 16, 16, 1), jnp.float32)}


@functools.cache
def _initial_params() -> Any:
    """The tiny ViT's params, filled on the host (compiling flax's init takes longer than all of a test's steps)."""
    shapes = jax.eval_shape(get_task(_config()).init, jax.random.PRNGKey(0), SPEC)
    rng = np.random.default_rng(0)
    return jax.tree.map(lambda s: (0.1 * rng.standard_normal(s.shape)).astype(s.dtype), shapes)


def _jit(fn: Any, *args: Any) -> Any:
    return jax.jit(fn).lower(*args).compile(compiler_options=EXACT)(*args)


def _train(config: ml_collections.ConfigDict, steps: int = 3, accum: int = 1, mixup: Any = None) -> tuple[Any, list]:
    """``steps`` steps of the trainer's step function; returns the final state and each step's metrics."""
    task = get_task(config)
    params = _initial_params()
    schedule = resolve_schedule(config.schedule, data_size=100, batch_size=BATCH, total_steps=TOTAL_STEPS)
    tx, lr_fns = make_optimizer(config, params, TOTAL_STEPS, schedule=schedule)
    state = {"params": params, "opt": tx.init(params), "rng": jax.random.PRNGKey(1)}
    jitted = jax.jit(make_train_step(task, tx, lr_fns, accum, mixup, None, TOTAL_STEPS))
    step_fn = jitted.lower(state, _batches(1)[0], jnp.int32(1)).compile(compiler_options=EXACT)
    logged = []
    for step, batch in enumerate(_batches(steps), start=1):
        state, metrics = step_fn(state, batch, jnp.int32(step))
        logged.append(jax.device_get(metrics))
    return jax.device_get(state), logged


def _assert_bitwise(a: Any, b: Any) -> None:
    flat_a, flat_b = dict(flatten_with_names(a)), dict(flatten_with_names(b))
    assert flat_a.keys() == flat_b.keys()
    for name in flat_a:
        np.testing.assert_array_equal(np.asarray(flat_a[name]), np.asarray(flat_b[name]), err_msg=name)


def _assert_close(a: Any, b: Any, tol: float) -> None:
    flat_a, flat_b = dict(flatten_with_names(a)), dict(flatten_with_names(b))
    assert flat_a.keys() == flat_b.keys()
    for name in flat_a:
        np.testing.assert_allclose(np.asarray(flat_a[name]), np.asarray(flat_b[name]), rtol=tol, atol=tol, err_msg=name)


def test_gsam_with_alpha_0_and_one_rho_is_sam_bitwise() -> None:
    # Two code paths: SAM returns the perturbed gradient; GSAM decomposes it and subtracts alpha * the residual.
    sam, sam_log = _train(_config(dict(rho=0.05)))
    gsam, gsam_log = _train(_config(dict(rho_max=0.05, rho_min=0.05, alpha=0.0)))
    _assert_bitwise(gsam["params"], sam["params"])
    _assert_bitwise(gsam["opt"], sam["opt"])
    assert [m["training_loss"] for m in gsam_log] == [m["training_loss"] for m in sam_log]
    assert all(m["sam_rho"] == np.float32(0.05) for m in gsam_log)


def test_sam_with_rho_0_is_the_base_optimizer_bitwise() -> None:
    base, base_log = _train(_config())
    sam, sam_log = _train(_config(dict(rho=0.0)))
    _assert_bitwise(sam["params"], base["params"])
    _assert_bitwise(sam["opt"], base["opt"])
    assert [m["training_loss"] for m in sam_log] == [m["training_loss"] for m in base_log]
    assert all(m["sam_gap"] == 0.0 for m in sam_log)  # the second pass ran at the same point


@pytest.mark.parametrize(
    "sam",
    [
        dict(rho_max=0.1, rho_min=0.02, alpha=0.5, adaptive=True),
        dict(rho=0.05, perturbation="per_shard", shards=2),
    ],
    ids=["adaptive_gsam", "per_shard_sam"],
)
def test_gradient_accumulation_gives_the_same_steps(sam: dict[str, Any]) -> None:
    # The perturbation comes from the whole batch's (or group's) gradient, however it is split into microbatches.
    whole, whole_log = _train(_config(sam, **MOMENTUM))
    accumulated, accumulated_log = _train(_config(sam, **MOMENTUM), accum=2)
    _assert_close(accumulated["params"], whole["params"], 1e-6)
    for a, w in zip(accumulated_log, whole_log):
        for key in ("training_loss", "sam_rho", "sam_gap"):
            np.testing.assert_allclose(a[key], w[key], rtol=1e-5, atol=1e-6, err_msg=key)


def test_per_shard_perturbs_each_group_by_its_own_gradient() -> None:
    config = _config(dict(rho=0.05, perturbation="per_shard", shards=2))
    task = get_task(config)
    assert isinstance(task, SamTask)
    params, batch, rng = _initial_params(), _batches(1)[0], jax.random.PRNGKey(3)
    info = StepInfo(jnp.int32(1), 1, TOTAL_STEPS, ())
    rho = jnp.float32(0.05)

    def by_hand(params: Any, batch: Any, rng: jax.Array) -> Any:
        halves = [jax.tree.map(lambda x: x[i * BATCH // 2 : (i + 1) * BATCH // 2], batch) for i in range(2)]
        each = [sam_grads(task.inner.grads, params, h, jax.random.fold_in(rng, i), rho) for i, h in enumerate(halves)]
        mean = jax.tree.map(lambda a, b: (a + b) / 2, each[0], each[1])
        return mean, sam_grads(task.inner.grads, params, batch, rng, rho)

    loss, metrics, grads = _jit(lambda p, b, r: task.step_grads(p, b, r, info), params, batch, rng)
    (want_loss, want_metrics, want_grads), (_, _, global_grads) = _jit(by_hand, params, batch, rng)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
    np.testing.assert_allclose(metrics["sam_gap"], want_metrics["sam_gap"], rtol=1e-5)
    _assert_close(grads, want_grads, 1e-6)
    # Not the global perturbation: that one moves along the whole batch's gradient.
    assert not np.allclose(grads["head"]["kernel"], global_grads["head"]["kernel"], rtol=1e-4, atol=0)


def test_both_passes_see_the_same_mixed_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[np.ndarray] = []
    real_loss = ClassificationTask.loss

    def loss(self, params, batch, rng):  # type: ignore[no-untyped-def]
        jax.debug.callback(lambda x: seen.append(np.asarray(x)), batch["image"])
        return real_loss(self, params, batch, rng)

    monkeypatch.setattr(ClassificationTask, "loss", loss)
    _, logged = _train(_config(dict(rho_max=0.1, rho_min=0.02, alpha=0.5)), steps=2, mixup={"p": 1.0})
    assert len(seen) == 4  # two passes per step
    originals = _batches(2)
    for step in range(2):
        clean, perturbed = seen[2 * step : 2 * step + 2]
        np.testing.assert_array_equal(clean, perturbed)
        assert not np.allclose(clean, originals[step]["image"])  # mixed by the trainer before SAM saw it
    assert all(m["sam_gap"] != 0 for m in logged)


def test_frozen_parameters_are_not_perturbed_and_do_not_move() -> None:
    schedule = [("head/.*", None), (".*", dict(decay_type="cosine"))]
    config = _config(dict(rho=0.05), schedule=schedule)
    task = get_task(config)
    params = _initial_params()
    frozen = frozen_names(config.schedule, params)
    assert frozen == {"head/kernel", "head/bias"}
    # The same parameters the optimizer freezes: exactly those get a zero update.
    tx, _ = make_optimizer(config, params, TOTAL_STEPS)
    ones = jax.tree.map(jnp.ones_like, params)
    updates, _ = tx.update(ones, tx.init(params), params)
    assert {n for n, u in flatten_with_names(updates) if not np.any(np.asarray(u))} == frozen

    # The SAM gradient is the gradient at the params moved along the trained parameters' gradient only.
    assert isinstance(task, SamTask)
    batch, rng = _batches(1)[0], jax.random.PRNGKey(3)
    info = StepInfo(jnp.int32(1), 1, TOTAL_STEPS, ())

    def by_hand(params: Any, batch: Any, rng: jax.Array) -> Any:
        _, _, g = task.inner.grads(params, batch, rng)
        trained = {k: v for k, v in g.items() if k != "head"}
        norm = jnp.sqrt(sum(jnp.vdot(x, x) for x in jax.tree.leaves(trained)))
        moved = {**params, **jax.tree.map(lambda p, x: p + 0.05 * x / norm, {k: params[k] for k in trained}, trained)}
        return task.inner.grads(moved, batch, rng)[2]

    _, _, grads = _jit(lambda p, b, r: task.step_grads(p, b, r, info), params, batch, rng)
    expected = _jit(by_hand, params, batch, rng)
    trained_only = lambda tree: {k: v for k, v in tree.items() if k != "head"}  # noqa: E731
    _assert_close(trained_only(grads), trained_only(expected), 1e-5)
    assert not np.any(grads["head"]["kernel"]) and not np.any(grads["head"]["bias"])

    state, _ = _train(config, steps=2)
    _assert_bitwise(state["params"]["head"], params["head"])


def test_the_wrapped_task_keeps_its_contract() -> None:
    config = _config(dict(rho=0.05))
    task = get_task(config)
    assert isinstance(task, SamTask) and type(task.inner) is ClassificationTask
    assert task.inner.config.task == "classification" and config.task == "sam"  # the user's config is unchanged
    assert task.model is task.inner.model  # attributes of the wrapped task show through
    assert set(task.predict_fns()) == {"predict"}
    images = jnp.zeros((2, 16, 16, 1))
    params = _initial_params()
    logits, _ = task.predict_fns()["predict"](params, images)
    assert logits.shape == (2, 10)
    assert task.logical_axes(params) == task.inner.logical_axes(params)
    assert inner_config(config, "classification").sam.rho == 0.05


def test_the_wrapped_task_s_after_step_still_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """A task that updates values outside the gradient (UViM's codebook) keeps doing so under SAM."""
    seen = []

    def after_step(self, old_params, params, batch, rng, info):  # type: ignore[no-untyped-def]
        seen.append(info)
        return jax.tree.map(jnp.zeros_like, params), {"after_step_ran": jnp.float32(1)}

    monkeypatch.setattr(ClassificationTask, "after_step", after_step)
    state, logged = _train(_config(dict(rho=0.05)), steps=1)
    assert seen and logged[0]["after_step_ran"] == 1
    assert all(not np.any(np.asarray(x)) for x in jax.tree.leaves(state["params"]))
