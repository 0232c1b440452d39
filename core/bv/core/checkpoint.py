"""Training checkpoints that survive a hard kill and never use pickle.

A checkpoint is a folder ``workdir/checkpoints/ckpt-{step:09d}`` holding

- ``state.safetensors``: every array leaf of the training state (params,
  optimizer state, RNG keys, counters), named by its `/`-joined tree path
  (:func:`bv.core.tree.flatten_with_names`);
- ``checkpoint.json``: the step, the caller's metadata (data position, timing,
  ...), the format version and one record per leaf (name, true dtype, shape,
  how its bytes are stored), which is how a restore checks that the checkpoint
  fits the model and optimizer before loading anything.

Dtypes safetensors cannot hold (bfloat16 and the other ml_dtypes, complex128)
are stored as a same-width unsigned-integer view of their bytes, so they come
back bit for bit. Typed PRNG keys (``jax.random.key``) are stored as their key
data and rewrapped on restore; raw ``uint32`` keys are ordinary arrays. How each
leaf is stored is ``bv.core.checkpoint_leaves``; this module writes and reads folders.

A save is atomic: it writes the folder under a temporary name, fsyncs it, and
renames it into place, then rewrites the ``LAST`` pointer the same way. A run
killed at any moment leaves either the old or the new checkpoint, plus perhaps
a ``.tmp-*`` leftover that readers ignore and the next save deletes. One
process writes a workdir's checkpoints at a time; in a multi-process run all gather the
arrays and process 0 writes them. A restore places each process's shards, on any topology.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import uuid
from typing import Any

import jax
import numpy as np
import safetensors.numpy
from jax.experimental import multihost_utils
from safetensors import safe_open

from bv.core import checkpoint_leaves as codec
from bv.core.failpoints import crash_point

FORMAT = "bv-checkpoint"
FORMAT_VERSION = 1
CHECKPOINTS_DIR = "checkpoints"
LAST_FILE = "LAST"
ARRAYS_FILE = "state.safetensors"
INFO_FILE = "checkpoint.json"

_TMP_PREFIX = ".tmp-"
_NAME_RE = re.compile(r"ckpt-(\d{9,})")
_MAX_LISTED = 8


class CheckpointMismatchError(ValueError):
    """The checkpoint's leaves differ from the template's (names, shapes or dtypes)."""


# ---------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------


def save(
    workdir: str,
    step: int,
    state: Any,
    *,
    metadata: dict[str, Any] | None = None,
    keep_last: int = 1,
    keep_every: int | None = None,
) -> str:
    """Atomically writes ``state`` as ``workdir/checkpoints/ckpt-{step:09d}`` and returns its path.

    ``metadata`` is any JSON-serialisable dict (data position, timing, ...); it comes back from
    :func:`restore` with ``"step"`` added. Afterwards only the newest ``keep_last`` checkpoints up to
    this step and those whose step is a multiple of ``keep_every`` are kept. Checkpoints with a
    higher step than this one (from a run that was rolled back) are left alone.
    """
    step = _check_step(step)
    if keep_last < 1:
        raise ValueError(f"keep_last must be at least 1 (the checkpoint just written), got {keep_last}.")
    if keep_every is not None and keep_every < 1:
        raise ValueError(f"keep_every must be a positive number of steps or None, got {keep_every}.")
    metadata = dict(metadata or {})
    if "step" in metadata and metadata["step"] != step:
        raise ValueError(f"metadata['step'] is {metadata['step']!r} but the checkpoint is for step {step}.")
    metadata["step"] = step

    # Everything that can fail on bad input fails before anything touches the disk.
    leaves, arrays = codec.encode_state(state)
    info = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "step": step,
        "saved_at": time.time(),
        "metadata": metadata,
        "treedef": str(jax.tree_util.tree_structure(state)),
        "leaves": [leaf.to_json() for leaf in leaves],
    }
    try:
        json.dumps(info)
    except (TypeError, ValueError) as e:
        raise TypeError(f"Checkpoint metadata must be JSON-serialisable (numbers, strings, lists, dicts): {e}") from e

    ckpt_dir = os.path.join(workdir, CHECKPOINTS_DIR)
    if jax.process_count() > 1:
        # The arrays were gathered by every process above; process 0 writes, the others wait for it.
        if jax.process_index() == 0:
            _write(ckpt_dir, step, info, arrays, keep_last, keep_every)
        multihost_utils.sync_global_devices(f"bv checkpoint {step}")
        return os.path.join(ckpt_dir, _ckpt_name(step))
    return _write(ckpt_dir, step, info, arrays, keep_last, keep_every)


def _write(
    ckpt_dir: str,
    step: int,
    info: dict[str, Any],
    arrays: dict[str, np.ndarray],
    keep_last: int,
    keep_every: int | None,
) -> str:
    """Writes one checkpoint folder atomically, moves LAST to it and prunes older ones."""
    if not os.path.isdir(ckpt_dir):
        os.makedirs(ckpt_dir, exist_ok=True)
        _fsync_dir(os.path.dirname(os.path.abspath(ckpt_dir)))
    _remove_leftovers(ckpt_dir)

    name = _ckpt_name(step)
    tmp = os.path.join(ckpt_dir, f"{_TMP_PREFIX}{name}-{uuid.uuid4().hex}")
    os.mkdir(tmp)
    arrays_path = os.path.join(tmp, ARRAYS_FILE)
    header = {"format": FORMAT, "version": str(FORMAT_VERSION), "step": str(step)}
    safetensors.numpy.save_file(arrays, arrays_path, metadata=header)
    _fsync_file(arrays_path)
    crash_point("checkpoint.arrays_written", step)
    # The info file is written last and records the arrays file's size: a folder whose info file
    # parses and whose arrays file has that size was written completely.
    info["arrays_bytes"] = os.path.getsize(arrays_path)
    _write_durably(os.path.join(tmp, INFO_FILE), json.dumps(info, indent=1) + "\n")
    _fsync_dir(tmp)

    final = os.path.join(ckpt_dir, name)
    if os.path.lexists(final):
        # Saving a step again (e.g. after a restart): a non-empty folder cannot be renamed over, so
        # move the old one aside first. A kill between the two renames falls back to an older step.
        old = os.path.join(ckpt_dir, f"{_TMP_PREFIX}replaced-{name}-{uuid.uuid4().hex}")
        os.replace(final, old)
        os.replace(tmp, final)
        _remove(old)
    else:
        os.replace(tmp, final)
    _fsync_dir(ckpt_dir)
    crash_point("checkpoint.renamed", step)

    last_tmp = os.path.join(ckpt_dir, f"{_TMP_PREFIX}{LAST_FILE}-{uuid.uuid4().hex}")
    _write_durably(last_tmp, name + "\n")
    os.replace(last_tmp, os.path.join(ckpt_dir, LAST_FILE))
    _fsync_dir(ckpt_dir)
    crash_point("checkpoint.pointed", step)

    _prune(ckpt_dir, step, keep_last, keep_every)
    return final


def latest(workdir: str) -> str | None:
    """The checkpoint to resume from: what ``LAST`` names, else the newest complete one, else None.

    Temporary and incomplete folders are never returned.
    """
    ckpt_dir = os.path.join(workdir, CHECKPOINTS_DIR)
    try:
        with open(os.path.join(ckpt_dir, LAST_FILE), encoding="utf-8") as f:
            name = f.read().strip()
    except (OSError, UnicodeDecodeError):
        name = ""
    if _NAME_RE.fullmatch(name) and _is_complete(os.path.join(ckpt_dir, name)):
        return os.path.join(ckpt_dir, name)
    complete = list_checkpoints(workdir)
    return complete[-1] if complete else None


def list_checkpoints(workdir: str) -> list[str]:
    """Paths of the complete checkpoints under ``workdir``, oldest step first."""
    ckpt_dir = os.path.join(workdir, CHECKPOINTS_DIR)
    return [os.path.join(ckpt_dir, _ckpt_name(s)) for s in _complete_steps(ckpt_dir)]


def read_metadata(path: str) -> dict[str, Any]:
    """The metadata saved with the checkpoint at ``path`` (with ``"step"``), without loading arrays."""
    return dict(_read_info(path)["metadata"])


def restore(path: str, template: Any) -> tuple[Any, dict[str, Any]]:
    """Loads the checkpoint at ``path`` into the tree structure of ``template``.

    ``template`` is the state to restore into (arrays, or ``jax.ShapeDtypeStruct`` such as from
    ``jax.eval_shape``). Leaf names, shapes and dtypes must all match, else
    :class:`CheckpointMismatchError` lists the first differences. Restored leaves are numpy arrays
    where the template holds numpy arrays (or the dtype needs ``jax_enable_x64``, which is off),
    Python numbers where it holds Python numbers, and jax arrays (on the template leaf's sharding,
    if any) otherwise. Returns ``(state, metadata)``.
    Reads only: nothing on disk changes.
    """
    info = _read_info(path)
    stored = {leaf.name: leaf for leaf in map(codec.Leaf.from_json, info["leaves"])}
    named, treedef = codec.flatten_named(template, what="template")
    expected = [codec.expected_leaf(name, leaf) for name, leaf in named]
    _check_match(path, stored, expected)

    values = []
    with safe_open(os.path.join(path, ARRAYS_FILE), framework="np") as f:
        for name, like in named:
            values.append(_place(codec.decode(stored[name], f.get_tensor(name)), like))
    return jax.tree_util.tree_unflatten(treedef, values), dict(info["metadata"])


def top_level_entries(path: str) -> list[str]:
    """The names at the top of the checkpoint's state (``params``, ``opt``, ``rng``, ``ema``, ...)."""
    return sorted({record["name"].split("/")[0] for record in _read_info(path)["leaves"]})


