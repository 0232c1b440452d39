"""The trainer stays readable: ``train()`` reads as its phases, and no function in the loop's modules is long."""

import ast
from pathlib import Path

TRAINER_MODULES = (
    "train.py",
    "train_loop.py",
    "train_state.py",
    "train_data.py",
    "run_plan.py",
    "ema.py",
    "profiler.py",
)


def _function_lengths(path: Path) -> dict[str, int]:
    tree = ast.parse(path.read_text())
    return {
        node.name: node.end_lineno - node.lineno + 1  # type: ignore[operator]
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
    }


def test_train_is_at_most_60_lines_and_no_trainer_function_exceeds_80() -> None:
    here = Path(__file__).parent
    assert _function_lengths(here / "train.py")["train"] <= 60
    long = {
        f"{module}:{name}": n
        for module in TRAINER_MODULES
        for name, n in _function_lengths(here / module).items()
        if n > 80
    }
    assert not long, long
