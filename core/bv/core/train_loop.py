"""The loop of the trainer: step, log, evaluate, checkpoint, from the start step to the last.

Everything here is cadence and bookkeeping; what a step computes lives in
:mod:`bv.core.train_state`, what an evaluation computes in :mod:`bv.evaluators`.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable, Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp

from bv.core import checkpoint, sharding
from bv.core.data import input_pipeline
from bv.core.failpoints import crash_point
from bv.core.metrics_log import Chrono, MetricLog, format_duration, memory_metrics
from bv.core.profiler import StepProfiler
from bv.core.run_plan import RunPlan
from bv.core.train_state import State, TrainState

log = logging.getLogger("bv.train")


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


def due(step: int, every: int | None, total: int) -> bool:
    """Whether something that runs ``every`` steps (and always at the last step) runs at ``step``."""
    return step == total or bool(every and step % every == 0)


def console_line(step: int, total: int, metrics: Mapping[str, Any]) -> str:
    parts = [f"{step}/{total} ({100 * step / total:.1f}%)", f"loss {metrics['training_loss']:.4f}"]
    if "lr" in metrics:
        parts.append(f"lr {metrics['lr']:.3g}")
    if "img/sec/core" in metrics:
        parts.append(f"{metrics['img/sec/core']:.1f} img/s/core")
    if "eta_seconds" in metrics:
        parts.append(f"ETA {format_duration(metrics['eta_seconds'])}")
    return ", ".join(parts)


def run_evaluators(
    evaluators: Sequence[Any], state: State, step: int, total: int, *, final: bool = False
) -> dict[str, float]:
    """Runs the evaluators due at ``step`` on the params (``name/...``) and on their EMA (``ema/name/...``)."""
    results: dict[str, float] = {}
    for e in evaluators:
        if final or due(step, e.every, total):
            results.update({f"{e.name}/{k}": v for k, v in e.evaluator.run(state["params"]).items()})
            if "ema" in state and getattr(e.evaluator, "evaluate_ema", True):
                results.update({f"ema/{e.name}/{k}": v for k, v in e.evaluator.run(state["ema"]).items()})
    return results


class TrainLoop:
    """Runs steps ``start_step + 1 .. total_steps`` of one run."""

    def __init__(
        self,
        ts: TrainState,
        step_fn: Callable[..., tuple[State, dict[str, jax.Array]]],
        plan: RunPlan,
        mesh: jax.sharding.Mesh,
        evaluators: Sequence[Any],
        metric_log: MetricLog,
        workdir: str | None,
        profiler: StepProfiler | None = None,
    ):
        self.ts, self.step_fn, self.plan = ts, step_fn, plan
        self.evaluators, self.metric_log, self.workdir, self.profiler = evaluators, metric_log, workdir, profiler
        self.batch_sharding = sharding.batch_sharding(mesh)
        self.pending: tuple[int, jax.Array] | None = None  # the previous step's loss, checked one step late
        self.final: dict[str, float] = {}
        self.chrono = Chrono(
            total_steps=plan.total_steps,
            global_batch_size=plan.batch_size,
            num_devices=jax.device_count(),
            start_step=ts.start_step,
            train_seconds=float(ts.meta.get("train_seconds", 0.0)),
        )

    def run(self, batches: Iterator[Mapping[str, Any]]) -> dict[str, float]:
        """Trains to the last step; returns the last logged and evaluated metrics."""
        total = self.plan.total_steps
        for step in range(self.ts.start_step + 1, total + 1):
            batch = input_pipeline.to_global_arrays(next(batches), self.batch_sharding)
            if self.profiler:
                self.profiler.before_step(step)
            self.ts.state, metrics = self.step_fn(self.ts.state, batch, jnp.int32(step))
            if self.profiler:
                self.profiler.after_step(step, self.ts.state)
            self.check_finite()
            self.pending = (step, metrics["training_loss"])
            crash_point("train.step_done", step)
            if due(step, self.plan.log_every, total):
                self.log_training(step, metrics)
            checkpoint_due = bool(self.workdir) and due(step, self.plan.ckpt_every, total)
            if self.evaluators or checkpoint_due:
                self.chrono.pause()
                self.evaluate(step)
                if checkpoint_due:
                    self.save(step)
                self.chrono.resume()
        self.check_finite()
        if self.profiler:
            self.profiler.stop()
        return self.final

    def check_finite(self) -> None:
        """Checks the pending loss once (fetching it waits for its step), then forgets it."""
        if self.pending is None:
            return
        (step, loss), self.pending = self.pending, None
        value = float(loss)
        if not math.isfinite(value):
            raise NonFiniteLossError(
                f"The training loss is {value} at step {step}; stopping. The last checkpoint before it is kept. "
                "Try a lower config.lr, config.grad_clip_norm, or a longer warmup."
            )

    def log_training(self, step: int, metrics: Mapping[str, jax.Array]) -> None:
        self.check_finite()
        values = {k: float(v) for k, v in jax.device_get(metrics).items()}
        values.update(self.chrono.tick(step))
        values.update(memory_metrics())
        values["epoch"] = step * self.plan.batch_size / self.plan.train_size
        self.metric_log.write(step, values, console=console_line(step, self.plan.total_steps, values))
        self.final.update(values)

    def evaluate(self, step: int) -> None:
        results = run_evaluators(self.evaluators, self.ts.state, step, self.plan.total_steps)
        if results:
            self.metric_log.write(step, results)
            self.final.update(results)

    def save(self, step: int) -> None:
        self.check_finite()  # never checkpoint a state that a non-finite loss already spoiled
        assert self.workdir
        checkpoint.save(
            self.workdir,
            step,
            self.ts.state,
            metadata={
                "train_seconds": self.chrono.train_seconds,
                "examples_seen": step * self.plan.batch_size,
                "data_index": step * self.plan.local_batch_size,
            },
            keep_every=self.plan.keep_every,
        )
