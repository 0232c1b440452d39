"""Arrays a task reads but never trains (a distillation teacher), handed to compiled code as arguments.

JAX compiles the arrays that a jitted function closes over into the program as constants.
For a teacher's weights that means a second copy of them inside every executable and slow
compiles; on XLA:CPU (jax 0.10) it also gave wrong losses, NaN in some processes and not in
others. So a task keeps such arrays in a :class:`FrozenArrays` and returns it from
``Task.frozen()``. The trainer's step (:meth:`FrozenArrays.jit`) and every evaluator
(:func:`bind_evaluator`) then receive them as ordinary arguments, and bind the traced
arguments while they trace, so the task reads ``frozen.value`` the same way inside and
outside ``jit``.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp

Arrays = Any  # a pytree of jax.Arrays


class UnboundFrozenArraysError(RuntimeError):
    """Frozen arrays were read inside a compiled function that did not receive them as an argument."""


class FrozenArrays:
    """A pytree of arrays that compiled functions receive as an argument instead of closing over it."""

    def __init__(self, arrays: Arrays):
        self.arrays = arrays
        self._bound: list[Arrays] = []

    @property
    def value(self) -> Arrays:
        """The arrays: the traced argument inside a binding, else the arrays themselves (outside any trace)."""
        if self._bound:
            return self._bound[-1]
        if _tracing():
            raise UnboundFrozenArraysError(
                "A task's frozen arrays (e.g. a teacher's weights) were read inside jax.jit without being passed "
                "in: compile the function with FrozenArrays.jit, or bind them with FrozenArrays.bound(...)."
            )
        return self.arrays

    @contextlib.contextmanager
    def bound(self, traced: Arrays) -> Iterator[None]:
        """Within the block, ``value`` is ``traced`` (the arrays as an argument of the function being traced)."""
        self._bound.append(traced)
        try:
            yield
        finally:
            self._bound.pop()

    def shardings(self) -> Any:
        """Each array's sharding: where the compiled function expects its frozen argument."""
        return jax.tree.map(lambda a: a.sharding, self.arrays)

    def jit(
        self,
        fn: Callable[..., Any],
        *,
        in_shardings: Sequence[Any] | None = None,
        donate_argnums: Sequence[int] = (),
        **jit_kwargs: Any,
    ) -> FrozenJit:
        """``jax.jit(fn, ...)`` with the arrays passed as a hidden argument; call it as you would ``fn``."""

        def with_arrays(arrays: Arrays, *args: Any) -> Any:
            with self.bound(arrays):
                return fn(*args)

        if in_shardings is not None:
            jit_kwargs["in_shardings"] = (self.shardings(), *in_shardings)
        compiled = jax.jit(with_arrays, donate_argnums=tuple(i + 1 for i in donate_argnums), **jit_kwargs)
        return FrozenJit(compiled, self)


class FrozenJit:
    """A function compiled by :meth:`FrozenArrays.jit`, or its lowered or compiled stage.

    Called (and lowered) with the caller's arguments only: the frozen arrays go in first.
    Other attributes are the stage's own (``as_text``, ``cost_analysis``, ...).
    """

    def __init__(self, staged: Any, frozen: FrozenArrays):
        self._staged = staged
        self._frozen = frozen

    def __call__(self, *args: Any) -> Any:
        return self._staged(self._frozen.arrays, *args)

    def lower(self, *args: Any) -> FrozenJit:
        """Ahead-of-time lowering, as ``jax.jit(fn).lower(*args)``."""
        return FrozenJit(self._staged.lower(self._frozen.arrays, *args), self._frozen)

    def compile(self) -> FrozenJit:
        return FrozenJit(self._staged.compile(), self._frozen)

    def __getattr__(self, name: str) -> Any:
        if name in ("_staged", "_frozen"):
            raise AttributeError(name)
        return getattr(self._staged, name)


def _tracing() -> bool:
    # Inside a jit (or grad, vmap) trace even a fresh constant comes back as a tracer.
    return isinstance(jnp.zeros(()), jax.core.Tracer)


class _BoundEvaluator:
    """An evaluator whose ``params`` travel together with the task's frozen arrays."""

    def __init__(self, evaluator: Any, frozen: FrozenArrays):
        self._evaluator = evaluator
        self._frozen = frozen

    def run(self, params: Any, *args: Any, **kwargs: Any) -> dict[str, float]:
        return self._evaluator.run((params, self._frozen.arrays), *args, **kwargs)  # type: ignore[no-any-return]

    def __getattr__(self, name: str) -> Any:  # evaluate_ema, path(), ...: the evaluator's own
        if name in ("_evaluator", "_frozen"):
            raise AttributeError(name)
        return getattr(self._evaluator, name)


def bind_predict_fns(
    predict_fns: Mapping[str, Callable[..., Any]], frozen: FrozenArrays | None
) -> dict[str, Callable[..., Any]]:
    """The task's predict functions, each taking ``(params, frozen arrays)`` where it took ``params``.

    Evaluators pass ``params`` into their compiled functions untouched, so the pair arrives
    there as an argument, and each function binds the frozen half while it is traced.
    """
    if frozen is None:
        return dict(predict_fns)

    def bind(fn: Callable[..., Any]) -> Callable[..., Any]:
        def predict(packed: tuple[Any, Arrays], *args: Any, **kwargs: Any) -> Any:
            params, arrays = packed
            with frozen.bound(arrays):
                return fn(params, *args, **kwargs)

        return predict

    return {name: bind(fn) for name, fn in predict_fns.items()}


def bind_evaluator(evaluator: Any, frozen: FrozenArrays | None) -> Any:
    """``evaluator`` (built from :func:`bind_predict_fns`' functions) taking plain ``params`` again."""
    return evaluator if frozen is None else _BoundEvaluator(evaluator, frozen)
