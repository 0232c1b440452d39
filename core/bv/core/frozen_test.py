"""Frozen arrays reach compiled code as arguments, never as constants compiled into it."""

from __future__ import annotations

import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bv.core.frozen import FrozenArrays, UnboundFrozenArraysError, bind_evaluator, bind_predict_fns

WEIGHTS = np.arange(4096, dtype=np.float32).reshape(64, 64) / 4096  # 16 KiB: far above any inlined constant


def _largest_constant_bytes(hlo: str) -> int:
    """The size of the biggest dense literal in StableHLO text (0 if none)."""
    sizes = [len(m) // 2 for m in re.findall(r'dense<"0x([0-9A-F]+)"', hlo)]
    return max(sizes, default=0)


def test_jit_passes_the_arrays_as_an_argument_and_binds_them_while_tracing() -> None:
    frozen = FrozenArrays({"w": jnp.asarray(WEIGHTS)})
    step = frozen.jit(lambda x: x @ frozen.value["w"])
    x = jnp.ones((2, 64))
    np.testing.assert_allclose(step(x), np.ones((2, 64)) @ WEIGHTS, rtol=1e-6)
    hlo = step.lower(x).as_text()
    assert _largest_constant_bytes(hlo) < 1024
    # The closed-over alternative compiles the weights in: what this module exists to avoid.
    closed = jax.jit(lambda x: x @ frozen.arrays["w"]).lower(x).as_text()
    assert _largest_constant_bytes(closed) >= WEIGHTS.nbytes
    assert frozen.value["w"] is frozen.arrays["w"]  # outside any trace: the arrays themselves
    np.testing.assert_allclose(step.lower(x).compile()(x), step(x))  # ahead of time, the same call


def test_donation_applies_to_the_callers_arguments_not_to_the_frozen_arrays() -> None:
    frozen = FrozenArrays(jnp.asarray(WEIGHTS))
    state = jnp.zeros((64, 64))
    step = frozen.jit(lambda s, k: s + k * frozen.value, donate_argnums=(0,))
    out = step(state, 2.0)
    np.testing.assert_allclose(out, 2 * WEIGHTS)
    assert not frozen.arrays.is_deleted()
    np.testing.assert_allclose(step(out, 1.0), 3 * WEIGHTS)  # called again: the frozen arrays are still there


def test_reading_the_arrays_in_a_trace_that_did_not_receive_them_is_an_error() -> None:
    frozen = FrozenArrays(jnp.asarray(WEIGHTS))
    with pytest.raises(UnboundFrozenArraysError, match="read inside jax.jit without being passed in"):
        jax.jit(lambda x: x + frozen.value)(jnp.ones((64, 64)))


class _SumEvaluator:
    """An evaluator as the contract has it: ``params`` go, untouched, into its compiled step."""

    evaluate_ema = False

    def __init__(self, predict_fns: dict[str, Any]):
        predict = predict_fns["predict"]
        self._step = jax.jit(lambda params, x: jnp.sum(predict(params, x)))
        self.lowered: str = ""

    def run(self, params: Any) -> dict[str, float]:
        x = jnp.ones((2, 64))
        self.lowered = self._step.lower(params, x).as_text()
        return {"sum": float(self._step(params, x))}


def test_evaluators_get_the_arrays_through_their_params_argument() -> None:
    frozen = FrozenArrays({"teacher": jnp.asarray(WEIGHTS)})
    fns = {"predict": lambda params, x: (x @ frozen.value["teacher"]) * params}
    evaluator = bind_evaluator(_SumEvaluator(bind_predict_fns(fns, frozen)), frozen)
    assert evaluator.run(jnp.float32(2.0))["sum"] == pytest.approx(
        2 * float(np.sum(np.ones((2, 64)) @ WEIGHTS)), rel=1e-5
    )
    assert _largest_constant_bytes(evaluator.lowered) < 1024
    assert evaluator.evaluate_ema is False  # the evaluator's own attributes show through
    # Without frozen arrays nothing is wrapped.
    plain = _SumEvaluator(bind_predict_fns({"predict": lambda p, x: x * p}, None))
    assert bind_evaluator(plain, None) is plain