def load_params(path: str, subtree: str | None = "params") -> dict[str, Any]:
    """The leaves under ``subtree`` of the checkpoint at ``path`` as a nested dict of numpy arrays.

    Needs no template, e.g. to initialise a new model from a trained one. ``subtree`` is a
    `/`-joined prefix such as ``"params"`` or ``"params/head"``; None or ``""`` loads everything.
    Sequence and namedtuple nodes become dicts keyed by index or field name; typed PRNG keys come
    back as their uint32 key data.
    """
    info = _read_info(path)
    prefix = f"{subtree.strip('/')}/" if subtree else ""
    leaves = [leaf for leaf in map(codec.Leaf.from_json, info["leaves"]) if leaf.name.startswith(prefix)]
    if not leaves:
        tops = sorted({record["name"].split("/")[0] for record in info["leaves"]})
        raise KeyError(f"Checkpoint {path} has no leaves under {subtree!r}; its top-level entries are: {tops}.")
    out: dict[str, Any] = {}
    with safe_open(os.path.join(path, ARRAYS_FILE), framework="np") as f:
        for leaf in leaves:
            value = codec.decode(leaf, f.get_tensor(leaf.name), wrap_keys=False)
            *parents, last = leaf.name[len(prefix) :].split("/")
            node = out
            for key in parents:
                node = node.setdefault(key, {})
            node[last] = value
    return out


