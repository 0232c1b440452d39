"""bv-uvim: UViM ("UViM: A Unified Modeling Approach for Vision with Learned Guiding Codes") for the one bv trainer.

Two tasks, no forked loop:

- ``uvim_vqvae`` (stage I, :mod:`bv.uvim.stage1`): a ViT VQ-VAE (:class:`VQVAE`) over the
  task output, guided by the image, with big_vision's moving-average codebook, code usage
  metrics and dead-code restarts (:mod:`bv.uvim.codebook`).
- ``uvim_dense``: a per-pixel baseline (:mod:`bv.uvim.baseline`).
- ``uvim`` (stage II, :mod:`bv.uvim.stage2`): an image encoder and an autoregressive
  decoder over the stage-I codes (:class:`VTT`), teacher-forced; greedy, temperature and
  top-k sampling under ``jit`` with a fixed-length cache (:mod:`bv.uvim.decode`).

Hub folders: :func:`save_stage1` (stage I, for ``config.model_init``) and :func:`save_uvim`
(stage II with its oracle), loaded for predictions by :class:`UvimModel`.

Task adapters (:mod:`bv.uvim.adapters`): segmentation, panoptic, depth, colorization.
With the train extra, importing the package also registers its pp ops
(:mod:`bv.uvim.pp_ops`), evaluators (:mod:`bv.uvim.evaluators`) and the ``photos``
data set (:mod:`bv.uvim.photos`).
"""

from bv.core import registry
from bv.core.extras import has_train_extra
from bv.uvim.baseline import DenseTask
from bv.uvim.hub import UvimHub, save_stage1
from bv.uvim.pretrained import UvimModel, save_uvim
from bv.uvim.stage1 import VqvaeTask
from bv.uvim.stage2 import UvimTask
from bv.uvim.version import __version__
from bv.uvim.vqvae import VQVAE
from bv.uvim.vtt import VTT


def _vqvae(num_classes: object = None, **kw: object) -> VQVAE:
    del num_classes
    return VQVAE(**kw)  # type: ignore[arg-type]


def _vtt(num_classes: object = None, **kw: object) -> VTT:
    del num_classes
    return VTT(**kw)  # type: ignore[arg-type]


if "uvim_vqvae" not in registry.models:
    registry.register_model("uvim_vqvae", _vqvae, kind="uvim")
    registry.register_model("uvim_vtt", _vtt, hub_class=UvimHub, kind="uvim")

if has_train_extra():
    from bv.uvim import evaluators, photos, pp_ops  # noqa: F401  (registers them)

__all__ = [
    "VQVAE",
    "VTT",
    "DenseTask",
    "UvimHub",
    "UvimModel",
    "UvimTask",
    "VqvaeTask",
    "__version__",
    "save_stage1",
    "save_uvim",
]
