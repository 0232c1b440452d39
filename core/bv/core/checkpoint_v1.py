"""``bv-convert-checkpoints``: rewrite a workdir's format-1 checkpoints as Orbax checkpoints.

    bv-convert-checkpoints runs/vit_mnist

Format 1 (bv-core before Orbax) kept each checkpoint as one ``state.safetensors``
plus ``checkpoint.json`` and a ``LAST`` pointer. The converter reads each one,
writes it again in the current format under the same step and metadata, and
moves the old folder to ``checkpoints/format-1/`` (delete it once the run
resumes). Nothing is lost if it is interrupted: the old folder is moved only after
the new one is committed, and a rerun picks up where it stopped. Format-1
checkpoints held the whole state in one file, so reading one fits in one host's memory.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from safetensors import SafetensorError, safe_open

from bv.core import checkpoint, cli
from bv.core import checkpoint_leaves as codec

BACKUP_DIR = "format-1"
_ARRAYS_FILE = "state.safetensors"
_INFO_FILE = "checkpoint.json"
_LAST_FILE = "LAST"


def read(path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The state (a nested dict by leaf name) and metadata of the format-1 checkpoint at ``path``."""
    with open(os.path.join(path, _INFO_FILE), encoding="utf-8") as f:
        info = json.load(f)
    if info.get("format") != checkpoint.FORMAT or info.get("version") != 1:
        raise ValueError(f"{path} is not a format-1 bv checkpoint (its {_INFO_FILE} says {info.get('version')!r}).")
    named = []
    arrays = os.path.join(path, _ARRAYS_FILE)
    try:
        with safe_open(arrays, framework="np") as f:
            for record in info["leaves"]:
                named.append((record["name"], _decode(record, f.get_tensor(record["name"]))))
    except (SafetensorError, OSError, ValueError) as e:
        raise checkpoint.CheckpointReadError(
            f"The format-1 checkpoint {path} cannot be converted: its {_ARRAYS_FILE} is damaged or cut short "
            f"({str(e).splitlines()[0][:200]}). It was left as it is. Move that folder out of checkpoints/ to "
            "convert (and resume from) the older ones, and run the command again."
        ) from None
    return codec.nest(named), dict(info["metadata"])


def _decode(record: dict[str, Any], stored: np.ndarray) -> Any:
    """A format-1 leaf's value: uint views and raw bytes back to their dtype, key data back to keys."""
    encoding = record.get("encoding", "native")
    if encoding == "prng_key":
        return jax.random.wrap_key_data(jnp.asarray(stored), impl=record["impl"])
    if encoding == "uint_view":
        return stored.view(codec.dtype_of(record["dtype"]))
    if encoding == "bytes":
        return np.ascontiguousarray(stored).view(codec.dtype_of(record["dtype"])).reshape(record["shape"])
    return stored


def convert(workdir: str, log: Any = print) -> list[str]:
    """Converts every format-1 checkpoint of ``workdir``; returns the new checkpoint folders."""
    ckpt_dir = os.path.join(workdir, checkpoint.CHECKPOINTS_DIR)
    if not os.path.isdir(ckpt_dir):
        raise FileNotFoundError(f"{workdir} has no {checkpoint.CHECKPOINTS_DIR}/ folder: is it a bv training workdir?")
    backup = os.path.join(ckpt_dir, BACKUP_DIR)
    staging = os.path.join(ckpt_dir, BACKUP_DIR + "-staging")
    converted = _finish_interrupted(ckpt_dir, staging)
    for step in checkpoint.old_format_steps(ckpt_dir):
        path = os.path.join(ckpt_dir, f"ckpt-{step:09d}")
        state, metadata = read(path)
        metadata.pop("step", None)
        # Write under a staging workdir first: the old folder keeps its name until the new one is complete.
        new = checkpoint.save(staging, step, state, metadata=metadata)
        os.makedirs(backup, exist_ok=True)
        os.replace(path, os.path.join(backup, os.path.basename(path)))
        os.replace(new, path)
        converted.append(path)
        log(f"Converted {path} (step {step}); the format-1 folder is now in {backup}/.")
    if converted:
        last = os.path.join(ckpt_dir, _LAST_FILE)
        if os.path.exists(last):
            os.replace(last, os.path.join(backup, _LAST_FILE))
        shutil.rmtree(staging, ignore_errors=True)
    else:
        log(f"{workdir} holds no format-1 checkpoints; nothing to convert.")
    return converted


def _finish_interrupted(ckpt_dir: str, staging: str) -> list[str]:
    """Moves into place the converted checkpoints of a run that was stopped between its two renames."""
    done = []
    for new in checkpoint.list_checkpoints(staging):
        path = os.path.join(ckpt_dir, os.path.basename(new))
        if not os.path.lexists(path):
            os.replace(new, path)
            done.append(path)
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bv-convert-checkpoints",
        description="Rewrite a bv workdir's format-1 (safetensors) checkpoints as Orbax checkpoints, in place.",
    )
    parser.add_argument("workdir", help="the training workdir (with checkpoints/)")
    args = parser.parse_args(argv)
    # A folder that is not a workdir, or checkpoints that are not format 1: the message names the path.
    with cli.user_errors("bv-convert-checkpoints", also=(OSError, ValueError)):
        convert(args.workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