# ---------------------------------------------------------------------------
# Matching a template
# ---------------------------------------------------------------------------


def _check_match(path: str, stored: dict[str, codec.Leaf], expected: list[codec.Leaf]) -> None:
    problems = []
    expected_names = set()
    for want in expected:
        expected_names.add(want.name)
        have = stored.get(want.name)
        if have is None:
            problems.append(f"missing from the checkpoint: {want.name} ({want.describe()})")
        elif have.shape != want.shape:
            problems.append(f"shape differs: {want.name} is {have.shape} in the checkpoint vs {want.shape} expected")
        elif have.dtype != want.dtype:
            problems.append(f"dtype differs: {want.name} is {have.dtype} in the checkpoint vs {want.dtype} expected")
    for name, have in stored.items():
        if name not in expected_names:
            problems.append(f"unexpected in the checkpoint: {name} ({have.describe()})")
    if not problems:
        return
    listed = "\n".join(f"  - {p}" for p in problems[:_MAX_LISTED])
    more = f"\n  ... and {len(problems) - _MAX_LISTED} more" if len(problems) > _MAX_LISTED else ""
    raise CheckpointMismatchError(
        f"Checkpoint {path} does not match the model/optimizer state it is restored into: {len(problems)} "
        f"leaves differ (checkpoint has {len(stored)} leaves, the template {len(expected)}):\n{listed}{more}\n"
        "If the model or optimizer changed on purpose, start a new workdir and initialise the params "
        "with load_params() instead of resuming."
    )


