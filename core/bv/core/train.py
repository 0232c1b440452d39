"""The one training loop of bv: ``bv-train --config FILE.py[:ARGS] --workdir DIR``.

Projects plug in a task (``config.task``, see ``bv.core.tasks``) and never copy
this loop. ``train()`` reads top to bottom as the run's phases: mesh, data and
the run plan, task and state (fresh or resumed), evaluators, workdir, loop. A
restart with the same workdir resumes from its latest checkpoint and, on the
same hardware, ends with the same parameters as a run that was never
interrupted.
"""

from __future__ import annotations

import itertools
import logging
import os
import sys
from typing import Any, Iterator, Mapping, Sequence

import jax
import ml_collections

from bv.core import cli, compile_cache, distributed, sharding, workdir_lock
from bv.core import config as config_lib
from bv.core.events import LoggedRun, config_text, input_images
from bv.core.profiler import StepProfiler
from bv.core.run_plan import RunPlan, plan_run, save_plan
from bv.core.tasks import get_task
from bv.core.train_data import TrainData
from bv.core.train_loop import NonFiniteLossError, TrainLoop
from bv.core.train_state import WorkdirMismatchError, create_train_state, jit_train_step, make_train_step

__all__ = ["NonFiniteLossError", "WorkdirMismatchError", "main", "make_train_step", "train"]

log = logging.getLogger("bv.train")


def train(config: ml_collections.ConfigDict, workdir: str | None) -> dict[str, float]:
    """Trains as ``config`` says, writing to ``workdir`` (None: no checkpoints or logs). Returns final metrics.

    ``config`` is not changed: the values resolved from it (steps from epochs, ...) are
    in the run plan, which the workdir keeps as ``resolved.json`` beside ``config.json``.
    """
    # One run per workdir: a second one would resume from, and delete, the first one's checkpoints.
    with workdir_lock.hold(workdir if jax.process_index() == 0 else None):
        return _train(config, workdir)


def _train(config: ml_collections.ConfigDict, workdir: str | None) -> dict[str, float]:
    from bv.evaluators import build_evaluators

    _quiet_tfds()
    # Devices: one mesh; the batch is split over its batch axes (sharding.batch_axes).
    mesh = sharding.make_mesh(config.get("mesh"))
    log.info("%s; mesh %s.", distributed.describe(), dict(mesh.shape))

    # Data, and what the config's durations come to in steps.
    data = TrainData(config)
    plan = plan_run(config, data.size, mesh, jax.process_count())

    # Task and state: resumed from the workdir, else fresh (or pre-trained) params.
    task = get_task(config)
    ts = create_train_state(config, task, plan, mesh, data.batch_spec(), workdir)

    # Evaluators, each on its own schedule.
    evaluators = build_evaluators(
        config.get("evals"),
        task.predict_fns(),
        mesh,
        batch_size=plan.batch_size,
        data_dir=data.data_dir,
        workdir=workdir,
        every=lambda cfg: plan.steps_of("log", cfg),
        frozen=task.frozen(),
    )
    profiler = StepProfiler.from_config(config.get("profile"), workdir)

    # Only now, with a consistent state in hand, is the workdir written to.
    metric_log = open_workdir(config, plan, workdir, ts.start_step)
    try:
        if ts.start_step >= plan.total_steps:
            return finished_run(metric_log, plan)

        # The loop. Activation sharding (config.sharding_rules) applies when the step is traced.
        log.info(
            "Training for %d steps (%d examples per epoch, batch %d) on %d device(s).",
            plan.total_steps,
            plan.train_size,
            plan.batch_size,
            jax.device_count(),
        )
        loop = TrainLoop(
            ts, jit_train_step(config, task, ts, plan, mesh), plan, mesh, evaluators, metric_log, workdir, profiler
        )
        images = config.get("tensorboard_images", 4)
        batches = log_first_images(data.batches(ts.start_step), metric_log, images, ts.start_step)
        with sharding.activation_rules(config.get("sharding_rules"), mesh):
            final = loop.run(batches)
        print_final(final)
        return final
    finally:
        metric_log.close()  # the event files


def _quiet_tfds() -> None:
    import tensorflow_datasets as tfds

    tfds.disable_progress_bar()


def open_workdir(config: ml_collections.ConfigDict, plan: RunPlan, workdir: str | None, start_step: int) -> LoggedRun:
    """Writes the config as given and the run plan (process 0 only), and opens the metrics log.

    The log writes ``metrics.jsonl`` and, beside it, TensorBoard event files (unless
    ``config.tensorboard`` is False), starting with the config as text.
    """
    is_chief = jax.process_index() == 0
    if workdir and is_chief:
        os.makedirs(workdir, exist_ok=True)
        config_lib.save_config(config, workdir)
        save_plan(plan, workdir)
    metric_log = LoggedRun(
        workdir if is_chief else None,
        resume_step=start_step,
        quiet=not is_chief,
        events=bool(config.get("tensorboard", True)),
    )
    if metric_log.events is not None:
        metric_log.events.text("config", config_text(config), start_step)
    return metric_log


def log_first_images(
    batches: Iterator[Mapping[str, Any]], metric_log: LoggedRun, count: int, step: int
) -> Iterator[Mapping[str, Any]]:
    """``batches`` unchanged; ``count`` images of the first one go to TensorBoard (``input/train``)."""
    if metric_log.events is None or count <= 0:
        return batches
    first = next(batches)
    images = input_images(first, count)
    if images is not None:
        metric_log.events.images("input/train", images, step)
    return itertools.chain([first], batches)


def finished_run(metric_log: LoggedRun, plan: RunPlan) -> dict[str, float]:
    """A workdir already at its last step: nothing is trained or evaluated again; its logged metrics are returned."""
    print(
        f"The workdir's checkpoint is already at the last step ({plan.total_steps}); nothing to do. "
        "To evaluate it again, run bv-eval --config ... --model WORKDIR.",
        flush=True,
    )
    final: dict[str, float] = {}
    for record in metric_log.read():
        final.update({k: v for k, v in record.items() if k != "step"})
    print_final(final)
    return final


def print_final(final: dict[str, float]) -> None:
    for name, value in final.items():
        if name.endswith("prec@1") and "/" in name:
            print(f"Final {name}: {value:.4f}", flush=True)


def main(argv: Sequence[str] | None = None, default_config: str | None = None, *, prog: str = "bv-train") -> None:
    """Console entry point (``bv train``, alias ``bv-train``): parses the command line and trains."""
    # force: absl (imported with orbax) may already have put its handler on the root logger.
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stdout, force=True
    )
    # Several processes (multi-host GPU, TPU pod, SLURM): join them before anything touches JAX.
    distributed.initialize_from_env()
    # A second run of a config loads its compiled steps instead of compiling them (~/.cache/bv/jax).
    compile_cache.enable()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    # TFDS and absl log every file they open at INFO; keep the console for training.
    logging.getLogger("absl").setLevel(logging.WARNING)
    # A user's mistake (bad config, data, workdir, checkpoint) is one paragraph and exit code 2; a bug keeps
    # its traceback. The two errors below are the loop's own, not yet bv.core.errors.UserError subclasses.
    with cli.user_errors(prog, also=(WorkdirMismatchError, NonFiniteLossError)):
        args = cli.parse_train_args_or_exit(argv, default_config, prog=prog)
        train(args.config, args.workdir)


if __name__ == "__main__":
    main()
