"""The run plan: what a config's durations mean for one run, resolved once and never written back.

A config says ``total_epochs=30``, ``warmup_epochs=2``, ``log_percent=0.25``;
the trainer deals in steps. :func:`plan_run` turns every such duration into
steps for a given data set size and batch size. The user's config is left as
given; the workdir keeps both (``config.json`` as given, ``resolved.json`` the
plan), so a reader sees what was asked and what it came to.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
from typing import Any, Mapping

import ml_collections

from bv.core import durations, sharding
from bv.core.config import ConfigError
from bv.core.files import write_text

RESOLVED_FILE = "resolved.json"


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """Everything about the run's length and cadence, in steps."""

    train_size: int  # examples per epoch (the sum of a mixture's splits)
    batch_size: int  # global
    local_batch_size: int  # this process's share
    grad_accum_steps: int
    total_steps: int
    schedule: Any  # config.schedule with warmup_*/cooldown_* durations as steps
    log_every: int
    ckpt_every: int | None
    keep_every: int | None
    ckpt_async: bool = True  # write checkpoints in the background while training goes on
    ckpt_compress: bool = False  # zstd-compress checkpoint arrays (under 10% smaller, slower saves)

    def steps_of(self, prefix: str, cfg: Mapping[str, Any]) -> int | None:
        """``cfg``'s duration ``prefix`` (``log_steps``, ``log_epochs``, ...) in steps, or None if not given."""
        return durations.steps(
            prefix,
            cfg,
            data_size=self.train_size,
            batch_size=self.batch_size,
            total_steps=self.total_steps,
            default=None,
        )

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, default=_jsonable)


def _jsonable(value: Any) -> Any:
    if isinstance(value, ml_collections.ConfigDict):
        return value.to_dict()
    if isinstance(value, tuple):
        return list(value)
    return repr(value)


def resolve_schedule(schedule: Any, *, data_size: int, batch_size: int, total_steps: int) -> Any:
    """``config.schedule`` (one dict, or ``[(regex, dict or None), ...]``) with durations as steps.

    Returns a new value; ``schedule`` itself is not changed.
    """

    def resolve(sched: Any) -> Any:
        if sched is None:
            return None
        sched = sched.to_dict() if isinstance(sched, ml_collections.ConfigDict) else dict(sched)
        for prefix in ("warmup", "cooldown"):
            given = {k for k in sched if k.startswith(prefix + "_")}
            if given:
                sched[f"{prefix}_steps"] = durations.steps(
                    prefix, sched, data_size=data_size, batch_size=batch_size, total_steps=total_steps
                )
                for key in given - {f"{prefix}_steps"}:
                    del sched[key]
        return sched

    if isinstance(schedule, (list, tuple)):
        return [(regex, resolve(s)) for regex, s in schedule]
    return resolve(schedule)


def plan_run(config: ml_collections.ConfigDict, train_size: int, mesh: Any, process_count: int = 1) -> RunPlan:
    """Resolves the config's durations for a training set of ``train_size`` examples on ``mesh``."""
    batch_size = _whole_number(config.input.get("batch_size"), "config.input.batch_size", "the global batch size")
    grad_accum_steps = _whole_number(
        config.get("grad_accum_steps", 1), "config.grad_accum_steps", "the number of microbatches per step"
    )
    shards = sharding.batch_shards(mesh)
    if batch_size % (shards * grad_accum_steps):
        fits = shards * grad_accum_steps
        raise ConfigError(
            f"config.input.batch_size={batch_size} must be divisible by the {shards} device(s) the batch is split over "
            f"(mesh axes {sharding.batch_axes(mesh)}) times config.grad_accum_steps={grad_accum_steps}, i.e. by "
            f"{fits}. Use a multiple of {fits}, such as {max(fits, batch_size // fits * fits)}, or change "
            "config.grad_accum_steps."
        )
    if batch_size % process_count:
        raise ConfigError(
            f"config.input.batch_size={batch_size} must be divisible by the {process_count} processes (hosts)."
        )
    if batch_size > train_size:
        raise ConfigError(
            f"config.input.batch_size={batch_size} is larger than the training data ({train_size} examples): every "
            f"step would show each example about {batch_size / max(train_size, 1):.0f} times. Use a batch size of at "
            f"most {train_size}, or train on a larger split."
        )
    total = durations.total_steps(config, train_size, batch_size)

    def steps_of(prefix: str) -> int | None:
        return durations.steps(
            prefix, config, data_size=train_size, batch_size=batch_size, total_steps=total, default=None
        )

    return RunPlan(
        train_size=train_size,
        batch_size=batch_size,
        local_batch_size=batch_size // process_count,
        grad_accum_steps=grad_accum_steps,
        total_steps=total,
        schedule=resolve_schedule(
            config.get("schedule"), data_size=train_size, batch_size=batch_size, total_steps=total
        ),
        log_every=steps_of("log_training") or max(1, total // 100),
        ckpt_every=steps_of("ckpt"),
        keep_every=steps_of("keep_ckpt"),
        ckpt_async=bool(config.get("ckpt_async", True)),
        ckpt_compress=bool(config.get("ckpt_compress", False)),
    )


def _whole_number(value: Any, key: str, what: str) -> int:
    """``value`` as an int >= 1, else a :class:`ConfigError` naming ``key``."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value != int(value) or value < 1:
        raise ConfigError(f"{key} ({what}) must be a whole number >= 1, got {value!r}.")
    return int(value)


def save_plan(plan: RunPlan, workdir: str) -> str:
    """Writes ``workdir/resolved.json`` atomically and returns its path."""
    return write_text(os.path.join(workdir, RESOLVED_FILE), plan.to_json() + "\n")