def _place(value: Any, like: Any) -> Any:
    """``value`` as the same kind of object as the template leaf ``like``."""
    if isinstance(like, (bool, int, float, complex)):
        return type(like)(np.asarray(value).item())
    if isinstance(like, np.generic):
        return np.asarray(value)[()]
    if isinstance(like, np.ndarray):
        return np.asarray(value)
    if not codec.is_prng_key(value) and jax.dtypes.canonicalize_dtype(value.dtype) != value.dtype:
        return np.asarray(value)  # e.g. int64 while jax runs without x64: keep every bit on the host
    sharding = getattr(like, "sharding", None)
    return put_global(value, sharding) if sharding is not None else jax.device_put(value)


def put_global(tree: Any, shardings: Any) -> Any:
    """Host arrays (the same full value on every process) as global ``jax.Array``s laid out by ``shardings``.

    Each process places only its own shards, so this works on any number of processes and devices:
    it is how a checkpoint from one topology is resharded onto another.
    """

    def put(value: Any, sharding: jax.sharding.Sharding) -> jax.Array:
        if isinstance(value, jax.Array) and value.is_fully_addressable and len(jax.devices()) == 1:
            return jax.device_put(value, sharding)
        if codec.is_prng_key(value):
            return jax.device_put(value, sharding)
        host = np.asarray(value)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(put, tree, shardings)


# ---------------------------------------------------------------------------
# Files and folders
# ---------------------------------------------------------------------------


def _check_step(step: Any) -> int:
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
        raise ValueError(f"step must be a non-negative integer, got {step!r}.")
    return int(step)


def _ckpt_name(step: int) -> str:
    return f"ckpt-{step:09d}"


def _read_info(path: str) -> dict[str, Any]:
    info_path = os.path.join(path, INFO_FILE)
    try:
        with open(info_path, encoding="utf-8") as f:
            info = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{path} is not a checkpoint: it has no {INFO_FILE}. Pass a folder returned by save() or latest()."
        ) from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise ValueError(f"{info_path} is not a bv checkpoint description (expected format {FORMAT!r}).")
    if info.get("version", 0) > FORMAT_VERSION:
        raise ValueError(
            f"Checkpoint {path} has format version {info['version']}; this bv-core reads versions up to "
            f"{FORMAT_VERSION}. Upgrade bv-core."
        )
    return info


def _is_complete(path: str) -> bool:
    """Whether ``path`` is a fully written checkpoint folder (cheap: no arrays are read)."""
    match = _NAME_RE.fullmatch(os.path.basename(path))
    if match is None:
        return False
    try:
        info = _read_info(path)
        arrays_bytes = os.path.getsize(os.path.join(path, ARRAYS_FILE))
    except (OSError, ValueError, TypeError):
        return False
    return info.get("step") == int(match.group(1)) and info.get("arrays_bytes") == arrays_bytes


def _complete_steps(ckpt_dir: str) -> list[int]:
    try:
        names = os.listdir(ckpt_dir)
    except FileNotFoundError:
        return []
    steps = []
    for name in names:
        match = _NAME_RE.fullmatch(name)
        if match and _is_complete(os.path.join(ckpt_dir, name)):
            steps.append(int(match.group(1)))
    return sorted(steps)


def _prune(ckpt_dir: str, step: int, keep_last: int, keep_every: int | None) -> None:
    steps = _complete_steps(ckpt_dir)
    upto = [s for s in steps if s <= step]
    keep = set(upto[-keep_last:]) | {step} | {s for s in steps if s > step}
    if keep_every:
        keep |= {s for s in steps if s % keep_every == 0}
    doomed = [s for s in upto if s not in keep]
    for s in doomed:
        # Rename first so that a kill halfway through the deletion never leaves a half checkpoint
        # under a real name.
        trash = os.path.join(ckpt_dir, f"{_TMP_PREFIX}deleted-{_ckpt_name(s)}-{uuid.uuid4().hex}")
        os.replace(os.path.join(ckpt_dir, _ckpt_name(s)), trash)
    if doomed:
        _fsync_dir(ckpt_dir)
    _remove_leftovers(ckpt_dir)


def _remove_leftovers(ckpt_dir: str) -> None:
    """Deletes temporary files and folders, e.g. those of a save that was killed."""
    for name in os.listdir(ckpt_dir):
        if name.startswith(_TMP_PREFIX):
            _remove(os.path.join(ckpt_dir, name))


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def _write_durably(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # Some platforms cannot open folders; their renames are as durable as they get.
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


__all__ = [
    "CheckpointMismatchError",
    "latest",
    "list_checkpoints",
    "load_params",
    "read_metadata",
    "restore",
    "save",
]
