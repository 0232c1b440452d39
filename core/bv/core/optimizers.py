"""Builds the optimizer from a config, as big_vision does: one optax chain driven by regexes.

For the parameters that train, gradients go through

    clip by global norm -> optax_name(**optax) -> * lr -> * lr_mults
    -> + wd * wd_mult * param -> * schedule(step) -> * -1

so weight decay is decoupled: it is scaled by the schedule but not by ``lr``.
Parameters whose ``schedule`` entry is ``None`` are frozen: they hold no
optimizer state and their update is exactly zero.

Regexes fully match `/`-joined parameter names (see ``bv.core.tree``); the first
matching rule wins.
"""

from __future__ import annotations

import difflib
import logging
import math
import numbers
import re
from typing import Any, Callable, Sequence

import optax

from bv.core import optax_extra
from bv.core.config import ConfigError
from bv.core.schedules import Schedule, make_schedule
from bv.core.tree import first_match, flatten_with_names, map_with_names

log = logging.getLogger(__name__)

DEFAULT_WD_MULTS = ((".*/kernel$", 1.0),)
_TRAIN, _FREEZE = "train", "freeze"
_BIG_VISION = "big_vision."
_OPTAX_EXAMPLES = ("scale_by_adam", "scale_by_lion", "scale_by_rms", "trace", "identity", "contrib.scale_by_adopt")


def _plain(value: Any) -> Any:
    """ConfigDicts (and FrozenConfigDicts) to plain dicts; everything else as is."""
    return value.to_dict() if hasattr(value, "to_dict") else value


def _get(config: Any, key: str, default: Any = None) -> Any:
    value = config.get(key, default)
    return default if value is None else _plain(value)


def _rules(value: Any, field: str) -> list[tuple[str, Any]]:
    """Checks a list of ``(regex, value)`` pairs and compiles nothing yet."""
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{field} must be a list of (regex, value) pairs, got {value!r}.")
    rules = []
    for rule in value:
        if not (isinstance(rule, (list, tuple)) and len(rule) == 2 and isinstance(rule[0], str)):
            raise ConfigError(f"{field} must be a list of (regex, value) pairs; {rule!r} is not one.")
        try:
            re.compile(rule[0])
        except re.error as e:
            raise ConfigError(f"{field}: {rule[0]!r} is not a valid regex ({e}).") from None
        rules.append((rule[0], _plain(rule[1])))
    return rules


def _assign(names: Sequence[str], rules: Sequence[tuple[str, Any]], field: str) -> dict[str, int | None]:
    """Maps each parameter name to the index of the first rule that fully matches it.

    Every rule must match at least one parameter name, so a typo is an error, not a no-op.
    """
    indexed = [(pattern, i) for i, (pattern, _) in enumerate(rules)]
    assigned = {name: first_match(name, indexed) for name in names}
    for i, (pattern, _) in enumerate(rules):
        if not any(re.fullmatch(pattern, name) for name in names):
            hint = " Parameter names never start with '/'." if pattern.startswith("/") else ""
            raise ConfigError(
                f"{field}: regex {pattern!r} matches no parameter.{hint} Regexes must match whole names such as "
                f"{_examples(names)}."
            )
        if i not in assigned.values():
            log.warning("%s: every parameter matched by %r is taken by an earlier rule.", field, pattern)
    return assigned


def _examples(names: Sequence[str], n: int = 5) -> str:
    shown = ", ".join(repr(name) for name in names[:n])
    return shown + (f" (and {len(names) - n} more)" if len(names) > n else "")


def _mask(params: Any, assigned: dict[str, int | None], index: int) -> Any:
    return map_with_names(lambda name, _: assigned[name] == index, params)


