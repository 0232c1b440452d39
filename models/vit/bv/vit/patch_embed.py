"""The ViT stem for FlexiViT: a patch embedding usable at any patch size through PI-resize.

``PatchEmbedding`` stores one kernel (``embedding/kernel`` [p, p, C, D], as ``nn.Conv``
does) and, when called with another patch size, resizes it with the pseudo-inverse resize
of FlexiViT (https://arxiv.org/abs/2212.08013) so that resized patches embed as the
original ones did.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = Any  # a jax or numpy array


def _linear_resize_1d(old: int, new: int) -> np.ndarray:
    """[new, old] weights of ``jax.image.resize(..., "bilinear", antialias=False)`` along one axis."""
    x = (np.arange(new) + 0.5) * old / new - 0.5  # half-pixel centres
    weights = np.maximum(0.0, 1.0 - np.abs(x[:, None] - np.arange(old)[None, :]))
    return weights / weights.sum(axis=1, keepdims=True)  # renormalised at the borders, as jax does


@functools.lru_cache(maxsize=64)
def _pi_resize_matrix(old: tuple[int, int], new: tuple[int, int]) -> np.ndarray:
    """The matrix that maps a flattened ``old`` kernel to the PI-resized ``new`` one (FlexiViT, eq. 6).

    Plain numpy, so that it is a constant under ``jit`` (and inside ``lax.switch`` branches).
    """
    resize = np.kron(_linear_resize_1d(old[0], new[0]), _linear_resize_1d(old[1], new[1]))  # [new_hw, old_hw]
    # The new kernel w' must give <resize(x), w'> = <x, w> for every patch x: resize^T w' = w.
    return np.linalg.pinv(resize.T).astype(np.float32)  # [new_h*new_w, old_h*old_w]


def pi_resize_kernel(kernel: Array, new_hw: Sequence[int]) -> Array:
    """Resizes a patch-embedding kernel [h, w, C, D] to ``new_hw`` so that it embeds resized patches the same.

    The pseudo-inverse resize of FlexiViT (https://arxiv.org/abs/2212.08013): for a patch ``x`` and its
    bilinear resize ``r(x)``, ``<r(x), resized kernel> = <x, kernel>``, exactly when upsampling and in
    the least-squares sense when downsampling.
    """
    h, w, c, d = kernel.shape
    new = (int(new_hw[0]), int(new_hw[1]))
    if new == (h, w):
        return kernel
    matrix = jnp.asarray(_pi_resize_matrix((h, w), new))
    return (matrix @ jnp.reshape(kernel, (h * w, c * d))).reshape(*new, c, d).astype(kernel.dtype)


class PatchEmbedding(nn.Module):
    """The ViT stem: a stride-``patch`` convolution, whose kernel is PI-resized when called with another patch size.

    Its parameters (``kernel`` [p, p, C, D], ``bias`` [D]) and their initialisation are ``nn.Conv``'s.
    """

    width: int
    patch_size: tuple[int, int]
    dtype_mm: str = "float32"

    @nn.compact
    def __call__(self, image: Array, patch_size: Sequence[int] | None = None) -> Array:
        kernel = self.param(
            "kernel", nn.initializers.lecun_normal(), (*self.patch_size, image.shape[-1], self.width), jnp.float32
        )
        bias = self.param("bias", nn.initializers.zeros, (self.width,), jnp.float32)
        patch = tuple(patch_size) if patch_size is not None else tuple(self.patch_size)
        kernel = pi_resize_kernel(kernel, patch)
        image, kernel, bias = nn.dtypes.promote_dtype(image, kernel, bias, dtype=self.dtype_mm)
        y = jax.lax.conv_general_dilated(
            image, kernel, window_strides=patch, padding="VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        return y + bias.reshape(1, 1, 1, -1)
