"""The one training loop of bv: ``bv-train --config FILE.py[:ARGS] --workdir DIR``.

Projects plug in a task (``config.task``, see ``bv.core.tasks``) and never copy
this loop. A restart with the same workdir resumes from its latest checkpoint
and, on the same hardware, ends with the same parameters as a run that was
never interrupted.
"""

from __future__ import annotations

import logging
import math
import os
import resource
import sys
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import NamedSharding, PartitionSpec

from bv.core import checkpoint, cli, distributed, durations, registry, sharding
from bv.core import config as config_lib
from bv.core.accumulate import accumulate_grads
from bv.core.failpoints import crash_point
from bv.core.mixup import mix_batch
from bv.core.metrics_log import Chrono, MetricLog, format_duration
from bv.core.model_init import load_pretrained
from bv.core.optimizers import make_optimizer
from bv.core.tasks import Task, get_task

log = logging.getLogger("bv.train")


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


class WorkdirMismatchError(ValueError):
    """The workdir's checkpoint was written for another model or optimizer."""


def make_train_step(
    task: Task,
    tx: optax.GradientTransformation,
    schedule_fns: Sequence[tuple[str, Callable]],
    grad_accum_steps: int = 1,
    mixup: Mapping[str, Any] | None = None,
):
    """One optimizer step: ``(params, opt_state, batch, rng, step) -> (params, opt_state, metrics)``.

    ``step`` is the number of the step being taken (1 for the first); the step's
    randomness is ``fold_in(rng, step)``, so it does not depend on where a run resumed.
    With ``grad_accum_steps > 1`` the batch is split into that many microbatches whose
    gradients are averaged: the same update as the whole batch, in less memory.
    ``mixup`` (``config.mixup``, e.g. ``{"p": 0.2}``) mixes the global batch first.
    """

    def train_step(params: Any, opt_state: Any, batch: Mapping[str, jax.Array], rng: jax.Array, step: jax.Array):
        step_rng = jax.random.fold_in(rng, step)
        if mixup and mixup.get("p"):
            mix_rng, step_rng = jax.random.split(step_rng)
            batch = mix_batch(mix_rng, batch, mixup)
        loss, metrics, grads = accumulate_grads(task.grads, params, batch, step_rng, grad_accum_steps)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        metrics = {
            "training_loss": loss,
            "l2_grads": optax.global_norm(grads),
            "l2_params": optax.global_norm(params),
            **metrics,
            **{name: fn(step - 1) for name, fn in schedule_fns},
        }
        return params, opt_state, metrics

    return train_step


def resolve_schedule_durations(config: ml_collections.ConfigDict, data_size: int, batch_size: int, total: int) -> None:
    """Turns ``warmup_*``/``cooldown_*`` durations in ``config.schedule`` into steps, in place."""

    def resolve(sched: Any) -> Any:
        if sched is None:
            return None
        sched = dict(sched)
        for prefix in ("warmup", "cooldown"):
            given = {k for k in sched if k.startswith(prefix + "_")}
            if given:
                sched[f"{prefix}_steps"] = durations.steps(
                    prefix, sched, data_size=data_size, batch_size=batch_size, total_steps=total
                )
                for key in given - {f"{prefix}_steps"}:
                    del sched[key]
        return sched

    schedule = config.get("schedule")
    with config.unlocked():
        if isinstance(schedule, (list, tuple)):
            config.schedule = [(regex, resolve(s)) for regex, s in schedule]
        elif schedule is not None:
            config.schedule = resolve(schedule)


