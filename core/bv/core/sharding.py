"""Device mesh and parameter sharding, driven by config: ``mesh``, ``sharding_strategy``, ``sharding_rules``.

* ``config.mesh = [("data", -1), ("model", 2)]`` names the mesh axes and their
  sizes; one size may be -1 (the remaining devices). :func:`make_mesh`.
* ``config.sharding_strategy = [(regex, "op|op(...)"), ...]`` says how each
  leaf of the params (and optimizer state) is laid out: the first regex that
  fully matches a leaf's name (``Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel``,
  ``opt/0/mu/Transformer/...``) picks the ops, applied left to right. The ops
  are ``replicate``, ``fsdp(axis="data", min_size_mb=4)``,
  ``shard_dim(axis, dim)`` and ``logical``; projects may register more in
  :data:`strategies`. Every leaf must match some regex, so end with a catch-all
  such as ``(".*", "replicate")``. :func:`param_shardings`.
* ``config.sharding_rules = [("act_batch", "data")]`` maps the logical axes
  that models name in ``nn.with_logical_constraint`` to mesh axes; logical axes
  without a rule are left unsharded. :func:`activation_rules`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import re
from typing import Any, Callable, Iterator, Mapping, Sequence, Union

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from bv.core import registry
from bv.core.config import ConfigError
from bv.core.tree import flatten_with_names, path_name

log = logging.getLogger(__name__)

MeshAxes = Union[str, tuple[str, ...], None]  # what one dimension of a PartitionSpec holds
Spec = tuple[MeshAxes, ...]
LogicalRules = tuple[tuple[str, MeshAxes], ...]

DEFAULT_MESH: tuple[tuple[str, int], ...] = (("data", -1),)
DEFAULT_STRATEGY: tuple[tuple[str, str], ...] = ((".*", "replicate"),)
DEFAULT_RULES: LogicalRules = (("act_batch", "data"),)


# ----------------------------------------------------------------------------
# The mesh.
# ----------------------------------------------------------------------------


def make_mesh(
    mesh_config: Sequence[Sequence[Any]] | None = None,
    devices: Sequence[Any] | None = None,
    *,
    allow_split_physical_axes: bool = False,
) -> Mesh:
    """A mesh from ``[(axis name, size), ...]`` (default ``[("data", -1)]``); one size may be -1.

    Devices are ordered by ``mesh_utils.create_device_mesh`` (which keeps
    neighbouring devices on the fast links) when it can place the shape, else
    in ``jax.devices()`` order. Axes are of the ``Auto`` type: XLA propagates
    shardings that the code does not state.
    """
    devices = list(jax.devices() if devices is None else devices)
    given = [tuple(axis) for axis in (DEFAULT_MESH if mesh_config is None else mesh_config)]
    if not given:
        raise ConfigError("config.mesh is empty: expected a list of (axis name, size) pairs such as [('data', -1)].")
    names: list[str] = []
    sizes: list[int] = []
    for axis in given:
        if len(axis) != 2 or not isinstance(axis[0], str) or isinstance(axis[1], bool):
            raise ConfigError(
                f"Bad config.mesh entry {axis!r} in {given}: expected (axis name, size) like ('data', -1)."
            )
        name, size = axis
        if name in names:
            raise ConfigError(f"config.mesh={given} names the axis {name!r} twice.")
        if not isinstance(size, (int, np.integer)) or (size < 1 and size != -1):
            raise ConfigError(f"config.mesh={given}: the size of axis {name!r} must be a positive integer or -1.")
        names.append(name)
        sizes.append(int(size))

    num = len(devices)
    known = math.prod(s for s in sizes if s != -1)
    wildcards = sizes.count(-1)
    if wildcards > 1:
        raise ConfigError(f"config.mesh={given} has {wildcards} axes of size -1; at most one size can be inferred.")
    if wildcards:
        if num % known:
            raise ConfigError(
                f"config.mesh={given}: the fixed axis sizes multiply to {known}, which does not divide the "
                f"{num} devices, so the -1 axis cannot be inferred."
            )
        sizes[sizes.index(-1)] = num // known
    elif known != num:
        raise ConfigError(
            f"config.mesh={given} asks for {known} devices ({' x '.join(map(str, sizes))}), but there are {num}. "
            "Make the sizes multiply to the device count, or use -1 for one axis."
        )

    try:
        grid = mesh_utils.create_device_mesh(sizes, devices, allow_split_physical_axes=allow_split_physical_axes)
    except (ValueError, AssertionError, NotImplementedError, KeyError) as e:
        log.warning("mesh_utils cannot place mesh %s on these devices (%s); using jax.devices() order.", sizes, e)
        grid = np.asarray(devices, dtype=object).reshape(sizes)
    return Mesh(grid, tuple(names), axis_types=(AxisType.Auto,) * len(names))


# Mesh axes that never carry the batch: they split the model instead.
MODEL_AXES: frozenset[str] = frozenset({"model"})


def batch_axes(mesh: Mesh) -> tuple[str, ...]:
    """The mesh axes that split a batch: every axis except ``model``, in mesh order.

    The one rule the trainer, the evaluators and the input pipeline share, so an
    evaluation runs on any mesh that training runs on.
    """
    return tuple(a for a in mesh.axis_names if a not in MODEL_AXES)


def batch_shards(mesh: Mesh) -> int:
    """How many pieces a global batch is split into (the product of :func:`batch_axes` sizes)."""
    return math.prod(mesh.shape[a] for a in batch_axes(mesh))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """The layout of a batch's leading dimension over :func:`batch_axes` (replicated over ``model``)."""
    return NamedSharding(mesh, PartitionSpec(batch_axes(mesh) or None))


