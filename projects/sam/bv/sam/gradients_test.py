"""SAM and GSAM against the formulas, computed by hand (numpy, float64) on a quadratic, through the trainer's step."""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from bv.core import registry
from bv.core.optimizers import make_optimizer
from bv.core.tasks import Batch, Metrics, Params, StepInfo, Task, get_task
from bv.core.train_state import make_train_step
from bv.sam import gsam_combine, perturb, rho_at, tree_norm
from bv.sam.options import parse_options

W0 = np.array([0.5, -1.0, 2.0])
TOTAL_STEPS = 4
LR = 0.1
LINEAR_END = 0.2


@registry.tasks.register("sam_test_quadratic")
class QuadraticTask(Task):
    """Least squares, ``mean_i (x_i . w - y_i)^2 / 2``, with ``w`` split over two leaves ``a`` (2) and ``b`` (1)."""

    def init(self, rng: jax.Array, batch_spec: Mapping[str, jax.ShapeDtypeStruct]) -> Params:
        return {"a": jnp.asarray(W0[:2], jnp.float32), "b": jnp.asarray(W0[2:], jnp.float32)}

    def loss(self, params: Params, batch: Batch, rng: jax.Array) -> tuple[jax.Array, Metrics]:
        w = jnp.concatenate([params["a"], params["b"]])
        return jnp.mean(0.5 * (batch["x"] @ w - batch["y"]) ** 2), {}

    def predict_fns(self) -> dict[str, Callable[..., Any]]:
        return {"predict": lambda params, x: x @ jnp.concatenate([params["a"], params["b"]])}


def _batches() -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    return [{"x": rng.normal(size=(4, 3)), "y": rng.normal(size=4)} for _ in range(2)]


def _loss(w: np.ndarray, batch: dict[str, np.ndarray]) -> float:
    return float(np.mean(0.5 * (batch["x"] @ w - batch["y"]) ** 2))


def _grad(w: np.ndarray, batch: dict[str, np.ndarray]) -> np.ndarray:
    x, y = batch["x"], batch["y"]
    return x.T @ (x @ w - y) / len(y)  # type: ignore[no-any-return]


def _by_hand(sam: dict[str, Any]) -> tuple[np.ndarray, list[dict[str, float]]]:
    """Two steps of plain SGD with the GSAM gradient, written out."""
    lrs = [LR * (LINEAR_END + (1 - LINEAR_END) * (1 - s / TOTAL_STEPS)) for s in range(TOTAL_STEPS)]
    lr_max, lr_min = max(lrs), min(lrs)  # rho follows the lr over the whole run
    w, logged = W0.copy(), []
    for step, batch in enumerate(_batches()):
        lr = lrs[step]
        rho = sam["rho_min"] + (sam["rho_max"] - sam["rho_min"]) * (lr - lr_min) / (lr_max - lr_min)
        g = _grad(w, batch)
        e = rho * g / np.linalg.norm(g)
        if sam.get("adaptive"):
            e = np.abs(w) * e
        gp = _grad(w + e, batch)
        if sam.get("minimize_fp", True):  # remove from g_p the part of g orthogonal to g_p
            u = gp / np.linalg.norm(gp)
            update = gp - sam["alpha"] * (g - (g @ u) * u)
        else:  # add to g the part of g_p orthogonal to g
            u = g / np.linalg.norm(g)
            update = g + sam["alpha"] * (gp - (gp @ u) * u)
        logged.append(
            {"training_loss": _loss(w, batch), "sam_rho": rho, "sam_gap": _loss(w + e, batch) - _loss(w, batch)}
        )
        w = w - lr * update
    return w, logged


def _by_the_trainer(sam: dict[str, Any]) -> tuple[np.ndarray, list[dict[str, float]]]:
    config = ml_collections.ConfigDict(
        dict(
            task="sam",
            sam=dict(sam, task="sam_test_quadratic"),
            optax_name="big_vision.sgd",
            lr=LR,
            schedule=dict(decay_type="linear", linear_end=LINEAR_END),
        )
    )
    task = get_task(config)
    params = task.init(jax.random.PRNGKey(0), {})
    tx, lr_fns = make_optimizer(config, params, TOTAL_STEPS)
    step_fn = jax.jit(make_train_step(task, tx, lr_fns, total_steps=TOTAL_STEPS))
    state = {"params": params, "opt": tx.init(params), "rng": jax.random.PRNGKey(0)}
    logged = []
    for step, batch in enumerate(_batches(), start=1):
        on_device = {k: jnp.asarray(v, jnp.float32) for k, v in batch.items()}
        state, metrics = step_fn(state, on_device, jnp.int32(step))
        logged.append({k: float(metrics[k]) for k in ("training_loss", "sam_rho", "sam_gap")})
    return np.concatenate([state["params"]["a"], state["params"]["b"]]), logged