def _restore(path: str, template: dict[str, Any], workdir: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
    try:
        return checkpoint.restore(path, template)
    except checkpoint.CheckpointMismatchError as e:
        where = f"The workdir {workdir!r}" if workdir and path.startswith(workdir) else f"config.resume ({path!r})"
        raise WorkdirMismatchError(
            f"{where} holds a checkpoint of a different model or optimizer than this config builds, so "
            f"training cannot resume from it. Nothing was changed. Use a new --workdir, or the config "
            f"that wrote it.\n{e}"
        ) from None


def _plain(node: Any) -> dict[str, Any] | None:
    """A config sub-dict as a plain dict (hashable-free, safe to close over in a jitted function)."""
    if node is None:
        return None
    return node.to_dict() if isinstance(node, ml_collections.ConfigDict) else dict(node)


def _due(step: int, every: int | None, total: int) -> bool:
    return step == total or bool(every and step % every == 0)


def _console_line(step: int, total: int, metrics: Mapping[str, Any]) -> str:
    parts = [f"{step}/{total} ({100 * step / total:.1f}%)", f"loss {metrics['training_loss']:.4f}"]
    if "lr" in metrics:
        parts.append(f"lr {metrics['lr']:.3g}")
    if "img/sec/core" in metrics:
        parts.append(f"{metrics['img/sec/core']:.1f} img/s/core")
    if "eta_seconds" in metrics:
        parts.append(f"ETA {format_duration(metrics['eta_seconds'])}")
    return ", ".join(parts)


def train(config: ml_collections.ConfigDict, workdir: str | None) -> dict[str, float]:
    """Trains as ``config`` says, writing to ``workdir`` (None: no checkpoints or logs). Returns final metrics."""
    import bv.evaluators  # noqa: F401  (registers the evaluators)
    import bv.pp
    import tensorflow_datasets as tfds

    from bv.core.data import input_pipeline, mixture, sources

    tfds.disable_progress_bar()

    # ------------------------------------------------------------------
    # Devices and mesh (config.mesh; default: one data axis over every device).
    # The batch is split over every mesh axis except "model".
    # ------------------------------------------------------------------
    mesh = sharding.make_mesh(config.get("mesh"))
    replicated = NamedSharding(mesh, PartitionSpec())
    batch_axes = tuple(a for a in mesh.axis_names if a != "model")
    batch_sharding = NamedSharding(mesh, PartitionSpec(batch_axes or None))
    num_devices = jax.device_count()
    batch_shards = math.prod(mesh.shape[a] for a in batch_axes)
    is_chief = jax.process_index() == 0
    log.info("%s; mesh %s.", distributed.describe(), dict(mesh.shape))

    # ------------------------------------------------------------------
    # Training data and the length of training.
    # ------------------------------------------------------------------
    # One data set (input.data=dict(name=..., split=...)) or a weighted mixture (see bv.core.data.mixture).
    parsed_sources = sources.parse_sources(config.input)
    data_dir = parsed_sources[0].data.get("data_dir")  # Also the evals' default.
    train_sources = [
        mixture.TrainSource(
            src.name,
            input_pipeline.get_builder(src.data["name"], src.data.get("data_dir")),
            src.data["split"],
            bv.pp.get_preprocess_fn(src.pp),
            src.weight,
        )
        for src in parsed_sources
    ]
    train_size = mixture.train_size(train_sources)
    batch_size = int(config.input.batch_size)
    grad_accum_steps = int(config.get("grad_accum_steps", 1))
    if grad_accum_steps < 1:
        raise ValueError(f"config.grad_accum_steps must be a positive integer, got {grad_accum_steps}.")
    if batch_size % (batch_shards * grad_accum_steps):
        raise ValueError(
            f"config.input.batch_size={batch_size} must be divisible by the {batch_shards} devices the batch is "
            f"split over (mesh axes {batch_axes}) times config.grad_accum_steps={grad_accum_steps}."
        )
    local_batch = batch_size // jax.process_count()
    total_steps = durations.total_steps(config, train_size, batch_size)
    resolve_schedule_durations(config, train_size, batch_size, total_steps)

    def steps_of(prefix: str, cfg: Any = config) -> int | None:
        return durations.steps(
            prefix, cfg, data_size=train_size, batch_size=batch_size, total_steps=total_steps, default=None
        )

    log_every = steps_of("log_training") or max(1, total_steps // 100)
    ckpt_every = steps_of("ckpt")
    keep_every = steps_of("keep_ckpt")

    def train_batches(start_step: int):
        options: dict[str, Any] = dict(
            shuffle_buffer_size=config.input.get("shuffle_buffer_size", 10_000),
            seed=config.get("seed", 0),
            start_index=start_step * local_batch,
            cache_raw=config.input.get("cache_raw", False),
            prefetch=config.input.get("prefetch", 2),
            host_invariant=config.input.get("host_invariant", False),
        )
        if len(train_sources) == 1:
            (src,) = train_sources
            ds = input_pipeline.make_for_train(src.builder, src.split, batch_size, src.preprocess_fn, **options)
        else:
            ds = mixture.make_mixture_for_train(train_sources, batch_size, **options)
        return ds, ds.as_numpy_iterator()

    # ------------------------------------------------------------------
    # Task, parameters and optimizer (shapes first: nothing runs twice).
    # ------------------------------------------------------------------
    task = get_task(config)
    # Shapes from a real batch: a pp without a resize leaves image sizes unknown to tf.data.
    _, spec_batches = train_batches(0)
    batch_spec = {k: jax.ShapeDtypeStruct((batch_size, *v.shape[1:]), v.dtype) for k, v in next(spec_batches).items()}
    del spec_batches
    init_rng, train_rng = jax.random.split(jax.random.PRNGKey(config.get("seed", 0)))
    param_shapes = jax.eval_shape(task.init, init_rng, batch_spec)
    tx, schedule_fns = make_optimizer(config, param_shapes, total_steps)

    @jax.jit
    def init_state(rng: jax.Array) -> dict[str, Any]:
        params = task.init(rng, batch_spec)
        return {"params": params, "opt": tx.init(params)}

    state_shapes = {**jax.eval_shape(init_state, init_rng), "rng": jax.eval_shape(lambda: train_rng)}
    # Sharding of params and optimizer state: config.sharding_strategy over leaf names (params/..., opt/...).
    shardings = sharding.param_shardings(
        state_shapes,
        mesh,
        config.get("sharding_strategy", sharding.DEFAULT_STRATEGY),
        logical_axes=task.logical_axes(param_shapes),
        rules=config.get("sharding_rules"),
    )
    state_shapes = jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), state_shapes, shardings
    )

    # ------------------------------------------------------------------
    # Resume from the workdir (or config.resume), else fresh (or pre-trained) params.
    # ------------------------------------------------------------------
    resume_path = checkpoint.latest(workdir) if workdir else None
    if resume_path is None and config.get("resume"):
        resume_path = checkpoint.latest(config.resume) or config.resume
    meta: dict[str, Any] = {}
    if resume_path:
        state, meta = _restore(resume_path, state_shapes, workdir)
        start_step = int(meta["step"])
        log.info("Resuming from %s at step %d.", resume_path, start_step)
    else:
        state = jax.jit(init_state, out_shardings={"params": shardings["params"], "opt": shardings["opt"]})(init_rng)
        state["rng"] = jax.device_put(train_rng, shardings["rng"])
        start_step = 0
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
            state["opt"] = jax.jit(tx.init, out_shardings=shardings["opt"])(state["params"])

    # ------------------------------------------------------------------
    # Evaluators.
    # ------------------------------------------------------------------
    predict_fns = task.predict_fns()
    evaluators = []
    for name, eval_cfg in config.get("evals", {}).items():
        eval_cfg = dict(eval_cfg)
        kind = eval_cfg.pop("type", None)
        if kind is None:
            raise ValueError(f"config.evals.{name} needs a 'type', one of: {', '.join(registry.evaluators.names())}.")
        factory = registry.evaluators.get(kind)
        pred_name = eval_cfg.pop("pred", "predict")
        if pred_name not in predict_fns:
            raise ValueError(
                f"config.evals.{name}.pred={pred_name!r} is not a predict function of this task; "
                f"it has: {', '.join(predict_fns)}."
            )
        every = steps_of("log", eval_cfg)
        for key in [k for k in eval_cfg if k.startswith("log_")]:
            del eval_cfg[key]
        eval_cfg.setdefault("batch_size", batch_size)
        eval_cfg.setdefault("data_dir", data_dir)
        try:
            evaluator = factory(predict_fns[pred_name], mesh=mesh, **eval_cfg)
        except TypeError as e:
            raise ValueError(f"config.evals.{name} (a {kind!r} evaluator): {e}") from None
        evaluators.append((name, evaluator, every))

    # Only now, with a consistent state in hand, is the workdir written to.
    # Only process 0 writes logs and the config; every process takes part in checkpoints.
    if workdir and is_chief:
        os.makedirs(workdir, exist_ok=True)
        config_lib.save_config(config, workdir)
    metric_log = MetricLog(workdir if is_chief else None, resume_step=start_step, quiet=not is_chief)

    def run_evals(step: int, *, final: bool = False) -> dict[str, float]:
        results: dict[str, float] = {}
        for name, evaluator, every in evaluators:
            if final or _due(step, every, total_steps):
                results.update({f"{name}/{k}": v for k, v in evaluator.run(state["params"]).items()})
        if results:
            metric_log.write(step, results)
        return results

    # ------------------------------------------------------------------
    # The loop.
    # ------------------------------------------------------------------
    train_step = jax.jit(
        make_train_step(task, tx, schedule_fns, grad_accum_steps, _plain(config.get("mixup"))),
        in_shardings=(shardings["params"], shardings["opt"], batch_sharding, shardings["rng"], replicated),
        out_shardings=(shardings["params"], shardings["opt"], replicated),
        donate_argnums=(0, 1),
    )
    chrono = Chrono(
        total_steps=total_steps,
        global_batch_size=batch_size,
        num_devices=num_devices,
        start_step=start_step,
        train_seconds=float(meta.get("train_seconds", 0.0)),
    )
    log.info(
        "Training for %d steps (%d examples per epoch, batch %d) on %d device(s).",
        total_steps,
        train_size,
        batch_size,
        num_devices,
    )
    _, batches = train_batches(start_step)
    final: dict[str, float] = {}
    pending: tuple[int, jax.Array] | None = None  # the loss of the previous step, checked one step late

    def check_finite() -> None:
        """Checks the pending loss once (fetching it waits for its step), then forgets it."""
        nonlocal pending
        if pending is None:
            return
        step, loss = pending
        pending = None
        value = float(loss)
        if not math.isfinite(value):
            raise NonFiniteLossError(
                f"The training loss is {value} at step {step}; stopping. The last checkpoint before it is kept. "
                "Try a lower config.lr, config.grad_clip_norm, or a longer warmup."
            )

    # Activation sharding (config.sharding_rules) applies when the step is traced, inside this block.
    with sharding.activation_rules(config.get("sharding_rules"), mesh):
        for step in range(start_step + 1, total_steps + 1):
            batch = input_pipeline.to_global_arrays(next(batches), batch_sharding)
            params, opt, metrics = train_step(state["params"], state["opt"], batch, state["rng"], jnp.int32(step))
            state["params"], state["opt"] = params, opt
            check_finite()
            pending = (step, metrics["training_loss"])
            crash_point("train.step_done", step)

            if _due(step, log_every, total_steps):
                check_finite()
                values = {k: float(v) for k, v in jax.device_get(metrics).items()}
                values.update(chrono.tick(step))
                values.update(memory_metrics())
                values["epoch"] = step * batch_size / train_size
                metric_log.write(step, values, console=_console_line(step, total_steps, values))
                final.update(values)

            checkpoint_due = workdir and _due(step, ckpt_every, total_steps)
            if evaluators or checkpoint_due:
                chrono.pause()
                final.update(run_evals(step))
                if checkpoint_due:
                    check_finite()
                    assert workdir
                    checkpoint.save(
                        workdir,
                        step,
                        state,
                        metadata={
                            "train_seconds": chrono.train_seconds,
                            "examples_seen": step * batch_size,
                            "data_index": step * local_batch,
                        },
                        keep_every=keep_every,
                    )
                chrono.resume()

        check_finite()
    if start_step >= total_steps:
        log.info("The checkpoint is already at the last step (%d); evaluating only.", total_steps)
        final.update(run_evals(total_steps, final=True))
    for name, value in final.items():
        if name.endswith("prec@1") and "/" in name:
            print(f"Final {name}: {value:.4f}", flush=True)
    return final


def memory_metrics() -> dict[str, float]:
    """Peak host memory (RSS) and, where the backend reports it, device memory of this process, in GiB."""
    out = {"host_peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}  # ru_maxrss is KiB
    stats = [d.memory_stats() for d in jax.local_devices()]
    if stats and all(stats):
        out["device_bytes_in_use_gb"] = max(s.get("bytes_in_use", 0) for s in stats) / 2**30
        out["device_peak_bytes_gb"] = max(s.get("peak_bytes_in_use", 0) for s in stats) / 2**30
    return out


def main(argv: Sequence[str] | None = None, default_config: str | None = None) -> None:
    """Console entry point: parses the command line and trains."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stdout)
    # Several processes (multi-host GPU, TPU pod, SLURM): join them before anything touches JAX.
    distributed.initialize_from_env()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    # TFDS and absl log every file they open at INFO; keep the console for training.
    logging.getLogger("absl").setLevel(logging.WARNING)
    args = cli.parse_train_args_or_exit(argv, default_config)
    try:
        train(args.config, args.workdir)
    except (WorkdirMismatchError, NonFiniteLossError, registry.UnknownNameError, config_lib.ConfigError) as e:
        print(f"bv-train: error: {e}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