def _schedule_rules(config: Any, schedule: Any = None) -> list[tuple[str, Any]]:
    schedule = _get(config, "schedule", {}) if schedule is None else _plain(schedule)
    if isinstance(schedule, dict):
        return [(".*", schedule)]
    rules = _rules(schedule, "config.schedule")
    for pattern, sched in rules:
        if sched is not None and not isinstance(sched, dict):
            raise ConfigError(
                f"config.schedule: the entry for {pattern!r} must be a dict of schedule options or None "
                f"(to freeze), got {sched!r}."
            )
    return rules


def _split_frozen(
    config: Any, params: Any, schedule: Any = None
) -> tuple[dict[str, int | None], list[tuple[str, Any]], set[str]]:
    """The schedule rule of every parameter, the rules, and the names of the frozen parameters."""
    names = [name for name, _ in flatten_with_names(params)]
    rules = _schedule_rules(config, schedule)
    assigned = _assign(names, rules, "config.schedule")
    uncovered = [name for name, i in assigned.items() if i is None]
    if uncovered:
        raise ConfigError(
            f"config.schedule must cover every parameter (use None to freeze); not covered: {_examples(uncovered, 10)}."
        )
    frozen = {name for name, i in assigned.items() if i is not None and rules[i][1] is None}
    if names and len(frozen) == len(names):
        raise ConfigError("config.schedule freezes every parameter, so nothing would train.")
    return assigned, rules, frozen


