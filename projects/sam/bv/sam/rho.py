"""GSAM's rho at a step: it follows the trainer's learning rate from ``rho_max`` to ``rho_min``.

As in the GSAM paper (Zhuang et al., ICLR 2022, Alg. 1) and big_vision,

    rho_t = rho_min + (rho_max - rho_min) * (lr_t - lr_min) / (lr_max - lr_min)

where ``lr_t`` is the learning rate the step's update applies: the trainer's own
schedule function (``bv.core.optimizers.make_optimizer`` with the run plan's resolved
``config.schedule``), handed to the task in ``StepInfo.lr_fns``. ``lr_max`` and ``lr_min``
default to the largest and smallest value of that function over the run, so rho stays
in ``[rho_min, rho_max]``; a config may give them (big_vision's configs do).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from bv.core.config import ConfigError
from bv.core.tasks import StepInfo
from bv.sam.options import SamOptions


def lr_range(info: StepInfo, name: str) -> tuple[float, float]:
    """The largest and smallest value the learning rate ``name`` takes over the run's steps."""
    fns = dict(info.lr_fns)
    if name not in fns:
        raise ConfigError(
            f"GSAM's rho follows the learning rate {name!r} (config.sam.follow), but the optimizer has "
            f"{', '.join(fns) or 'no learning rate schedule'}."
        )
    if not info.total_steps:
        raise ConfigError(
            "GSAM needs the run's total steps to find the learning rate's range; this step was built without "
            "them. Give config.sam.lr_max and config.sam.lr_min, or build the step with total_steps."
        )
    with jax.ensure_compile_time_eval():  # concrete numbers even while the train step is being traced
        values = np.asarray(fns[name](jnp.arange(info.total_steps)), np.float64)
    return float(values.max()), float(values.min())


def rho_at(options: SamOptions, info: StepInfo) -> jax.Array:
    """The perturbation radius of this step (float32 scalar)."""
    if not options.rho_follows_lr:
        return jnp.float32(options.rho_max)
    lr_max, lr_min = options.lr_max, options.lr_min
    if lr_max is None or lr_min is None:
        run_max, run_min = lr_range(info, options.follow)
        lr_max = run_max if lr_max is None else lr_max
        lr_min = run_min if lr_min is None else lr_min
    if not lr_min < lr_max:
        raise ConfigError(
            f"GSAM moves rho from rho_max={options.rho_max} to rho_min={options.rho_min} as the learning rate "
            f"{options.follow!r} moves from lr_max={lr_max:g} to lr_min={lr_min:g}, but this run's learning rate "
            "does not move (or lr_min >= lr_max): there is no schedule to follow. Use a decaying schedule, or a "
            "constant rho (rho_max == rho_min, or SAM's rho)."
        )
    lr = jnp.asarray(info.lr(options.follow), jnp.float32)
    slope = (options.rho_max - options.rho_min) / (lr_max - lr_min)
    return jnp.float32(options.rho_min) + jnp.float32(slope) * (lr - jnp.float32(lr_min))
