"""Training checkpoints on Orbax: sharded, asynchronous, multi-host, and never picked half-written.

A checkpoint is a folder ``workdir/checkpoints/ckpt-{step:09d}`` written by
``orbax-checkpoint``. It holds one Orbax PyTree item per top-level entry of the
training state (``params/``, ``opt/``, ``rng/``, ``ema/``, ...), in which every
process writes only the shards it owns, and ``bv/checkpoint.json``: the step, the
caller's metadata (data position, timing, ...), the versions that wrote it, the
format version and one record per leaf (name, true dtype, shape). A restore checks
the records against the model and optimizer before reading any array, then has
Orbax read each process's shards straight onto the target sharding, on any mesh.

Saves are asynchronous through :class:`CheckpointWriter`: ``save`` returns once
the arrays are copied off the devices, and the files are written in the
background while training goes on. Orbax writes under a temporary name and
renames the folder when every process is done, so a run killed at any moment
leaves the previous checkpoint, plus perhaps a temporary folder that readers
ignore and the next save deletes. Pruning (``keep_last``, ``keep_every``) runs
only after the new checkpoint is committed. Nothing is pickled.

Checkpoints of format 1 (one ``state.safetensors`` per checkpoint, bv-core before
Orbax) are converted by ``bv-convert-checkpoints WORKDIR``
(:mod:`bv.core.checkpoint_v1`); reading them otherwise raises an error that says so.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import logging
import os
import re
import shutil
import time
import uuid
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from bv.core import checkpoint_integrity as integrity
from bv.core import checkpoint_leaves as codec
from bv.core.errors import UserError
from bv.core.failpoints import crash_point, fail_point

FORMAT = "bv-checkpoint"
FORMAT_VERSION = 2
CHECKPOINTS_DIR = "checkpoints"
INFO_ITEM = "bv"  # the Orbax item that holds the description
INFO_FILE = os.path.join(INFO_ITEM, "checkpoint.json")  # relative to a checkpoint folder

_TMP_PREFIX = ".tmp-"
_ORBAX_TMP = ".orbax-checkpoint-tmp"
_DAMAGED_PREFIX = "damaged-"  # a checkpoint that failed to read, kept but never picked
_NAME_RE = re.compile(r"ckpt-(\d{9,})")
_MAX_LISTED = 8
_TOP_LEAF = "value"  # the item key of a top-level entry that is itself a leaf

log = logging.getLogger(__name__)


class CheckpointMismatchError(UserError, ValueError):
    """The checkpoint's leaves differ from the template's (names, shapes or dtypes)."""


class CheckpointReadError(UserError, RuntimeError):
    """A checkpoint's files could not be read (truncated, missing or corrupted)."""


class CheckpointWriteError(UserError, OSError):
    """A checkpoint could not be written (a full disk, a lost mount); the previous one is intact."""


class OldCheckpointFormatError(UserError, ValueError):
    """The checkpoint was written in format 1 (safetensors, before Orbax) and needs converting."""


# ---------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class _Pending:
    step: int
    path: str
    replaced: str | None  # an older folder of the same step, moved aside until the new one is committed


