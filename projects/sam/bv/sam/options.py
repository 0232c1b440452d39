"""``config.sam``: what SAM or GSAM a run uses, read and checked once, before training.

    config.task = "sam"
    config.sam = dict(rho=0.05)                                   # SAM
    config.sam = dict(rho_max=0.6, rho_min=0.1, alpha=0.6)        # GSAM: rho follows the lr schedule

Every mistake is a :class:`bv.core.config.ConfigError` that names the field, what it
got and what it expects.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Mapping

from bv.core.config import ConfigError

PERTURBATIONS = ("global", "per_shard")
SAM_KEYS = ("task", "rho", "adaptive", "perturbation", "shards", "eps")
GSAM_KEYS = ("rho_max", "rho_min", "alpha", "minimize_fp", "follow", "lr_max", "lr_min")


@dataclasses.dataclass(frozen=True)
class SamOptions:
    """One run's sharpness-aware settings (see the bv-sam README for each field)."""

    rho_max: float  # SAM: rho_max == rho_min == rho
    rho_min: float
    gsam: bool = False  # GSAM: rho follows the lr, and alpha's surrogate-gap term
    alpha: float = 0.0
    minimize_fp: bool = True  # GSAM: descend on the perturbed loss (True, the paper's) or on the clean one
    follow: str = "lr"  # GSAM: the learning rate (a name the trainer logs) that rho follows
    lr_max: float | None = None  # GSAM: the lr at which rho = rho_max (None: the largest lr of the run)
    lr_min: float | None = None  # GSAM: the lr at which rho = rho_min (None: the smallest lr of the run)
    task: str = "classification"  # the task whose gradient is made sharpness-aware
    adaptive: bool = False  # scale each parameter's perturbation by its magnitude |w|
    perturbation: str = "global"  # "global": from the whole batch's gradient; "per_shard": per group of examples
    shards: int | None = None  # per_shard: how many groups (None: one per device)
    eps: float = 1e-12  # added to gradient norms before dividing by them

    @property
    def rho_follows_lr(self) -> bool:
        """Whether rho changes during the run (GSAM with rho_max > rho_min)."""
        return self.gsam and self.rho_max != self.rho_min


def _plain(value: Any) -> Any:
    return value.to_dict() if hasattr(value, "to_dict") else value


def _number(spec: Mapping[str, Any], key: str, default: Any = None) -> float:
    value = spec.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"config.sam.{key} must be a number, got {value!r}.")
    return float(value)


def _flag(spec: Mapping[str, Any], key: str, default: bool) -> bool:
    value = spec.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"config.sam.{key} must be True or False, got {value!r}.")
    return value


def trained_schedule_names(schedule: Any) -> list[str]:
    """The names the trainer gives the learning rates of ``config.schedule`` ("lr", "lr_1", ...).

    One per schedule that trains something, in config order (``bv.core.optimizers.make_optimizer``).
    """
    schedule = _plain(schedule)
    if schedule is None or isinstance(schedule, Mapping):
        return ["lr"]
    trained = [rule for rule in schedule if isinstance(rule, (list, tuple)) and len(rule) == 2 and rule[1] is not None]
    return ["lr" if i == 0 else f"lr_{i}" for i in range(len(trained))]


def _constant_schedule(schedule: Any) -> bool:
    """Whether ``config.schedule`` keeps the lr constant for the whole run, read from the config alone."""
    schedule = _plain(schedule)
    if not isinstance(schedule, Mapping):
        return False
    ramps = [k for k in schedule if k.startswith(("warmup_", "cooldown_")) and schedule[k]]
    return schedule.get("decay_type", "cosine") == "constant" and not ramps


def parse_options(sam: Any, schedule: Any = None) -> SamOptions:
    """Reads ``config.sam`` (a dict) against ``config.schedule``; raises ConfigError on any mistake."""
    sam = _plain(sam)
    if not isinstance(sam, Mapping) or not sam:
        raise ConfigError(
            "The sam task needs config.sam = dict(rho=0.05) (SAM) or dict(rho_max=..., rho_min=..., alpha=...) "
            f"(GSAM); got {sam!r}."
        )
    unknown = sorted(set(sam) - set(SAM_KEYS) - set(GSAM_KEYS))
    if unknown:
        close = difflib.get_close_matches(unknown[0], SAM_KEYS + GSAM_KEYS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"config.sam has unknown keys {unknown}.{hint} Allowed: {', '.join(SAM_KEYS + GSAM_KEYS)}.")
    gsam_keys = sorted(k for k in GSAM_KEYS if k in sam)
    if "rho" in sam and gsam_keys:
        raise ConfigError(
            f"config.sam sets rho (SAM) and {gsam_keys} (GSAM): give rho alone for SAM, or rho_max and rho_min "
            "(and alpha) for GSAM. GSAM with alpha=0 and rho_max == rho_min is SAM."
        )
    if "rho" not in sam and not ("rho_max" in sam and "rho_min" in sam):
        raise ConfigError(
            f"config.sam needs rho (SAM) or both rho_max and rho_min (GSAM); it has {sorted(sam)}. Example: "
            "dict(rho=0.05), or dict(rho_max=0.6, rho_min=0.1, alpha=0.6)."
        )
    common = _common(sam)
    if "rho" in sam:
        rho = _number(sam, "rho")
        if rho < 0:
            raise ConfigError(f"config.sam.rho (the radius of the perturbation) must be >= 0, got {rho}.")
        return SamOptions(rho_max=rho, rho_min=rho, **common)
    return _gsam(sam, schedule, common)


