"""Image-text losses for two-tower models: softmax contrastive (CLIP, LiT) and sigmoid (SigLIP).

Conventions shared by every loss here:

- ``zimg`` and ``ztxt`` are ``[N, D]`` embeddings, already L2-normalised; row ``i`` of both
  is a matching pair and every other pairing within the batch is a negative.
- ``t`` is the temperature *multiplier* itself, not its logarithm: logits are
  ``t * zimg @ ztxt.T (+ b)``. This is what big_vision's two-tower model returns as
  ``out["t"]`` (``exp`` of its learned ``t`` parameter, which it also returns as
  ``out["t/parameter"]``). ``t`` and ``b`` may be Python numbers, 0-d arrays or
  one-element arrays (the shape ``(1,)`` of the model's parameters).
- Each loss returns ``(loss, metrics)``: a scalar loss and a dict of scalar metrics.
  Both accuracies count a pair as retrieved when its logit is strictly larger than every
  other logit of its row (``img2txt_acc``) or column (``txt2img_acc``).
- Math runs in at least float32: bfloat16 embeddings are upcast, float64 stays float64.

The sigmoid loss has a chunked form (:func:`chunked_sigmoid_loss`) for a batch that is
split over a mesh axis: each device only ever holds an ``[N/n, N/n]`` block of logits,
and the text embeddings travel around the axis instead of being all-gathered, as the
SigLIP paper (https://arxiv.org/abs/2303.15343) describes.
"""

from __future__ import annotations

import difflib
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.sharding import AbstractMesh, Mesh, NamedSharding, PartitionSpec

from bv.core.registry import UnknownNameError

Metrics = dict[str, jax.Array]
Scalar = jax.Array | float
LossFn = Callable[..., tuple[jax.Array, Metrics]]
# What the chunked sigmoid loss carries around the ring: the visiting texts, their running
# column maxima, the running negatives' loss and the running row maxima.
_RingCarry = tuple[jax.Array, jax.Array, jax.Array, jax.Array]


# ----------------------------------------------------------------------------
# Shared helpers.
# ----------------------------------------------------------------------------


def _check_pair(zimg: jax.Array, ztxt: jax.Array) -> None:
    if zimg.ndim != 2 or zimg.shape != ztxt.shape:
        raise ValueError(
            "zimg and ztxt must both be [N, D] embeddings of the same shape (row i of each is a pair), "
            f"got zimg {tuple(zimg.shape)} and ztxt {tuple(ztxt.shape)}."
        )


def _compute_dtype(zimg: jax.Array, ztxt: jax.Array) -> Any:
    return jnp.result_type(jnp.float32, zimg.dtype, ztxt.dtype)


def _scalar(value: Scalar, name: str, dtype: Any) -> jax.Array:
    array = jnp.asarray(value, dtype)
    if array.size != 1:
        raise ValueError(f"{name} must be a scalar or a one-element array, got shape {tuple(array.shape)}.")
    return array.reshape(())


def _bias(b: Scalar | None, dtype: Any) -> jax.Array:
    if b is None:
        raise ValueError(
            "The sigmoid loss needs a learned bias b (big_vision's out['b']); give the two-tower model a "
            "bias_init (SigLIP uses -10) or pass b explicitly."
        )
    return _scalar(b, "b", dtype)


def _block_logits(zimg: jax.Array, ztxt: jax.Array, t: jax.Array, b: jax.Array) -> jax.Array:
    return t * jnp.dot(zimg, ztxt.T) + b