class CheckpointWriter:
    """Saves a workdir's checkpoints, asynchronously unless ``asynchronous=False``.

    ``save`` returns as soon as the state's arrays are copied to host memory (each process copies
    only its own shards), so the caller may donate or overwrite them. The next ``save``, ``wait`` or
    ``close`` waits for the write in flight, then prunes: only the newest ``keep_last`` checkpoints up
    to the saved step and those whose step is a multiple of ``keep_every`` are kept; checkpoints with
    a higher step (from a run that was rolled back) are left alone. Use it as a context manager, or
    call ``close`` before the process exits so that the last checkpoint is complete. Every process
    of a multi-process run makes the same calls. ``compress`` stores arrays zstd-compressed: weights
    and optimizer moments shrink by under 10% while a save takes about twice as long on a 2-core
    host (``benchmarks/checkpoint_io.py throughput``), so it is off by default.
    """

    def __init__(
        self,
        workdir: str,
        *,
        keep_last: int = 1,
        keep_every: int | None = None,
        asynchronous: bool = True,
        compress: bool = False,
    ) -> None:
        if keep_last < 1:
            raise ValueError(f"keep_last must be at least 1 (the checkpoint just written), got {keep_last}.")
        if keep_every is not None and keep_every < 1:
            raise ValueError(f"keep_every must be a positive number of steps or None, got {keep_every}.")
        # Orbax refuses relative paths, and users pass them (--workdir runs/vit_mnist).
        self.ckpt_dir = os.path.join(os.path.abspath(workdir), CHECKPOINTS_DIR)
        self.keep_last, self.keep_every, self.asynchronous = keep_last, keep_every, asynchronous
        self._pending: _Pending | None = None
        self._writing_step = -1
        self._orbax = ocp.AsyncCheckpointer(
            _handler(compress), async_options=ocp.AsyncOptions(post_finalization_callback=self._all_written)
        )

    def save(self, step: int, state: Any, metadata: dict[str, Any] | None = None) -> str:
        """Starts writing ``state`` as checkpoint ``step``; returns the folder it will have when complete.

        ``metadata`` is any JSON-serialisable dict (data position, timing, ...); it comes back from
        :func:`restore` with ``"step"`` added.
        """
        step = _check_step(step)
        # Everything that can fail on bad input fails before anything touches the disk.
        items, info = _describe(state, step, metadata)
        self.wait()
        path = os.path.join(self.ckpt_dir, _ckpt_name(step))
        try:
            replaced = self._prepare(path) if _is_primary() else None
        except OSError as e:
            raise CheckpointWriteError(self._failed_message(step, e)) from e
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"bv checkpoint {step}: folder ready")
        self._writing_step = step
        args = {name: ocp.args.PyTreeSave(item) for name, item in items.items()}
        try:
            self._orbax.save(path, args=ocp.args.Composite(**args, **{INFO_ITEM: ocp.args.JsonSave(info)}))
        except Exception as e:  # OS and tensorstore errors while writing; a bug in bv would also land here
            raise CheckpointWriteError(self._failed_message(step, e)) from e
        self._pending = _Pending(step, path, replaced)
        crash_point("checkpoint.writing", step)
        if not self.asynchronous:
            self.wait()
        return path

    def wait(self) -> None:
        """Blocks until the save in flight (if any) is committed, then prunes older checkpoints."""
        if self._pending is None:
            return
        pending, self._pending = self._pending, None
        try:
            self._orbax.wait_until_finished()
        except Exception as e:  # raised in the background write; the folder was never renamed into place
            raise CheckpointWriteError(self._failed_message(pending.step, e)) from e
        crash_point("checkpoint.committed", pending.step)
        if _is_primary():
            if pending.replaced:
                _remove(pending.replaced)
            _prune(self.ckpt_dir, pending.step, self.keep_last, self.keep_every)

    def close(self) -> None:
        """Waits for the last save and releases Orbax's background resources."""
        try:
            self.wait()
        finally:
            self._orbax.close()

    def __enter__(self) -> CheckpointWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _failed_message(self, step: int, error: Exception) -> str:
        text = str(error)
        if "No space left on device" in text or "os_error_code='28'" in text:
            reason = "the disk is full (no space left on device)"
        else:
            reason = f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"
        complete = _complete_steps(self.ckpt_dir)
        previous = (
            f"The previous checkpoint ({os.path.join(self.ckpt_dir, _ckpt_name(complete[-1]))}) is intact: run "
            "again to resume from it."
            if complete
            else "No earlier checkpoint exists: a new run starts from step 0."
        )
        return (
            f"Checkpoint {step} could not be written to {self.ckpt_dir}: {reason}. Training stopped. {previous} "
            "The partly written folder is removed by the next save. Free some space (or keep fewer checkpoints) "
            "first."
        )

    def _prepare(self, path: str) -> str | None:
        """Makes the folder, deletes leftovers of killed saves, and moves an older save of this step aside."""
        os.makedirs(self.ckpt_dir, exist_ok=True)
        _remove_leftovers(self.ckpt_dir)
        if not os.path.lexists(path):
            return None
        # Saving a step again (e.g. after a rollback): the old folder stays until the new one is
        # committed, under a temporary name; a kill in between falls back to an older step.
        aside = os.path.join(self.ckpt_dir, f"{_TMP_PREFIX}replaced-{os.path.basename(path)}-{uuid.uuid4().hex}")
        os.replace(path, aside)
        return aside

    def _all_written(self) -> None:
        # Runs in Orbax's background thread on the primary process, after every process has written
        # its shards and before the folder is renamed into place: the checksums are part of the commit.
        step = self._writing_step
        tmp = os.path.join(self.ckpt_dir, _ckpt_name(step) + _ORBAX_TMP)
        if not os.path.isdir(tmp):
            raise RuntimeError(f"Orbax's temporary folder {tmp} is missing; cannot write the checkpoint's checksums.")
        fail_point("checkpoint.write", step)
        integrity.write_checksums(tmp)
        crash_point("checkpoint.written", step)


