"""The trainer stays readable: ``train()`` reads as its phases, and no function in the loop's modules is long."""

import ast
import inspect
from types import ModuleType

from bv.core import ema, profiler, run_plan, train, train_data, train_loop, train_state

TRAINER_MODULES = (train, train_loop, train_state, train_data, run_plan, ema, profiler)


def _function_lengths(module: ModuleType) -> dict[str, int]:
    tree = ast.parse(inspect.getsource(module))
    return {
        node.name: node.end_lineno - node.lineno + 1  # type: ignore[operator]
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
    }


def test_train_is_at_most_60_lines_and_no_trainer_function_exceeds_80() -> None:
    assert _function_lengths(train)["train"] <= 60
    long = {
        f"{module.__name__}.{name}": n
        for module in TRAINER_MODULES
        for name, n in _function_lengths(module).items()
        if n > 80
    }
    assert not long, long