# ----------------------------------------------------------------------------
# Parameter shardings.
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Leaf:
    """What a sharding op knows about one leaf."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    mesh: Mesh
    logical: tuple[str | None, ...] | None = None  # flax logical axis names, when known
    rules: LogicalRules = ()

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


Op = Callable[[Spec, Leaf], Spec]  # updates one leaf's spec (one entry per dimension)

# Factories of sharding ops (bv.core.registry.sharding_strategies), called with the arguments in the strategy string.
strategies = registry.sharding_strategies


def _axes(axis: Any) -> tuple[str, ...]:
    if isinstance(axis, str):
        return (axis,)
    if isinstance(axis, (tuple, list)) and axis and all(isinstance(a, str) for a in axis):
        return tuple(axis)
    raise ConfigError(f"A mesh axis must be a name or a tuple of names, got {axis!r}.")


def _entry(axes: tuple[str, ...]) -> MeshAxes:
    return axes[0] if len(axes) == 1 else axes


def _check_axes(mesh: Mesh, axes: tuple[str, ...], leaf_name: str, op: str) -> None:
    unknown = [a for a in axes if a not in mesh.shape]
    if unknown:
        raise ConfigError(
            f"{op} for {leaf_name!r} names mesh axis {', '.join(map(repr, unknown))}, but the mesh has "
            f"{', '.join(map(repr, mesh.axis_names))}."
        )


def _used(spec: Spec) -> set[str]:
    return {a for entry in spec if entry is not None for a in _axes(entry)}


def _size(mesh: Mesh, entry: MeshAxes) -> int:
    return 1 if entry is None else math.prod(mesh.shape[a] for a in _axes(entry))


@strategies.register("replicate")
def replicate() -> Op:
    """Keeps the leaf whole on every device (the default; an explicit op documents the intent)."""

    def op(spec: Spec, leaf: Leaf) -> Spec:
        if any(entry is not None for entry in spec):
            raise ConfigError(f"{leaf.name!r} is already sharded as {spec} by an earlier op, so it cannot replicate.")
        return spec

    return op


@strategies.register("fsdp")
def fsdp(
    axis: str | Sequence[str] = "data", min_size_mb: float = 4, *, min_size_to_shard_mb: float | None = None
) -> Op:
    """Fully-sharded data parallel: splits the largest free dimension divisible by the ``axis`` size.

    Leaves smaller than ``min_size_mb`` MiB (big_vision's ``min_size_to_shard_mb``)
    stay replicated: sharding them saves little memory and costs an all-gather.
    """
    axes = _axes(axis)
    min_bytes = (min_size_mb if min_size_to_shard_mb is None else min_size_to_shard_mb) * 2**20

    def op(spec: Spec, leaf: Leaf) -> Spec:
        _check_axes(leaf.mesh, axes, leaf.name, "fsdp")
        if leaf.nbytes < min_bytes or _used(spec) & set(axes):
            return spec
        size = _size(leaf.mesh, axes)
        # Largest dimension first; among equal sizes, the first.
        for i in sorted(range(len(spec)), key=lambda i: (-leaf.shape[i], i)):
            if spec[i] is None and leaf.shape[i] % size == 0:
                return spec[:i] + (_entry(axes),) + spec[i + 1 :]
        log.info("fsdp: no free dimension of %s %s is divisible by %d; keeping it whole.", leaf.name, leaf.shape, size)
        return spec

    return op


@strategies.register("shard_dim")
def shard_dim(axis: str | Sequence[str], dim: int, ignore_ndim_error: bool = False) -> Op:
    """Splits dimension ``dim`` (negative counts from the end) over the mesh ``axis``."""
    axes = _axes(axis)

    def op(spec: Spec, leaf: Leaf) -> Spec:
        _check_axes(leaf.mesh, axes, leaf.name, "shard_dim")
        if not -len(spec) <= dim < len(spec):
            if ignore_ndim_error:
                return spec
            raise ConfigError(
                f"shard_dim(dim={dim}) does not fit {leaf.name!r} of shape {leaf.shape}. Use a regex that "
                "does not match it, or shard_dim(..., ignore_ndim_error=True)."
            )
        i = dim % len(spec)
        if spec[i] is not None:
            raise ConfigError(f"shard_dim(dim={dim}): dimension {i} of {leaf.name!r} is already sharded as {spec}.")
        if _used(spec) & set(axes):
            raise ConfigError(f"shard_dim: mesh axis {axes} already shards another dimension of {leaf.name!r}: {spec}.")
        return spec[:i] + (_entry(axes),) + spec[i + 1 :]

    return op


@strategies.register("logical")
def logical() -> Op:
    """Follows the leaf's flax logical axis names (``nn.with_logical_partitioning``) through the rules.

    Leaves without names, and dimensions whose size the mesh axes do not divide,
    are left as they are (later ops such as ``fsdp`` may still shard them).
    """

    def op(spec: Spec, leaf: Leaf) -> Spec:
        names = leaf.logical
        mesh_axes = None if names is None else nn.logical_to_mesh_axes(names, leaf.rules)
        if names is None or mesh_axes is None:
            return spec
        new = list(spec)
        for i, entry in enumerate(mesh_axes):
            if entry is None or new[i] is not None:
                continue
            axes = _axes(entry)
            _check_axes(leaf.mesh, axes, leaf.name, f"logical rule for {names[i]!r}")
            if _used(tuple(new)) & set(axes) or leaf.shape[i] % _size(leaf.mesh, entry):
                log.info("logical: cannot shard dim %d of %s %s over %s.", i, leaf.name, leaf.shape, axes)
                continue
            new[i] = _entry(axes)
        return tuple(new)

    return op


strategies.register("logical_partitioning")(logical)  # big_vision's name


def _parse_ops(strategy_str: str, regex: str) -> list[Op]:
    ops = []
    for part in strategy_str.split("|"):
        name, args, kwargs = registry.parse_call(part)
        factory = strategies.get(name)
        try:
            ops.append(factory(*args, **kwargs))
        except (TypeError, ValueError) as e:
            raise ConfigError(f"Bad sharding strategy {part.strip()!r} (for regex {regex!r}): {e}") from None
    return ops


def normalize_rules(rules: Sequence[Sequence[Any]] | None) -> LogicalRules:
    """``[("act_batch", ["data"]), ...]`` (as configs write it) as flax wants it: tuples of names or None."""
    out = []
    for rule in DEFAULT_RULES if rules is None else rules:
        if len(rule) != 2 or not isinstance(rule[0], str):
            raise ConfigError(f"Bad sharding rule {rule!r}: expected (logical axis, mesh axis or axes or None).")
        logical_name, target = rule
        out.append((logical_name, None if target is None else _entry(_axes(target))))
    return tuple(out)


def _is_box(x: Any) -> bool:
    return isinstance(x, nn.Partitioned)


def _unbox(tree: Any) -> Any:
    """Drops flax ``nn.Partitioned`` boxes (without applying their constraints, unlike ``nn.unbox``)."""
    return jax.tree_util.tree_map(lambda x: x.value if _is_box(x) else x, tree, is_leaf=_is_box)


def _logical_table(tree: Any, boxes_only: bool = False) -> dict[str, tuple[str | None, ...]]:
    """Name -> logical axis names, from boxed params, PartitionSpecs, tuples of names, or a name-keyed dict."""

    def is_names(x: Any) -> bool:
        if boxes_only:
            return _is_box(x)
        return isinstance(x, (nn.Partitioned, PartitionSpec)) or (
            isinstance(x, tuple) and all(isinstance(a, (str, type(None))) for a in x)
        )

    table = {}
    for path, x in jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_names)[0]:
        if isinstance(x, nn.Partitioned):
            names = tuple(x.names)
        elif is_names(x):
            names = tuple(x)
        else:
            continue
        if names:  # PartitionSpec() means "no annotation" (nn.get_partition_spec of a plain array)
            table[path_name(path)] = names
    return table


def _lookup(table: Mapping[str, tuple[str | None, ...]], name: str, ndim: int) -> tuple[str | None, ...] | None:
    """The logical names of ``name`` or of the longest param name it ends with (``opt/0/mu/<param>``)."""
    parts = name.split("/")
    for i in range(len(parts)):
        names = table.get("/".join(parts[i:]))
        if names is not None and len(names) == ndim:
            return names
    return None


def _shape_dtype(x: Any) -> tuple[tuple[int, ...], np.dtype]:
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        return tuple(x.shape), np.dtype(x.dtype)
    arr = np.asarray(x)
    return arr.shape, arr.dtype


def param_shardings(
    shapes_tree: Any,
    mesh: Mesh,
    strategy: Sequence[Sequence[str]] = DEFAULT_STRATEGY,
    *,
    logical_axes: Any = None,
    rules: Sequence[Sequence[Any]] | None = None,
) -> Any:
    """A ``NamedSharding`` for each leaf of ``shapes_tree`` (arrays or ``jax.ShapeDtypeStruct``), by regex.

    ``strategy`` is ``[(regex, "op|op(...)"), ...]`` (see the module doc). Leaves
    of rank 0 (step counts) are always replicated. ``shapes_tree`` may hold
    flax ``nn.Partitioned`` boxes, whose axis names the ``logical`` op then
    uses; otherwise pass ``logical_axes`` (``nn.get_partition_spec(boxed_params)``
    or ``{param name: names}``), which also serves optimizer state whose leaf
    names end with the param names. ``rules`` map logical to mesh axes
    (default: :data:`DEFAULT_RULES`). The result has the structure of the
    unboxed ``shapes_tree``.
    """
    parsed = []
    for item in strategy:
        if len(item) != 2 or not all(isinstance(s, str) for s in item):
            raise ConfigError(f"Bad sharding strategy entry {item!r}: expected (regex, strategy string).")
        try:
            pattern = re.compile(item[0])
        except re.error as e:
            raise ConfigError(f"Bad sharding strategy regex {item[0]!r}: {e}.") from None
        parsed.append((pattern, _parse_ops(item[1], item[0])))
    logical_rules = normalize_rules(rules)
    table = _logical_table(shapes_tree, boxes_only=True)
    if logical_axes is not None:
        table.update(_logical_table(logical_axes))
    tree = _unbox(shapes_tree)

    names = [name for name, _ in flatten_with_names(tree)]
    unmatched = [n for n in names if not any(pattern.fullmatch(n) for pattern, _ in parsed)]
    if unmatched:
        more = f" and {len(unmatched) - 5} more" if len(unmatched) > 5 else ""
        raise ConfigError(
            f"No sharding strategy regex matches {', '.join(map(repr, unmatched[:5]))}{more}; the regexes are "
            f"{[p.pattern for p, _ in parsed]}. Add a catch-all such as ('.*', 'replicate') at the end."
        )

    def leaf_sharding(name: str, x: Any) -> NamedSharding:
        shape, dtype = _shape_dtype(x)
        ops = next(ops for pattern, ops in parsed if pattern.fullmatch(name))
        spec: Spec = (None,) * len(shape)
        if shape:
            leaf = Leaf(name, shape, dtype, mesh, _lookup(table, name, len(shape)), logical_rules)
            for op in ops:
                spec = op(spec, leaf)
            _check_spec(leaf, spec)
        while spec and spec[-1] is None:
            spec = spec[:-1]
        return NamedSharding(mesh, PartitionSpec(*spec))

    leaves, treedef = jax.tree_util.tree_flatten(tree)
    return jax.tree_util.tree_unflatten(treedef, [leaf_sharding(n, x) for n, x in zip(names, leaves)])


def _check_spec(leaf: Leaf, spec: Spec) -> None:
    if len(spec) != len(leaf.shape):
        raise ValueError(f"A sharding op returned spec {spec} for {leaf.name!r} of rank {len(leaf.shape)}.")
    seen: list[str] = []
    for dim, entry in zip(leaf.shape, spec):
        if entry is None:
            continue
        axes = _axes(entry)
        _check_axes(leaf.mesh, axes, leaf.name, "The sharding")
        if dim % _size(leaf.mesh, entry):
            raise ConfigError(
                f"{leaf.name!r} of shape {leaf.shape} cannot be sharded as {spec}: {dim} is not divisible by "
                f"the {_size(leaf.mesh, entry)} devices of mesh axes {axes}."
            )
        seen.extend(axes)
    if len(seen) != len(set(seen)):
        raise ConfigError(f"{leaf.name!r} would be sharded as {spec}, which uses a mesh axis twice.")


# ----------------------------------------------------------------------------
# Activations.
# ----------------------------------------------------------------------------


@contextlib.contextmanager
def activation_rules(rules: Sequence[Sequence[Any]] | None, mesh: Mesh) -> Iterator[LogicalRules]:
    """Within it, ``nn.with_logical_constraint`` in models shards activations over ``mesh`` by ``rules``.

    ``rules`` default to ``[("act_batch", "data")]`` (dropped if the mesh has no
    ``data`` axis); logical axes without a rule are kept unsharded. The
    constraints are recorded when a function is traced, so enter this around
    the first call of a jitted function (the mesh is then part of its cache key).
    """
    if rules is None:
        normalized = tuple(r for r in DEFAULT_RULES if r[1] in mesh.shape)
    else:
        normalized = normalize_rules(rules)
    for logical_name, target in normalized:
        if target is not None:
            _check_axes(mesh, _axes(target), logical_name, "config.sharding_rules")
    with jax.set_mesh(mesh), nn.logical_axis_rules(normalized):
        yield normalized


# ----------------------------------------------------------------------------
# Memory.
# ----------------------------------------------------------------------------


def bytes_per_device(tree: Any, shardings: Any = None) -> dict[int, int]:
    """Bytes each device holds for ``tree`` (device id -> bytes), from each leaf's shard shape.

    Leaves are arrays or ``jax.ShapeDtypeStruct`` with a ``.sharding``, or take
    theirs from the matching ``shardings`` tree. Replicated leaves count in full
    on every device they live on.
    """
    leaves = jax.tree_util.tree_leaves(tree)
    if shardings is None:
        sharding_leaves = [getattr(x, "sharding", None) for x in leaves]
    else:
        sharding_leaves = jax.tree_util.tree_leaves(shardings, is_leaf=lambda s: isinstance(s, jax.sharding.Sharding))
        if len(sharding_leaves) != len(leaves):
            raise ValueError(f"The shardings tree has {len(sharding_leaves)} leaves but the tree has {len(leaves)}.")
    totals: dict[int, int] = {}
    for x, sharding in zip(leaves, sharding_leaves):
        if sharding is None:
            raise ValueError(f"A leaf of shape {getattr(x, 'shape', '?')} has no sharding; pass `shardings`.")
        shape, dtype = _shape_dtype(x)
        shard_bytes = math.prod(sharding.shard_shape(shape)) * dtype.itemsize
        for device in sharding.device_set:
            totals[device.id] = totals.get(device.id, 0) + shard_bytes
    return totals