def save(
    workdir: str,
    step: int,
    state: Any,
    *,
    metadata: dict[str, Any] | None = None,
    keep_last: int = 1,
    keep_every: int | None = None,
) -> str:
    """Writes ``state`` as ``workdir/checkpoints/ckpt-{step:09d}``, waits for it, prunes, and returns its path.

    The synchronous form of :class:`CheckpointWriter` (which see for ``keep_last`` and ``keep_every``).
    """
    with CheckpointWriter(workdir, keep_last=keep_last, keep_every=keep_every, asynchronous=False) as writer:
        return writer.save(step, state, metadata)


def _describe(state: Any, step: int, metadata: dict[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The Orbax items of ``state`` (one per top-level entry) and the checkpoint's description."""
    metadata = dict(metadata or {})
    if "step" in metadata and metadata["step"] != step:
        raise ValueError(f"metadata['step'] is {metadata['step']!r} but the checkpoint is for step {step}.")
    metadata["step"] = step
    named, treedef = codec.flatten_named(state, what="state")
    leaves: list[codec.Leaf] = []
    grouped: dict[str, Any] = {}
    for name, value in named:
        leaf, stored = codec.encode(name, value)
        leaves.append(leaf)
        top, _, rest = name.partition("/")
        if top == INFO_ITEM:
            raise ValueError(f"The state has a top-level entry {top!r}, a name checkpoints keep for their description.")
        grouped.setdefault(top, []).append((rest or _TOP_LEAF, stored))
    info = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "step": step,
        "saved_at": time.time(),
        "versions": _versions(),
        "metadata": metadata,
        "treedef": str(treedef),
        "leaves": [leaf.to_json() for leaf in leaves],
    }
    try:
        json.dumps(info)
    except (TypeError, ValueError) as e:
        raise TypeError(f"Checkpoint metadata must be JSON-serialisable (numbers, strings, lists, dicts): {e}") from e
    return {top: codec.nest(entries) for top, entries in grouped.items()}, info


def _versions() -> dict[str, str]:
    out = {}
    for dist in ("bv-core", "jax", "flax", "optax", "orbax-checkpoint"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def _handler(compress: bool = False) -> ocp.CompositeCheckpointHandler:
    """Orbax's handler for a bv checkpoint: PyTree items for the state, a JSON item for the description."""
    handlers = ocp.handlers.DefaultCheckpointHandlerRegistry()
    json_handler = ocp.JsonCheckpointHandler(filename=os.path.basename(INFO_FILE))
    handlers.add(INFO_ITEM, ocp.args.JsonSave, json_handler)
    handlers.add(INFO_ITEM, ocp.args.JsonRestore, json_handler)
    arrays = ocp.PyTreeCheckpointHandler(use_compression=compress)
    handlers.add(None, ocp.args.PyTreeSave, arrays)
    handlers.add(None, ocp.args.PyTreeRestore, arrays)
    return ocp.CompositeCheckpointHandler(handler_registry=handlers)


def _is_primary() -> bool:
    return jax.process_index() == 0


# ---------------------------------------------------------------------------
# Finding and reading checkpoints
# ---------------------------------------------------------------------------


def latest(workdir: str) -> str | None:
    """The checkpoint to resume from: the complete one with the highest step, else None.

    Temporary and incomplete folders are never returned. Raises :class:`OldCheckpointFormatError` if
    the workdir holds format-1 checkpoints newer than any complete one, rather than silently
    starting over.
    """
    ckpt_dir = os.path.join(workdir, CHECKPOINTS_DIR)
    complete = _complete_steps(ckpt_dir)
    old = [s for s in old_format_steps(ckpt_dir) if not complete or s > complete[-1]]
    if old:
        raise OldCheckpointFormatError(_convert_hint(workdir, os.path.join(ckpt_dir, _ckpt_name(old[-1]))))
    return os.path.join(ckpt_dir, _ckpt_name(complete[-1])) if complete else None


def restore_latest(workdir: str, template: Any) -> tuple[Any, dict[str, Any]] | None:
    """Restores the newest checkpoint of ``workdir`` that reads back intact; None if it has none.

    A newer checkpoint that is damaged (a file truncated, corrupted or missing: see
    :mod:`bv.core.checkpoint_integrity`) is skipped with a warning that names it and the one used
    instead, and renamed ``damaged-ckpt-...`` so that it is kept for inspection and never picked or
    overwritten. If every checkpoint is damaged, raises :class:`CheckpointReadError` and changes
    nothing: a run never silently starts over. Every process of a multi-process run calls it.
    """
    newest = latest(workdir)  # raises on a newer format-1 checkpoint
    if newest is None:
        return None
    ckpt_dir = os.path.join(workdir, CHECKPOINTS_DIR)
    damaged: list[tuple[str, CheckpointReadError]] = []
    for step in reversed(_complete_steps(ckpt_dir)):
        path = os.path.join(ckpt_dir, _ckpt_name(step))
        try:
            restored = restore(path, template)
        except CheckpointReadError as e:
            damaged.append((path, e))
            continue
        for bad, error in damaged:
            aside = os.path.join(ckpt_dir, f"{_DAMAGED_PREFIX}{os.path.basename(bad)}")
            log.warning(
                "Checkpoint %s is damaged, so training resumes from %s instead (step %d). The damaged folder is "
                "kept as %s; delete it once you no longer need it. Details: %s",
                bad,
                path,
                step,
                aside,
                error,
            )
            if _is_primary():
                os.replace(bad, _free_name(aside))
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("bv checkpoint: damaged checkpoints moved aside")
        return restored
    details = "\n".join(f"  - {error}" for _, error in damaged)
    raise CheckpointReadError(
        f"No checkpoint of {workdir} can be read, so training cannot resume; nothing was changed. To start "
        f"over, use a new --workdir (or move {ckpt_dir} away).\n{details}"
    )


def _free_name(path: str) -> str:
    """``path``, or ``path-2``, ``path-3``, ... whichever does not exist yet."""
    candidate, n = path, 1
    while os.path.lexists(candidate):
        n += 1
        candidate = f"{path}-{n}"
    return candidate


def list_checkpoints(workdir: str) -> list[str]:
    """Paths of the complete checkpoints under ``workdir``, oldest step first."""
    ckpt_dir = os.path.join(workdir, CHECKPOINTS_DIR)
    return [os.path.join(ckpt_dir, _ckpt_name(s)) for s in _complete_steps(ckpt_dir)]


def read_metadata(path: str) -> dict[str, Any]:
    """The metadata saved with the checkpoint at ``path`` (with ``"step"``), without loading arrays."""
    return dict(read_info(path)["metadata"])


def top_level_entries(path: str) -> list[str]:
    """The names at the top of the checkpoint's state (``params``, ``opt``, ``rng``, ``ema``, ...)."""
    return sorted({record["name"].split("/")[0] for record in read_info(path)["leaves"]})


def restore(path: str, template: Any) -> tuple[Any, dict[str, Any]]:
    """Loads the checkpoint at ``path`` into the tree structure of ``template``.

    ``template`` is the state to restore into (arrays, or ``jax.ShapeDtypeStruct`` such as from
    ``jax.eval_shape``). Leaf names, shapes and dtypes must all match, else
    :class:`CheckpointMismatchError` lists the first differences. Each process reads only the shards
    of its own devices: a jax leaf comes back on the template leaf's sharding (any mesh, any number
    of processes), a ``ShapeDtypeStruct`` without one on the first local device. Numpy leaves and
    dtypes jax cannot hold (int64 without ``jax_enable_x64``) come back as numpy arrays, Python
    numbers as Python numbers. Returns ``(state, metadata)``. Reads only: nothing on disk changes.
    """
    info = read_info(path)
    stored = {leaf.name: leaf for leaf in map(codec.Leaf.from_json, info["leaves"])}
    named, treedef = codec.flatten_named(template, what="template")
    _check_match(path, stored, [codec.expected_leaf(name, like) for name, like in named])
    targets = [(name, _target(stored[name], like)) for name, like in named]
    _verify(path, {name.partition("/")[0] for name, _ in targets})
    read = _read_arrays(path, targets, partial=False)
    values = [_place(codec.decode(stored[name], read[name]), like) for name, like in named]
    return jax.tree_util.tree_unflatten(treedef, values), dict(info["metadata"])


def load_params(path: str, subtree: str | None = "params") -> dict[str, Any]:
    """The leaves under ``subtree`` of the checkpoint at ``path`` as a nested dict of numpy arrays.

    Needs no template, e.g. to initialise a new model from a trained one or to export it; only
    the arrays under ``subtree`` are read (never the optimizer state when loading params).
    ``subtree`` is a `/`-joined prefix such as ``"params"`` or ``"params/head"``; None or ``""``
    loads everything. Sequence and namedtuple nodes become dicts keyed by index or field name;
    typed PRNG keys come back as their uint32 key data.
    """
    info = read_info(path)
    prefix = f"{subtree.strip('/')}/" if subtree else ""
    leaves = [leaf for leaf in map(codec.Leaf.from_json, info["leaves"]) if f"{leaf.name}/".startswith(prefix)]
    if not leaves:
        tops = sorted({record["name"].split("/")[0] for record in info["leaves"]})
        raise KeyError(f"Checkpoint {path} has no leaves under {subtree!r}; its top-level entries are: {tops}.")
    _verify(path, {leaf.name.partition("/")[0] for leaf in leaves})
    read = _read_arrays(path, [(leaf.name, _host_target(leaf)) for leaf in leaves], partial=True)
    return codec.nest([(leaf.name[len(prefix) :], codec.decode(leaf, read[leaf.name], False)) for leaf in leaves])


def read_info(path: str) -> dict[str, Any]:
    """The description of the checkpoint at ``path`` (step, metadata, versions, leaf records)."""
    info_path = os.path.join(path, INFO_FILE)
    try:
        with open(info_path, encoding="utf-8") as f:
            info = json.load(f)
    except FileNotFoundError:
        if _is_old_format(path):
            raise OldCheckpointFormatError(_convert_hint(os.path.dirname(os.path.dirname(path)), path)) from None
        raise FileNotFoundError(
            f"{path} is not a bv checkpoint: it has no {INFO_FILE}. Pass a folder returned by save() or latest()."
        ) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointReadError(f"{info_path} is damaged ({e}); the checkpoint cannot be used.") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise ValueError(f"{info_path} is not a bv checkpoint description (expected format {FORMAT!r}).")
    if not isinstance(info.get("version"), int) or info["version"] > FORMAT_VERSION:
        raise ValueError(
            f"Checkpoint {path} has format version {info.get('version')!r}; this bv-core reads versions up to "
            f"{FORMAT_VERSION}. Upgrade bv-core (pip install -U bv-core)."
        )
    return info


# ---------------------------------------------------------------------------
# Reading arrays through Orbax
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Target:
    abstract: jax.ShapeDtypeStruct
    args: ocp.RestoreArgs


def _target(leaf: codec.Leaf, like: Any) -> _Target:
    """How to read ``leaf`` for the template leaf ``like``: onto its sharding, or as a host array."""
    shape, dtype = codec.stored_shape(leaf)
    on_host = isinstance(like, (np.ndarray, np.generic, bool, int, float, complex))
    if on_host or (not leaf.is_key and jax.dtypes.canonicalize_dtype(dtype) != dtype):
        return _host_target(leaf)
    sharding = getattr(like, "sharding", None)
    if leaf.is_key and sharding is not None and not _lays_out_key_data(sharding):
        sharding = None
    if sharding is None:
        sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)
    return _Target(abstract, ocp.ArrayRestoreArgs(sharding=sharding, global_shape=shape, dtype=dtype))


def _host_target(leaf: codec.Leaf) -> _Target:
    shape, dtype = codec.stored_shape(leaf)
    return _Target(jax.ShapeDtypeStruct(shape, dtype), ocp.RestoreArgs(restore_type=np.ndarray, dtype=dtype))


def _lays_out_key_data(sharding: jax.sharding.Sharding) -> bool:
    """Whether a typed key's sharding also lays out its key data (one more, trailing axis).

    Named and single-device shardings do (a spec shorter than the array leaves the
    trailing axis whole); others (e.g. positional) are replaced by one device's.
    """
    return isinstance(sharding, (jax.sharding.NamedSharding, jax.sharding.SingleDeviceSharding))


def _read_arrays(path: str, targets: list[tuple[str, _Target]], *, partial: bool) -> dict[str, Any]:
    """Reads the named leaves through Orbax; returns ``{name: array}``."""
    by_item: dict[str, list[tuple[str, _Target]]] = {}
    for name, target in targets:
        top, _, rest = name.partition("/")
        by_item.setdefault(top, []).append((rest or _TOP_LEAF, target))
    args = {
        top: ocp.args.PyTreeRestore(
            codec.nest([(k, t.abstract) for k, t in entries]),
            restore_args=codec.nest([(k, t.args) for k, t in entries]),
            partial_restore=partial,
        )
        for top, entries in by_item.items()
    }
    try:
        with ocp.Checkpointer(_handler()) as reader:
            restored = reader.restore(os.path.abspath(path), args=ocp.args.Composite(**args))
    except Exception as e:  # tensorstore, Orbax and OS errors: all mean the files are not what was written
        raise CheckpointReadError(_damaged_message(path, e)) from e
    out = {}
    for name, target in targets:
        top, _, rest = name.partition("/")
        node = restored[top]
        for key in (rest or _TOP_LEAF).split("/"):
            node = node[key]
        if isinstance(node, np.ndarray):
            node = node.reshape(target.abstract.shape)  # Orbax reads 0-d host arrays back with shape (1,)
        out[name] = node
    return out


def _verify(path: str, tops: set[str]) -> None:
    """Checks the files of the items ``tops`` (and of the description) against the checkpoint's checksums."""
    try:
        integrity.verify(path, sorted(tops | {INFO_ITEM}))
    except integrity.ChecksumError as e:
        raise CheckpointReadError(_damaged_message(path, e)) from None


def _damaged_message(path: str, error: Exception) -> str:
    ckpt_dir = os.path.dirname(path)
    older = [p for p in (os.path.join(ckpt_dir, _ckpt_name(s)) for s in _complete_steps(ckpt_dir)) if p != path]
    advice = (
        f"To resume from the previous checkpoint, move this folder out of {ckpt_dir} (the newest other one is "
        f"{older[-1]})."
        if older
        else "No other checkpoint of this run is complete."
    )
    return (
        f"Checkpoint {path} could not be read: a file is missing, truncated or corrupted "
        f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}). Nothing was changed. {advice}"
    )


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
    return value


