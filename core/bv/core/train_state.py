"""The training state (params, optimizer state, rng, and the EMA of the params when asked), its
layout on the mesh, where it starts (fresh, pre-trained, or resumed), and the step that updates it.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable, Mapping, Sequence

import jax
import ml_collections
import optax
from jax.sharding import NamedSharding, PartitionSpec

from bv.core import checkpoint, ema, sharding
from bv.core.mixup import mix_batch
from bv.core.model_init import load_pretrained
from bv.core.optimizers import make_optimizer
from bv.core.run_plan import RunPlan
from bv.core.tasks import StepInfo, Task

log = logging.getLogger("bv.train")

State = dict[str, Any]  # {"params", "opt", "rng"} and "ema" with config.ema


class WorkdirMismatchError(ValueError):
    """The workdir's checkpoint was written for another model or optimizer."""


def make_train_step(
    task: Task,
    tx: optax.GradientTransformation,
    schedule_fns: Sequence[tuple[str, Callable]],
    grad_accum_steps: int = 1,
    mixup: Mapping[str, Any] | None = None,
    ema_config: ema.EmaConfig | None = None,
    total_steps: int | None = None,
) -> Callable[..., tuple[State, dict[str, jax.Array]]]:
    """One optimizer step: ``(state, batch, step) -> (state, metrics)``.

    ``step`` is the number of the step being taken (1 for the first); the step's
    randomness is ``fold_in(state["rng"], step)``, so it does not depend on where a
    run resumed. With ``grad_accum_steps > 1`` the batch is split into that many
    microbatches whose gradients are averaged: the same update as the whole batch,
    in less memory. ``mixup`` (``config.mixup``, e.g. ``{"p": 0.2}``) mixes the
    global batch first. ``ema_config`` also updates ``state["ema"]``. The task's
    ``step_grads`` gets the step, the learning rates and ``total_steps`` (see ``StepInfo``);
    ``after_step`` may then replace the optimizer's new params (and add metrics).
    """

    def train_step(state: State, batch: Mapping[str, jax.Array], step: jax.Array) -> tuple[State, dict]:
        params = state["params"]
        step_rng = jax.random.fold_in(state["rng"], step)
        if mixup and mixup.get("p"):
            mix_rng, step_rng = jax.random.split(step_rng)
            batch = mix_batch(mix_rng, batch, mixup)
        info = StepInfo(step, grad_accum_steps, total_steps, tuple(schedule_fns))
        loss, metrics, grads = task.step_grads(params, batch, step_rng, info)
        updates, opt_state = tx.update(grads, state["opt"], params)
        params = optax.apply_updates(params, updates)
        params, step_metrics = task.after_step(state["params"], params, batch, step_rng, info)
        new_state = {**state, "params": params, "opt": opt_state}
        if ema_config is not None:
            new_state["ema"] = ema.update(state["ema"], params, step, ema_config)
        metrics = {
            "training_loss": loss,
            "l2_grads": optax.tree.norm(grads),
            "l2_params": optax.tree.norm(params),
            **metrics,
            **step_metrics,
            **{name: fn(step - 1) for name, fn in schedule_fns},
        }
        return new_state, metrics

    return train_step


@dataclasses.dataclass
class TrainState:
    """The state and everything needed to step, save and restore it."""

    state: State
    shardings: State
    tx: optax.GradientTransformation
    schedule_fns: list[tuple[str, Callable]]
    ema: ema.EmaConfig | None
    start_step: int
    meta: dict[str, Any]  # the resumed checkpoint's metadata ({} for a fresh start)


@dataclasses.dataclass
class _Layout:
    """What the state will look like, before any of it exists."""

    init_state: Callable[[jax.Array], State]
    init_rng: jax.Array
    train_rng: jax.Array
    shapes: State  # jax.ShapeDtypeStructs carrying their shardings
    shardings: State
    tx: optax.GradientTransformation
    schedule_fns: list[tuple[str, Callable]]
    ema: ema.EmaConfig | None


def _layout(
    config: ml_collections.ConfigDict, task: Task, plan: RunPlan, mesh: jax.sharding.Mesh, batch_spec: Mapping
) -> _Layout:
    """Shapes first (``eval_shape``): nothing is computed twice and nothing is allocated yet."""
    ema_config = ema.parse(config.get("ema"))
    init_rng, train_rng = jax.random.split(jax.random.PRNGKey(config.get("seed", 0)))
    param_shapes = jax.eval_shape(task.init, init_rng, batch_spec)
    tx, schedule_fns = make_optimizer(config, param_shapes, plan.total_steps, schedule=plan.schedule)

    def init_state(rng: jax.Array) -> State:
        params = task.init(rng, batch_spec)
        return {"params": params, "opt": tx.init(params)}

    shapes = {**jax.eval_shape(init_state, init_rng), "rng": jax.eval_shape(lambda: train_rng)}
    # config.sharding_strategy names params/... and opt/... leaves; the EMA is laid out like the params.
    shardings = sharding.param_shardings(
        shapes,
        mesh,
        config.get("sharding_strategy", sharding.DEFAULT_STRATEGY),
        logical_axes=task.logical_axes(param_shapes),
        rules=config.get("sharding_rules"),
    )
    if ema_config is not None:
        shapes["ema"], shardings["ema"] = shapes["params"], shardings["params"]
    shapes = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)
    return _Layout(init_state, init_rng, train_rng, shapes, shardings, tx, schedule_fns, ema_config)