def resolve_transform(name: str) -> Callable[..., optax.GradientTransformation]:
    """The factory named by ``optax_name``: ``"big_vision.<name>"`` or an ``optax`` attribute path."""
    if name.startswith(_BIG_VISION):
        short = name[len(_BIG_VISION) :]
        if short in optax_extra.transforms:
            return optax_extra.transforms.get(short)
        obj = None
    else:
        obj = optax
        for part in name.removeprefix("optax.").split("."):
            obj = getattr(obj, part, None)
    if obj is None or not callable(obj):
        own = [_BIG_VISION + n for n in optax_extra.transforms.names()]
        public = [n for n in dir(optax) if not n.startswith("_")]
        close = difflib.get_close_matches(name.removeprefix("optax."), public + own, n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ConfigError(
            f"Unknown optax_name {name!r}.{hint} Expected a transform of optax, such as "
            f"{', '.join(map(repr, _OPTAX_EXAMPLES))}, or one of big_vision's: {', '.join(map(repr, own))}."
        )
    return obj  # type: ignore[return-value]


def _base_transform(config: Any) -> optax.GradientTransformation:
    name = _get(config, "optax_name", "scale_by_adam")
    kwargs = _get(config, "optax", {})
    factory = resolve_transform(name)
    try:
        tx = factory(**kwargs)
    except TypeError as e:
        raise ConfigError(f"optax_name {name!r} cannot be built with config.optax={kwargs!r}: {e}") from None
    if not isinstance(tx, optax.GradientTransformation):
        raise ConfigError(f"optax_name {name!r} returned {type(tx).__name__}, not an optax GradientTransformation.")
    return tx


def _lr_mult_transforms(config: Any, params: Any, names: Sequence[str]) -> list[optax.GradientTransformation]:
    lr_mults = _get(config, "lr_mults")
    if not lr_mults:
        return []
    rules = _rules(lr_mults, "config.lr_mults")
    bad = [(pattern, mult) for pattern, mult in rules if not mult > 0]
    if bad:
        raise ConfigError(f"config.lr_mults must be positive, got {bad}; freeze parameters with schedule=None instead.")
    assigned = _assign(names, rules, "config.lr_mults")
    return [optax.masked(optax.scale(mult), _mask(params, assigned, i)) for i, (_, mult) in enumerate(rules)]


def _weight_decay_transforms(config: Any, params: Any, names: Sequence[str]) -> list[optax.GradientTransformation]:
    wd = _get(config, "wd", 0.0)
    if not wd:
        return []
    given = _get(config, "wd_mults")
    rules = _rules(given if given is not None else DEFAULT_WD_MULTS, "config.wd_mults")
    if given is None and not any(re.fullmatch(rules[0][0], name) for name in names):
        log.warning("config.wd=%s but no parameter name ends in '/kernel'; nothing is decayed.", wd)
        return []
    assigned = _assign(names, rules, "config.wd_mults")
    return [
        optax.add_decayed_weights(wd * mult, _mask(params, assigned, i)) for i, (_, mult) in enumerate(rules) if mult
    ]


def _check_deprecated(config: Any) -> None:
    moved = {"weight_decay": "wd (with wd_mults)", "optim": "optax_name and optax"}
    for old, new in moved.items():
        if old in config:
            raise ConfigError(f"config.{old} is not supported; use config.{new}.")


def make_optimizer(
    config: Any, params: Any, total_steps: int, *, schedule: Any = None
) -> tuple[optax.GradientTransformation, list[tuple[str, Schedule]]]:
    """Returns the gradient transformation and the named learning-rate functions to log.

    ``params`` may be arrays or shapes (``jax.eval_shape``); only names and tree
    structure are used. Fields read from ``config`` (missing ones take defaults):
    ``optax_name`` ("scale_by_adam"), ``optax`` ({}), ``lr`` (required), ``schedule``
    ({} = cosine), ``wd`` (0), ``wd_mults`` (kernels only), ``lr_mults`` (none),
    ``grad_clip_norm`` (none).

    The returned functions map a step to ``lr * schedule(step)`` for each schedule
    that trains something, in config order, named ``"lr"``, ``"lr_1"``, ``"lr_2"``, ...
    The updates must be computed as ``tx.update(grads, state, params)`` when ``wd`` is set.
    ``schedule`` replaces ``config.schedule`` (the trainer passes the one whose
    durations it resolved to steps, see :mod:`bv.core.run_plan`).
    """
    _check_deprecated(config)
    lr = _learning_rate(config.get("lr"))
    names = [name for name, _ in flatten_with_names(params)]
    assigned, rules, frozen = _split_frozen(config, params, schedule)

    schedule_txs: list[optax.GradientTransformation] = []
    named_fns: list[tuple[str, Schedule]] = []
    for i, (_, sched) in enumerate(rules):
        if sched is None:
            continue
        sched = dict(sched)
        if "base" in sched:
            raise ConfigError("config.schedule: scale a schedule with 'mult', not 'base' (the lr is config.lr).")
        fn = make_schedule(total_steps, base=sched.pop("mult", 1.0), **sched)
        schedule_txs.append(optax.masked(optax.scale_by_schedule(fn), _mask(params, assigned, i)))
        name = "lr" if not named_fns else f"lr_{len(named_fns)}"
        named_fns.append((name, _scaled(fn, lr)))

    clip_norm = _get(config, "grad_clip_norm")
    train_tx = optax.chain(
        optax.clip_by_global_norm(clip_norm) if clip_norm else optax.identity(),
        _base_transform(config),
        optax.scale(lr),
        *_lr_mult_transforms(config, params, names),
        *_weight_decay_transforms(config, params, names),
        *schedule_txs,
        optax.scale(-1.0),
    )
    labels = map_with_names(lambda name, _: _FREEZE if name in frozen else _TRAIN, params)
    tx = optax.multi_transform({_TRAIN: train_tx, _FREEZE: optax.set_to_zero()}, labels)
    return tx, named_fns


def _learning_rate(lr: Any) -> float:
    """``config.lr`` checked: a finite number >= 0 (0 trains nothing, e.g. to check a pipeline or an eval)."""
    if lr is None:
        raise ConfigError("config.lr (the base learning rate) is required to build the optimizer.")
    if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not math.isfinite(lr):
        raise ConfigError(f"config.lr must be a finite number, such as 0.001; got {lr!r}.")
    if lr < 0:
        raise ConfigError(
            f"config.lr={lr!r} is negative: training would climb the loss instead of descending it (gradient "
            "ascent). Use a positive learning rate such as 0.001."
        )
    return float(lr)


def _scaled(fn: Schedule, lr: float) -> Schedule:
    return lambda step: lr * fn(step)