def _common(sam: Mapping[str, Any]) -> dict[str, Any]:
    task = sam.get("task", "classification")
    if not isinstance(task, str) or not task or task == "sam":
        raise ConfigError(
            f"config.sam.task names the task SAM trains (classification, distill, ...), got {task!r}; "
            "it cannot be 'sam' itself."
        )
    perturbation = sam.get("perturbation", "global")
    if perturbation not in PERTURBATIONS:
        raise ConfigError(f"config.sam.perturbation must be one of {', '.join(PERTURBATIONS)}, got {perturbation!r}.")
    shards = sam.get("shards")
    if shards is not None:
        if perturbation != "per_shard":
            raise ConfigError("config.sam.shards is only read with perturbation='per_shard'; remove it, or set both.")
        if isinstance(shards, bool) or not isinstance(shards, int) or shards < 1:
            raise ConfigError(f"config.sam.shards must be a positive integer (groups of the batch), got {shards!r}.")
    eps = _number(sam, "eps", 1e-12)
    if eps < 0:
        raise ConfigError(f"config.sam.eps (added to gradient norms) must be >= 0, got {eps}.")
    return dict(task=task, adaptive=_flag(sam, "adaptive", False), perturbation=perturbation, shards=shards, eps=eps)


def _gsam(sam: Mapping[str, Any], schedule: Any, common: dict[str, Any]) -> SamOptions:
    rho_max, rho_min = _number(sam, "rho_max"), _number(sam, "rho_min")
    if rho_min < 0:
        raise ConfigError(f"config.sam.rho_min must be >= 0, got {rho_min}.")
    if rho_min > rho_max:
        raise ConfigError(
            f"config.sam.rho_min ({rho_min}) is larger than rho_max ({rho_max}): rho goes from rho_max at the "
            "largest learning rate to rho_min at the smallest, so rho_min <= rho_max."
        )
    alpha = _number(sam, "alpha", 0.0)
    if alpha < 0:
        raise ConfigError(f"config.sam.alpha (the weight of the surrogate-gap term) must be >= 0, got {alpha}.")
    lr_max = None if sam.get("lr_max") is None else _number(sam, "lr_max")
    lr_min = None if sam.get("lr_min") is None else _number(sam, "lr_min")
    if lr_max is not None and lr_min is not None and not lr_min < lr_max:
        raise ConfigError(
            f"config.sam.lr_min ({lr_min}) must be smaller than lr_max ({lr_max}): rho moves from rho_min to "
            "rho_max as the learning rate moves between them."
        )
    options = SamOptions(
        rho_max=rho_max,
        rho_min=rho_min,
        gsam=True,
        alpha=alpha,
        minimize_fp=_flag(sam, "minimize_fp", True),
        follow=sam.get("follow", "lr"),
        lr_max=lr_max,
        lr_min=lr_min,
        **common,
    )
    if options.rho_follows_lr:
        _check_schedule_to_follow(options, sam, schedule)
    return options


def _check_schedule_to_follow(options: SamOptions, sam: Mapping[str, Any], schedule: Any) -> None:
    """GSAM's rho moves with a learning rate: there must be one to follow, and it must move."""
    names = trained_schedule_names(schedule)
    if "follow" not in sam and len(names) > 1:
        raise ConfigError(
            f"config.schedule has {len(names)} trained schedules ({', '.join(names)}); say which learning rate "
            "GSAM's rho follows with config.sam.follow."
        )
    if options.follow not in names:
        raise ConfigError(
            f"config.sam.follow={options.follow!r} names no learning rate of this run; config.schedule gives "
            f"{', '.join(names)}."
        )
    if _constant_schedule(schedule) and (options.lr_max is None or options.lr_min is None):
        raise ConfigError(
            f"GSAM moves rho from rho_max={options.rho_max} to rho_min={options.rho_min} as the learning rate "
            "decays, but config.schedule keeps the learning rate constant: there is no schedule to follow. Use a "
            "decaying schedule (e.g. decay_type='cosine'), or a constant rho (rho_max == rho_min, or SAM's rho)."
        )