def _restore(path: str, template: State, workdir: str | None) -> tuple[State, dict[str, Any]]:
    """Restores the workdir's newest intact checkpoint (``path`` is the workdir), or ``config.resume``'s."""
    try:
        if workdir and path == workdir:
            restored = checkpoint.restore_latest(workdir, template)  # skips (and sets aside) damaged ones
            assert restored is not None, "resume_path found a checkpoint"
            return restored
        return checkpoint.restore(path, template)
    except checkpoint.CheckpointMismatchError as e:
        where = f"The workdir {workdir!r}" if workdir and path.startswith(workdir) else f"config.resume ({path!r})"
        raise WorkdirMismatchError(
            f"{where} holds a checkpoint of a different model or optimizer than this config builds (is "
            f"config.ema set in one and not the other?), so training cannot resume from it. Nothing was "
            f"changed. Use a new --workdir, or the config that wrote it.\n{e}"
        ) from None


def resume_path(config: ml_collections.ConfigDict, workdir: str | None) -> str | None:
    """Where to resume from: the workdir if it has a checkpoint, else ``config.resume``'s, else None."""
    if workdir and checkpoint.latest(workdir):
        return workdir
    if config.get("resume"):
        return checkpoint.latest(config.resume) or config.resume
    return None


def create_train_state(
    config: ml_collections.ConfigDict,
    task: Task,
    plan: RunPlan,
    mesh: jax.sharding.Mesh,
    batch_spec: Mapping[str, jax.ShapeDtypeStruct],
    workdir: str | None,
) -> TrainState:
    """Resumes from the workdir (or ``config.resume``), else initialises (and loads ``config.model_init``)."""
    lay = _layout(config, task, plan, mesh, batch_spec)
    shardings = lay.shardings

    def made(state: State, start_step: int, meta: dict[str, Any]) -> TrainState:
        return TrainState(state, shardings, lay.tx, lay.schedule_fns, lay.ema, start_step, meta)

    path = resume_path(config, workdir)
    if path:
        state, meta = _restore(path, lay.shapes, workdir)
        if path == workdir:  # the checkpoint used: damaged newer ones were set aside
            path = checkpoint.latest(workdir) or path
        log.info("Resuming from %s at step %d.", path, int(meta["step"]))
        return made(state, int(meta["step"]), meta)

    state = jax.jit(lay.init_state, out_shardings={"params": shardings["params"], "opt": shardings["opt"]})(
        lay.init_rng
    )
    state["rng"] = jax.device_put(lay.train_rng, shardings["rng"])
    if config.get("model_init"):
        model_load = config.get("model_load", {})
        params = load_pretrained(
            config.model_init,
            state["params"],
            dont_load=model_load.get("dont_load", ()),
            config=config,
            revision=model_load.get("revision"),
        )
        state["params"] = checkpoint.put_global(params, shardings["params"])
        state["opt"] = jax.jit(lay.tx.init, out_shardings=shardings["opt"])(state["params"])
    if lay.ema is not None:  # the average starts at the (possibly pre-trained) params
        copy = jax.jit(lambda p: jax.tree.map(lambda x: x.copy(), p), out_shardings=shardings["params"])
        state["ema"] = copy(state["params"])
    return made(state, 0, {})


def jit_train_step(
    config: ml_collections.ConfigDict, task: Task, ts: TrainState, plan: RunPlan, mesh: jax.sharding.Mesh
) -> Callable[..., tuple[State, dict[str, jax.Array]]]:
    """The compiled step, the state donated and laid out as ``ts.shardings``, the batch over the batch axes."""
    mixup = config.get("mixup")
    mixup = mixup.to_dict() if isinstance(mixup, ml_collections.ConfigDict) else (dict(mixup) if mixup else None)
    replicated = NamedSharding(mesh, PartitionSpec())
    step = make_train_step(task, ts.tx, ts.schedule_fns, plan.grad_accum_steps, mixup, ts.ema, plan.total_steps)
    layout: dict[str, Any] = dict(
        in_shardings=(ts.shardings, sharding.batch_sharding(mesh), replicated),
        out_shardings=(ts.shardings, replicated),
        donate_argnums=(0,),
    )
    frozen = task.frozen()
    # A task's frozen arrays (a teacher) go in as an argument: closed over, they would be compiled in.
    return frozen.jit(step, **layout) if frozen is not None else jax.jit(step, **layout)
