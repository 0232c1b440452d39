"""The suite's sections, each run in a fresh process: ``python -m bvbench.sections NAME 'JSON kwargs'``.

A fresh process per section keeps memory figures apart, lets a section ask for simulated CPU
devices (``XLA_FLAGS``) before JAX starts, and keeps one failing section from taking the others
down. The section's result is printed as one line, ``RESULT_MARK`` followed by JSON.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import tempfile
from typing import Any, Callable

RESULT_MARK = "BVBENCH_RESULT "


def _module(name: str) -> Any:
    # Imported by name: the sections that use torch and timm stay out of this module's (and the type
    # checker's) import graph; benchmarks:all declares them.
    return importlib.import_module(name)


def trainer_overhead(**kw: Any) -> Any:
    return _module("bvbench.trainer_overhead").measure(**kw)


def model(key: str, runs: list[dict[str, Any]]) -> Any:
    """Several :func:`bvbench.throughput.compare` runs of one model (train/infer, fp32/bf16)."""
    compare = _module("bvbench.throughput").compare
    return [compare(key, **run) for run in runs]


def scaling(**kw: Any) -> Any:
    return _module("bvbench.throughput").scaling(**kw)


def fsdp(runs: list[dict[str, Any]]) -> Any:
    per_device_memory = _module("fsdp_memory").per_device_memory
    return [per_device_memory(**run) for run in runs]


def checkpoint(**kw: Any) -> Any:
    with tempfile.TemporaryDirectory(prefix="bv-bench-ckpt-") as root:
        return _module("checkpoint_io").throughput_figures(root=root, **kw)


def load_pretrained(**kw: Any) -> Any:
    return _module("load_pretrained").measure(**kw)


def pp(**kw: Any) -> Any:
    return _module("pp_throughput").measure(**kw)


def evaluation(**kw: Any) -> Any:
    return _module("bvbench.eval_throughput").measure(**kw)


def gpu(**kw: Any) -> Any:
    return _module("bvbench.gpu").measure(**kw)


SECTIONS: dict[str, Callable[..., Any]] = {
    "trainer_overhead": trainer_overhead,
    "model": model,
    "scaling": scaling,
    "fsdp": fsdp,
    "checkpoint": checkpoint,
    "load_pretrained": load_pretrained,
    "pp": pp,
    "evaluation": evaluation,
    "gpu": gpu,
}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    name, kwargs = argv[0], json.loads(argv[1]) if len(argv) > 1 else {}
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    result = SECTIONS[name](**kwargs)
    print(RESULT_MARK + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