def _off_diagonal_max(logits: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per row and per column, the largest logit of a non-matching pair (``-inf`` if none)."""
    eye = jnp.eye(logits.shape[0], dtype=bool)
    negatives = jnp.where(eye, -jnp.inf, jax.lax.stop_gradient(logits))
    return negatives.max(axis=1), negatives.max(axis=0)


def _accuracies(logits: jax.Array) -> Metrics:
    positives = jax.lax.stop_gradient(jnp.diagonal(logits))
    row_max, col_max = _off_diagonal_max(logits)
    return {
        "img2txt_acc": jnp.mean(positives > row_max, dtype=logits.dtype),
        "txt2img_acc": jnp.mean(positives > col_max, dtype=logits.dtype),
    }


# ----------------------------------------------------------------------------
# Softmax contrastive loss (CLIP, LiT).
# ----------------------------------------------------------------------------


def softmax_contrastive_loss(
    zimg: jax.Array, ztxt: jax.Array, t: Scalar, b: Scalar | None = None
) -> tuple[jax.Array, Metrics]:
    """CLIP's bidirectional contrastive loss: the mean of image->text and text->image cross-entropy.

    Each image is a classifier over the batch's texts (and each text over its images) whose
    target is its own pair, the diagonal of ``t * zimg @ ztxt.T``. Like big_vision's
    ``bidirectional_contrastive_loss``, both directions are averaged over the batch, then
    over the two directions.

    Args:
      zimg: ``[N, D]`` L2-normalised image embeddings.
      ztxt: ``[N, D]`` L2-normalised text embeddings, row ``i`` paired with ``zimg[i]``.
      t: the temperature multiplier (already exponentiated, big_vision's ``out["t"]``).
      b: an optional bias added to every logit. It does not change a softmax, so it leaves
        the loss as it is; it is accepted so that every entry of :data:`LOSSES` takes the
        same arguments.

    Returns:
      ``(loss, metrics)`` with metrics ``loss_img2txt``, ``loss_txt2img``, ``img2txt_acc``
      and ``txt2img_acc``.
    """
    _check_pair(zimg, ztxt)
    dtype = _compute_dtype(zimg, ztxt)
    bias = jnp.zeros((), dtype) if b is None else _scalar(b, "b", dtype)
    logits = _block_logits(zimg.astype(dtype), ztxt.astype(dtype), _scalar(t, "t", dtype), bias)
    img2txt = -jnp.mean(jnp.diagonal(jax.nn.log_softmax(logits, axis=1)))
    txt2img = -jnp.mean(jnp.diagonal(jax.nn.log_softmax(logits, axis=0)))
    loss = 0.5 * (img2txt + txt2img)
    return loss, {"loss_img2txt": img2txt, "loss_txt2img": txt2img, **_accuracies(logits)}


# ----------------------------------------------------------------------------
# Sigmoid loss (SigLIP).
# ----------------------------------------------------------------------------


def sigmoid_loss(zimg: jax.Array, ztxt: jax.Array, t: Scalar, b: Scalar | None) -> tuple[jax.Array, Metrics]:
    """SigLIP's pairwise sigmoid loss: an independent binary classification for every pair.

    With logits ``t * zimg @ ztxt.T + b`` and labels ``+1`` on the diagonal (matching pairs)
    and ``-1`` elsewhere, the loss is ``-sum(log_sigmoid(labels * logits)) / N``: the sum
    over all ``N**2`` pairs divided by the batch size, i.e. the mean over images of each
    image's summed loss over all texts. This is big_vision's normalisation (its SigLIP
    trainer sums over texts and averages over images).

    Args:
      zimg: ``[N, D]`` L2-normalised image embeddings.
      ztxt: ``[N, D]`` L2-normalised text embeddings, row ``i`` paired with ``zimg[i]``.
      t: the temperature multiplier (already exponentiated, big_vision's ``out["t"]``).
      b: the learned bias (big_vision's ``out["b"]``); required.

    Returns:
      ``(loss, metrics)`` with metrics ``pos_loss`` and ``neg_loss`` (the matching and the
      non-matching pairs' shares of the loss, which add up to it), ``img2txt_acc`` and
      ``txt2img_acc``.
    """
    _check_pair(zimg, ztxt)
    dtype = _compute_dtype(zimg, ztxt)
    t, b = _scalar(t, "t", dtype), _bias(b, dtype)
    logits = _block_logits(zimg.astype(dtype), ztxt.astype(dtype), t, b)
    n = logits.shape[0]
    eye = jnp.eye(n, dtype=bool)
    pos_loss = -jnp.sum(jax.nn.log_sigmoid(jnp.diagonal(logits))) / n
    neg_loss = -jnp.sum(jnp.where(eye, 0.0, jax.nn.log_sigmoid(-logits))) / n
    return pos_loss + neg_loss, {"pos_loss": pos_loss, "neg_loss": neg_loss, **_accuracies(logits)}


@jax.checkpoint
def _negatives_sum(zimg: jax.Array, ztxt: jax.Array, t: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Summed loss of a block in which every pair is a negative, and the block's logits (for metrics).

    Rematerialised, so that the backward pass keeps only the text chunk of each step, not its
    block of logits.
    """
    logits = _block_logits(zimg, ztxt, t, b)
    return -jnp.sum(jax.nn.log_sigmoid(-logits)), jax.lax.stop_gradient(logits)


def chunked_sigmoid_loss(
    zimg: jax.Array, ztxt: jax.Array, t: Scalar, b: Scalar | None, axis_name: str
) -> tuple[jax.Array, Metrics]:
    """:func:`sigmoid_loss` over a batch split along ``axis_name``, without gathering it.

    Call this inside ``jax.shard_map`` (or ``jax.pmap``) over the batch axis: each device
    passes its own ``[N/n, D]`` images and texts (row ``i`` of each still a pair) and the
    replicated ``t`` and ``b``. A device first scores its images against its own texts
    (positives on the diagonal, negatives elsewhere), then passes its texts on to the next
    device around the axis with ``jax.lax.ppermute`` ``n - 1`` times, scoring its images
    against each visiting chunk as negatives only. Memory per device is one
    ``[N/n, N/n]`` block of logits rather than ``[N/n, N]``; the backward pass
    recomputes each block. ``ppermute`` is differentiable, so gradients flow to every
    device's texts.

    Returns:
      The *global* ``(loss, metrics)``, already summed over the axis (``psum``) and divided
      by the global batch size ``N``, so identical on every device and equal to
      :func:`sigmoid_loss` on the gathered batch. Under ``shard_map`` return them with
      ``out_specs=PartitionSpec()``. Gradients taken outside the ``shard_map`` (as
      :func:`sigmoid_loss_sharded` does) or inside it (with its default ``check_vma``)
      are those of the global loss. Under ``pmap``, whose ``psum`` counts the replicated
      loss once per device, gradients taken inside come out ``n`` times too large.
    """
    _check_pair(zimg, ztxt)
    dtype = _compute_dtype(zimg, ztxt)
    t, b = _scalar(t, "t", dtype), _bias(b, dtype)
    zimg, ztxt = zimg.astype(dtype), ztxt.astype(dtype)
    num_chunks = jax.lax.axis_size(axis_name)
    to_next = [(i, (i + 1) % num_chunks) for i in range(num_chunks)]

    # The device's own texts: positives on the diagonal, negatives elsewhere.
    logits = _block_logits(zimg, ztxt, t, b)
    eye = jnp.eye(logits.shape[0], dtype=bool)
    positives = jnp.diagonal(logits)
    pos_sum = -jnp.sum(jax.nn.log_sigmoid(positives))
    neg_sum = -jnp.sum(jnp.where(eye, 0.0, jax.nn.log_sigmoid(-logits)))
    row_max, col_max = _off_diagonal_max(logits)

    # The other devices' texts, one chunk at a time: negatives only. Each text chunk carries
    # the running maximum of its column (for txt2img_acc) along with it.
    def visit(carry: _RingCarry, _: None) -> tuple[_RingCarry, None]:
        texts, texts_col_max, neg_sum, row_max = carry
        texts, texts_col_max = jax.lax.ppermute((texts, texts_col_max), axis_name, to_next)
        block_sum, block = _negatives_sum(zimg, texts, t, b)
        row_max = jnp.maximum(row_max, block.max(axis=1))
        texts_col_max = jnp.maximum(texts_col_max, block.max(axis=0))
        return (texts, texts_col_max, neg_sum + block_sum, row_max), None

    carry: _RingCarry = (ztxt, col_max, neg_sum, row_max)
    (_, col_max, neg_sum, row_max), _ = jax.lax.scan(visit, carry, None, length=num_chunks - 1)
    # After n - 1 steps each device holds the next device's chunk; one more step takes every
    # column maximum home, next to the positives it is compared with.
    col_max = jax.lax.ppermute(col_max, axis_name, to_next)

    positives = jax.lax.stop_gradient(positives)
    sums = {
        "pos_loss": pos_sum,
        "neg_loss": neg_sum,
        "img2txt_acc": jnp.sum(positives > row_max, dtype=dtype),
        "txt2img_acc": jnp.sum(positives > col_max, dtype=dtype),
    }
    global_n = zimg.shape[0] * num_chunks
    metrics = {name: value / global_n for name, value in jax.lax.psum(sums, axis_name).items()}
    return metrics["pos_loss"] + metrics["neg_loss"], metrics


def sigmoid_loss_sharded(
    zimg: jax.Array,
    ztxt: jax.Array,
    t: Scalar,
    b: Scalar | None,
    mesh: Mesh | AbstractMesh | None = None,
    axis: str = "data",
) -> tuple[jax.Array, Metrics]:
    """:func:`sigmoid_loss` of a global batch, computed chunk by chunk over the mesh axis ``axis``.

    Runs :func:`chunked_sigmoid_loss` in a ``jax.shard_map`` whose inputs are split along
    the batch over ``axis`` (and replicated over any other mesh axis); returns the global
    loss and metrics, equal to :func:`sigmoid_loss` on the whole batch, and differentiable
    like it. Works eagerly and under ``jax.jit``.

    Args:
      zimg, ztxt, t, b: as for :func:`sigmoid_loss`; ``N`` must divide by the axis size.
      mesh: the device mesh. ``None`` takes the mesh in context (``jax.set_mesh``, which
        the bv trainer enters while tracing); if there is none, or it has no axis
        ``axis``, the batch is one chunk and this is plain :func:`sigmoid_loss`.
      axis: the mesh axis the batch is split over.

    A mesh with explicit axis types (``jax.make_mesh``'s default; the bv trainer's meshes
    are ``Auto``) must also be the mesh in context (``with jax.set_mesh(mesh):``), as JAX
    requires for any computation over such a mesh.
    """
    _check_pair(zimg, ztxt)
    if mesh is None:
        mesh = jax.sharding.get_abstract_mesh()
        if mesh.empty or axis not in mesh.axis_names:
            return sigmoid_loss(zimg, ztxt, t, b)
    elif axis not in mesh.axis_names:
        raise ValueError(f"The mesh has no axis {axis!r} to split the batch over; its axes are {mesh.axis_names}.")
    num_chunks = mesh.shape[axis]
    if zimg.shape[0] % num_chunks:
        raise ValueError(
            f"The batch of {zimg.shape[0]} pairs does not split evenly over the {num_chunks} devices of mesh "
            f"axis {axis!r}; use a batch size that is a multiple of {num_chunks}."
        )
    dtype = _compute_dtype(zimg, ztxt)
    args = (zimg, ztxt, _scalar(t, "t", dtype), _bias(b, dtype))
    specs = (PartitionSpec(axis), PartitionSpec(axis), PartitionSpec(), PartitionSpec())
    if mesh.explicit_axes:  # explicit sharding types the inputs, so split them over `axis` first
        args = tuple(jax.sharding.reshard(x, NamedSharding(mesh, s)) for x, s in zip(args, specs))
    run = jax.shard_map(
        functools.partial(chunked_sigmoid_loss, axis_name=axis),
        mesh=mesh,
        in_specs=specs,
        out_specs=PartitionSpec(),
    )
    loss, metrics = run(*args)
    return loss, metrics


# ----------------------------------------------------------------------------
# Lookup by name (``config.loss``).
# ----------------------------------------------------------------------------

LOSSES: dict[str, LossFn] = {
    "softmax": softmax_contrastive_loss,
    "sigmoid": sigmoid_loss,
    "sigmoid_chunked": sigmoid_loss_sharded,
}


def get_loss(name: str) -> LossFn:
    """The loss called ``name`` in :data:`LOSSES`; each is called as ``loss_fn(zimg, ztxt, t, b)``.

    ``"sigmoid_chunked"`` splits the batch over the ``"data"`` axis of the mesh in context.
    """
    try:
        return LOSSES[name]
    except KeyError:
        known = sorted(LOSSES)
        close = difflib.get_close_matches(name, known, n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise UnknownNameError(
            f"Unknown image-text loss {name!r} (config.loss).{hint} Known image-text losses: {', '.join(known)}."
        ) from None
