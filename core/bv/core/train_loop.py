"""The loop of the trainer: step, log, evaluate, checkpoint, from the start step to the last.

Everything here is cadence and bookkeeping; what a step computes lives in
:mod:`bv.core.train_state`, what an evaluation computes in :mod:`bv.evaluators`.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import signal
import threading
from typing import Any, Callable, Iterator, Mapping, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils

from bv.core import checkpoint, sharding
from bv.core.data import input_pipeline
from bv.core.errors import UserError
from bv.core.failpoints import crash_point
from bv.core.metrics_log import Chrono, MetricLog, format_duration, memory_metrics
from bv.core.profiler import StepProfiler
from bv.core.run_plan import RunPlan
from bv.core.train_state import State, TrainState

log = logging.getLogger("bv.train")


class NonFiniteLossError(UserError, FloatingPointError):
    """The training loss became NaN or infinite."""


def divergence_advice(
    checkpoints: Sequence[tuple[str, int, float | None]], losses: Sequence[tuple[int, float]], workdir: str
) -> str:
    """What to do after a non-finite loss, given the kept checkpoints ``(path, step, training loss there)``
    and the logged ``(step, training loss)``.

    A checkpoint whose loss is over twice the lowest loss logged up to its step (or unknown) has
    probably diverged already: resuming from it would hit the same non-finite loss again.
    """
    if not checkpoints:
        return "No checkpoint was kept: start again with a lower config.lr, config.grad_clip_norm or a longer warmup."

    def healthy(step: int, loss: float | None) -> bool:
        before = [v for s, v in losses if s <= step and math.isfinite(v)]
        return loss is not None and math.isfinite(loss) and (not before or loss <= 2 * min(before))

    path, step, loss = checkpoints[-1]
    if healthy(step, loss):
        return (
            f"The latest checkpoint (step {step}, training loss {loss:.4g}) looks healthy: run again with a lower "
            "config.lr (e.g. --config.lr=...), config.grad_clip_norm or a longer warmup to resume from it."
        )
    lowest = min((v for s, v in losses if s <= step and math.isfinite(v)), default=float("nan"))
    shown = "unknown" if loss is None else f"{loss:.4g}"
    advice = (
        f"The latest checkpoint (step {step}) was saved when the training loss was {shown}, against {lowest:.4g} "
        f"at best before it: it has probably diverged too, so resuming {workdir} would hit this again."
    )
    good = [(p, s, v) for p, s, v in checkpoints[:-1] if healthy(s, v)]
    if good:
        p, s, v = good[-1]
        return (
            f"{advice} Checkpoint {p} (step {s}, loss {v:.4g}) looks healthy: continue from it in a new workdir "
            f"with --workdir NEW --config.resume={p} and a lower config.lr."
        )
    return f"{advice} Start again in a new --workdir with a lower config.lr, config.grad_clip_norm or a longer warmup."


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


PREEMPTED_EXIT_CODE = 128 + signal.SIGTERM  # what a shell reports for a process ended by SIGTERM


class StopRequest:
    """SIGTERM (a pre-emption notice, ``kill``, a scheduler's time limit) asks the loop to stop cleanly.

    The loop finishes the step in flight, writes a checkpoint, waits for it and exits with
    :data:`PREEMPTED_EXIT_CODE`; running the same command again resumes. In a multi-process run
    the processes agree at each log step (a notice reaches them at different moments).
    """

    def __init__(self) -> None:
        self.received: int | None = None

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield  # signal handlers can only be set from the main thread (e.g. not in a notebook worker)
            return
        previous = signal.signal(signal.SIGTERM, self._handle)
        try:
            yield
        finally:
            signal.signal(signal.SIGTERM, previous)

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = signum

    def due(self, step: int, log_every: int | None, total: int) -> bool:
        if jax.process_count() == 1:
            return self.received is not None
        if not due(step, log_every, total):
            return False
        flags = multihost_utils.process_allgather(np.int32(self.received is not None))
        return bool(np.any(flags))


class TrainLoop:
    """Runs steps ``start_step + 1 .. total_steps`` of one run.

    Between two steps the host does only what it must: the next batch goes to the device while a
    step runs, the step's loss is checked for NaN ``IN_FLIGHT`` steps later (by then it is
    computed, so the check does not wait), and metrics are fetched only at log steps.
    """

    IN_FLIGHT = 2  # steps dispatched ahead of the oldest unchecked loss

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
        self.pending: collections.deque[tuple[int, jax.Array]] = collections.deque()  # losses not yet checked
        self.final: dict[str, float] = {}
        self.writer: checkpoint.CheckpointWriter | None = None
        self.stop_request = StopRequest()
        self.last_loss: float | None = None  # the last training loss checked (finite), saved with checkpoints
        self.chrono = Chrono(
            total_steps=plan.total_steps,
            global_batch_size=plan.batch_size,
            num_devices=jax.device_count(),
            start_step=ts.start_step,
            train_seconds=float(ts.meta.get("train_seconds", 0.0)),
        )

    def run(self, batches: Iterator[Mapping[str, Any]]) -> dict[str, float]:
        """Trains to the last step; returns the last logged and evaluated metrics.

        Checkpoints are written in the background (unless ``config.ckpt_async=False``); the run
        returns, or fails, only after the last one is complete.
        """
        with self.stop_request.installed():
            if not self.workdir:
                return self._run(batches)
            with checkpoint.CheckpointWriter(
                self.workdir,
                keep_every=self.plan.keep_every,
                asynchronous=self.plan.ckpt_async,
                compress=self.plan.ckpt_compress,
            ) as self.writer:
                return self._run(batches)

    def _run(self, batches: Iterator[Mapping[str, Any]]) -> dict[str, float]:
        total = self.plan.total_steps
        first = self.ts.start_step + 1
        batch = self.to_device(next(batches)) if first <= total else None
        for step in range(first, total + 1):
            if self.profiler:
                self.profiler.before_step(step)
            # The step number goes in as a numpy scalar: jit's fast path, no device array built per step.
            self.ts.state, metrics = self.step_fn(self.ts.state, batch, np.int32(step))
            # While the step runs (dispatch is asynchronous), the next batch goes to the device.
            batch = self.to_device(next(batches)) if step < total else None
            if self.profiler:
                self.profiler.after_step(step, self.ts.state)
            self.pending.append((step, metrics["training_loss"]))
            self.check_finite(keep=self.IN_FLIGHT)
            crash_point("train.step_done", step)
            if due(step, self.plan.log_every, total):
                self.log_training(step, metrics)
            checkpoint_due = bool(self.workdir) and due(step, self.plan.ckpt_every, total)
            if checkpoint_due or any(due(step, e.every, total) for e in self.evaluators):
                self.chrono.pause()
                self.evaluate(step)
                if checkpoint_due:
                    self.save(step)
                self.chrono.resume()
            if step < total and self.stop_request.due(step, self.plan.log_every, total):
                self.stop(step, saved=checkpoint_due)
        self.check_finite()
        if self.profiler:
            self.profiler.stop()
        return self.final

    def to_device(self, batch: Mapping[str, Any]) -> Any:
        return input_pipeline.to_global_arrays(batch, self.batch_sharding)

    def stop(self, step: int, *, saved: bool) -> None:
        """Checkpoints ``step`` (unless just done) and exits: the answer to SIGTERM."""
        if self.workdir and not saved:
            self.save(step)
        where = f"a checkpoint of step {step} is being completed" if self.workdir else "no workdir, nothing is saved"
        log.warning("Received SIGTERM at step %d: %s, then the run exits. Run the same command to resume.", step, where)
        raise SystemExit(PREEMPTED_EXIT_CODE)  # the writer's context waits for the checkpoint on the way out

    def check_finite(self, keep: int = 0) -> None:
        """Checks the pending losses, oldest first, until ``keep`` remain; a non-finite one stops the run.

        Fetching a loss waits for its step. The loop keeps the last ``IN_FLIGHT`` steps unchecked, so
        the host reads losses of steps that are already done while the device runs the next ones,
        and never lets more than that many steps queue up.
        """
        while len(self.pending) > keep:
            step, loss = self.pending.popleft()
            value = float(loss)
            if math.isfinite(value):
                self.last_loss = value
                continue
            self.pending.clear()
            if self.writer is not None:
                self.writer.wait()  # the checkpoint in flight is complete: list it with the others
            raise NonFiniteLossError(f"The training loss is {value} at step {step}; stopping. {self._advice()}")

    def _advice(self) -> str:
        if not self.workdir:
            return "Try a lower config.lr, config.grad_clip_norm or a longer warmup."
        kept = []
        for path in checkpoint.list_checkpoints(self.workdir):
            meta = checkpoint.read_metadata(path)
            kept.append((path, int(meta["step"]), meta.get("training_loss")))
        losses = [(r["step"], float(r["training_loss"])) for r in self.metric_log.read() if "training_loss" in r]
        return divergence_advice(kept, losses, self.workdir)

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
        assert self.writer is not None
        self.writer.save(
            step,
            self.ts.state,
            metadata={
                "train_seconds": self.chrono.train_seconds,
                "examples_seen": step * self.plan.batch_size,
                "data_index": step * self.plan.local_batch_size,
                "training_loss": self.last_loss,
            },
        )
