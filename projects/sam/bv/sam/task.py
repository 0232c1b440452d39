"""The ``sam`` task: any bv task, trained with SAM's or GSAM's gradient.

    config.task = "sam"
    config.sam = dict(task="classification", rho=0.05)                     # SAM around the classification task
    config.sam = dict(rho_max=0.6, rho_min=0.1, alpha=0.6)                 # GSAM

The wrapped task (``config.sam.task``, default ``classification``; also ``distill``,
``image_text``, ...) is built from the same config and keeps its params, loss, metrics,
predict functions and sharding annotations. Only ``step_grads``, the trainer's hook for
the gradient of a whole step, changes: the trainer's mixup, gradient accumulation,
mesh, FSDP, optimizer, checkpoints and evaluators are untouched.

Perturbation (``config.sam.perturbation``):

- ``global`` (default): one perturbation from the gradient of the whole global batch
  (over every microbatch with gradient accumulation). A run gives the same numbers on
  any number of devices and with any ``grad_accum_steps``, and FSDP-sharded params
  stay sharded: the perturbed params are laid out like the params.
- ``per_shard``: the batch is split into ``shards`` contiguous groups (default: one
  per device, which is big_vision's behaviour, where each device perturbs the params by
  its own examples' gradient before the gradients are averaged; the SAM paper's
  "m-sharpness"). Fixing ``shards`` makes such a run topology-independent too. Each
  group's gradient is a full-size array, so this costs ``shards`` gradients of memory.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import ml_collections

from bv.core import registry
from bv.core.config import ConfigError
from bv.core.frozen import FrozenArrays
from bv.core.tasks import Batch, Metrics, Params, StepInfo, Task, get_task
from bv.core.tree import first_match, flatten_with_names
from bv.sam.gradients import sam_grads
from bv.sam.options import SamOptions, parse_options
from bv.sam.rho import rho_at

_UNMATCHED = object()


def frozen_names(schedule: Any, params: Params) -> frozenset[str]:
    """The parameters ``config.schedule`` freezes (a ``(regex, None)`` rule is their first full match)."""
    schedule = schedule.to_dict() if hasattr(schedule, "to_dict") else schedule
    if not isinstance(schedule, (list, tuple)):
        return frozenset()
    rules = [tuple(rule) for rule in schedule]
    names = [name for name, _ in flatten_with_names(params)]
    return frozenset(name for name in names if first_match(name, rules, _UNMATCHED) is None)


def inner_config(config: ml_collections.ConfigDict, task: str) -> ml_collections.ConfigDict:
    """``config`` for the wrapped task: a copy whose ``task`` is ``task``."""
    inner = config.copy_and_resolve_references()
    with inner.unlocked():
        inner.task = task
    return inner


@registry.tasks.register("sam")
class SamTask(Task):
    """Wraps the task ``config.sam.task`` and gives the optimizer SAM's or GSAM's gradient."""

    def __init__(self, config: ml_collections.ConfigDict):
        super().__init__(config)
        self.options: SamOptions = parse_options(config.get("sam"), config.get("schedule"))
        self.inner: Task = get_task(inner_config(config, self.options.task))

    # The wrapped task's contract, unchanged.
    def init(self, rng: jax.Array, batch_spec: Mapping[str, jax.ShapeDtypeStruct]) -> Params:
        return self.inner.init(rng, batch_spec)

    def loss(self, params: Params, batch: Batch, rng: jax.Array) -> tuple[jax.Array, Metrics]:
        return self.inner.loss(params, batch, rng)

    def grads(self, params: Params, batch: Batch, rng: jax.Array) -> tuple[jax.Array, Metrics, Params]:
        return self.inner.grads(params, batch, rng)

    def after_step(
        self, old_params: Params, params: Params, batch: Batch, rng: jax.Array, info: StepInfo
    ) -> tuple[Params, Metrics]:
        # A wrapped task's non-gradient updates (UViM's moving-average codebook) still apply under SAM.
        return self.inner.after_step(old_params, params, batch, rng, info)

    def predict_fns(self) -> dict[str, Callable[..., Any]]:
        return self.inner.predict_fns()

    def logical_axes(self, params: Params) -> Mapping[str, tuple[str | None, ...]] | None:
        return self.inner.logical_axes(params)

    def frozen(self) -> FrozenArrays | None:  # a distillation teacher under SAM
        return self.inner.frozen()

    def __getattr__(self, name: str) -> Any:  # the wrapped task's own attributes (model, teachers, ...)
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    # What SAM changes.
    def step_grads(
        self, params: Params, batch: Batch, rng: jax.Array, info: StepInfo
    ) -> tuple[jax.Array, Metrics, Params]:
        o = self.options
        rho = rho_at(o, info)
        frozen = frozen_names(self.config.get("schedule"), params)

        def sam(batch: Batch, rng: jax.Array) -> tuple[jax.Array, Metrics, Params]:
            return sam_grads(
                self.inner.grads,
                params,
                batch,
                rng,
                rho,
                alpha=o.alpha if o.gsam else None,
                minimize_fp=o.minimize_fp,
                adaptive=o.adaptive,
                eps=o.eps,
                num_microbatches=info.num_microbatches,
                frozen=frozen,
            )

        shards = o.shards or jax.device_count()
        if o.perturbation == "global" or shards == 1:
            return sam(batch, rng)
        groups = _split_groups(batch, shards, info.num_microbatches)
        rngs = jax.vmap(lambda i: jax.random.fold_in(rng, i))(jnp.arange(shards))
        loss, metrics, grads = jax.vmap(sam)(groups, rngs)
        return jax.tree.map(lambda x: jnp.mean(x.astype(jnp.float32), axis=0).astype(x.dtype), (loss, metrics, grads))


def _split_groups(batch: Batch, shards: int, num_microbatches: int) -> Batch:
    """``[B, ...]`` leaves to ``[shards, B // shards, ...]``: group ``i`` is the ``i``-th contiguous block.

    The trainer lays a batch out over the devices in contiguous blocks, so with one group
    per device each group's examples are already on its device.
    """
    sizes = sorted({x.shape[0] for x in jax.tree.leaves(batch)})
    size = sizes[0] if len(sizes) == 1 else 0
    if not size or size % (shards * num_microbatches):
        raise ConfigError(
            f"config.sam.perturbation='per_shard' splits the batch into {shards} groups of "
            f"{num_microbatches} microbatch(es) each, but the batch has {size or sizes} examples: choose "
            f"config.input.batch_size divisible by {shards * num_microbatches} (or other config.sam.shards)."
        )
    return jax.tree.map(lambda x: x.reshape(shards, size // shards, *x.shape[1:]), batch)