def put_global(tree: Any, shardings: Any) -> Any:
    """Host arrays (the same full value on every process) as global ``jax.Array``s laid out by ``shardings``.

    Each process places only its own shards, so this works on any number of processes and devices.
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
# Folders
# ---------------------------------------------------------------------------


def _check_step(step: Any) -> int:
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
        raise ValueError(f"step must be a non-negative integer, got {step!r}.")
    return int(step)


def _ckpt_name(step: int) -> str:
    return f"ckpt-{step:09d}"


def _is_complete(path: str) -> bool:
    """Whether ``path`` is a committed checkpoint folder (cheap: no arrays are read)."""
    match = _NAME_RE.fullmatch(os.path.basename(path))
    if match is None:
        return False
    try:
        info = read_info(path)
    except (OSError, ValueError, TypeError, RuntimeError):
        return False
    return info.get("step") == int(match.group(1))


def _is_old_format(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "checkpoint.json")) and os.path.isfile(
        os.path.join(path, "state.safetensors")
    )


def _convert_hint(workdir: str, path: str) -> str:
    return (
        f"{path} was written by an older bv-core (checkpoint format 1, one state.safetensors). This bv-core "
        f"writes and resumes Orbax checkpoints (format {FORMAT_VERSION}). Convert the workdir in place with\n"
        f"  bv-convert-checkpoints {workdir}\n"
        "(it keeps the old folders under checkpoints/format-1/), then run again."
    )


def _names(ckpt_dir: str) -> list[tuple[int, str]]:
    try:
        names = os.listdir(ckpt_dir)
    except FileNotFoundError:
        return []
    return [(int(m.group(1)), n) for n in names if (m := _NAME_RE.fullmatch(n))]


def _complete_steps(ckpt_dir: str) -> list[int]:
    return sorted(s for s, n in _names(ckpt_dir) if _is_complete(os.path.join(ckpt_dir, n)))


def old_format_steps(ckpt_dir: str) -> list[int]:
    """Steps of the format-1 checkpoints in a ``checkpoints/`` folder (see :mod:`bv.core.checkpoint_v1`)."""
    return sorted(s for s, n in _names(ckpt_dir) if _is_old_format(os.path.join(ckpt_dir, n)))


def _prune(ckpt_dir: str, step: int, keep_last: int, keep_every: int | None) -> None:
    steps = _complete_steps(ckpt_dir)
    upto = [s for s in steps if s <= step]
    keep = set(upto[-keep_last:]) | {step} | {s for s in steps if s > step}
    if keep_every:
        keep |= {s for s in steps if s % keep_every == 0}
    for s in upto:
        if s not in keep:
            # Rename first so that a kill halfway through the deletion never leaves a half checkpoint
            # under a real name.
            trash = os.path.join(ckpt_dir, f"{_TMP_PREFIX}deleted-{_ckpt_name(s)}-{uuid.uuid4().hex}")
            os.replace(os.path.join(ckpt_dir, _ckpt_name(s)), trash)
            _remove(trash)


def _remove_leftovers(ckpt_dir: str) -> None:
    """Deletes the temporary folders of saves and deletions that were killed."""
    for name in os.listdir(ckpt_dir):
        if name.startswith(_TMP_PREFIX) or _ORBAX_TMP in name:
            log.info("Removing %s, left by an interrupted save.", name)
            _remove(os.path.join(ckpt_dir, name))


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


__all__ = [
    "CheckpointMismatchError",
    "CheckpointReadError",
    "CheckpointWriteError",
    "CheckpointWriter",
    "OldCheckpointFormatError",
    "latest",
    "list_checkpoints",
    "load_params",
    "put_global",
    "read_info",
    "read_metadata",
    "restore",
    "restore_latest",
    "save",
]