@pytest.mark.parametrize(
    "sam",
    [
        dict(rho_max=0.3, rho_min=0.1, alpha=0.4),
        dict(rho_max=0.3, rho_min=0.1, alpha=0.4, minimize_fp=False, adaptive=True),
    ],
    ids=["gsam", "gsam_min_f_adaptive"],
)
def test_two_gsam_steps_on_a_quadratic_match_the_hand_computation(sam: dict[str, Any]) -> None:
    want_w, want_log = _by_hand(sam)
    got_w, got_log = _by_the_trainer(sam)
    np.testing.assert_allclose(got_w, want_w, rtol=1e-6, atol=1e-6)
    assert not np.allclose(want_w, W0, atol=1e-2)  # the steps moved the params
    for got, want in zip(got_log, want_log):
        for key in want:
            np.testing.assert_allclose(got[key], want[key], rtol=1e-6, atol=1e-6, err_msg=key)
    # rho followed the learning rate: rho_max at the first step (the largest lr), 2/3 of the way after it.
    assert got_log[0]["sam_rho"] == pytest.approx(0.3) and got_log[1]["sam_rho"] == pytest.approx(0.1 + 0.2 * 2 / 3)


def _random_tree(seed: int) -> dict[str, jax.Array]:
    rng = np.random.default_rng(seed)
    return {"w": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32), "b": jnp.asarray(rng.normal(size=5), jnp.float32)}


def _flat(tree: Any) -> np.ndarray:
    return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(tree)])


def test_gsam_never_changes_the_descent_on_the_loss_it_minimizes() -> None:
    clean, perturbed = _random_tree(1), _random_tree(2)
    # minimize_fp: the correction is orthogonal to the perturbed gradient, so f_p decreases as with SAM.
    g = _flat(gsam_combine(clean, perturbed, 0.7))
    gp, gc = _flat(perturbed), _flat(clean)
    assert abs((g - gp) @ gp) < 1e-5 * np.linalg.norm(gp) ** 2
    assert np.linalg.norm(g - gp) > 0.1  # and it is not zero
    # minimize_fp=False: the correction is orthogonal to the clean gradient.
    g = _flat(gsam_combine(clean, perturbed, 0.7, minimize_fp=False))
    assert abs((g - gc) @ gc) < 1e-5 * np.linalg.norm(gc) ** 2


def test_perturbation_has_radius_rho_and_scales_by_the_weights_when_adaptive() -> None:
    params, grads = _random_tree(3), _random_tree(4)
    e = _flat(perturb(params, grads, jnp.float32(0.25))) - _flat(params)
    assert np.linalg.norm(e) == pytest.approx(0.25, rel=1e-5)
    np.testing.assert_allclose(e / np.linalg.norm(e), _flat(grads) / np.linalg.norm(_flat(grads)), atol=1e-6)
    adaptive = _flat(perturb(params, grads, jnp.float32(0.25), adaptive=True)) - _flat(params)
    np.testing.assert_allclose(adaptive, np.abs(_flat(params)) * e, rtol=1e-5, atol=1e-7)
    # Low-precision leaves are perturbed in float32 and stored back in their own dtype; norms are float32.
    half = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
    moved = perturb(half, grads, jnp.float32(0.25))
    assert moved["w"].dtype == jnp.bfloat16 and tree_norm(half).dtype == jnp.float32


def test_rho_follows_the_given_lr_range_as_big_vision_configures_it() -> None:
    # big_vision's config: lr_max = lr, lr_min = linear_end * lr; during warmup rho dips below rho_min.
    options = parse_options(dict(rho_max=0.6, rho_min=0.1, alpha=0.6, lr_max=0.003, lr_min=0.00003))
    lr_fn = lambda step: jnp.float32(0.003) * jnp.minimum(1.0, step / 10.0)  # noqa: E731  (a warmup)
    at = {s: float(rho_at(options, StepInfo(jnp.int32(s), 1, 100, (("lr", lr_fn),)))) for s in (1, 6, 11)}
    assert at[11] == pytest.approx(0.6) and at[6] == pytest.approx(0.1 + 0.5 * (0.0015 - 0.00003) / 0.00297)
    assert at[1] == pytest.approx(0.1 - 0.5 * 0.00003 / 0.00297, rel=1e-5) and at[1] < 0.1
