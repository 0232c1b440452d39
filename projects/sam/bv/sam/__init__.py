"""bv-sam: SAM and GSAM (sharpness-aware minimization) for any task of the one bv trainer.

``SamTask`` (the task ``sam``) wraps another task (``config.sam.task``) and gives the
optimizer the gradient at the perturbed params (SAM) or GSAM's surrogate-gap-guided
gradient, with rho following the trainer's learning-rate schedule. The math is in
``bv.sam.gradients`` (``sam_grads``, ``perturb``, ``gsam_combine``), GSAM's rho in
``bv.sam.rho``, the config's reading and checks in ``bv.sam.options``.
"""

from bv.sam.version import __version__
from bv.sam.gradients import gsam_combine, perturb, sam_grads, tree_norm
from bv.sam.options import SamOptions, parse_options
from bv.sam.rho import lr_range, rho_at
from bv.sam.task import SamTask, frozen_names

__all__ = [
    "SamOptions",
    "SamTask",
    "__version__",
    "frozen_names",
    "gsam_combine",
    "lr_range",
    "parse_options",
    "perturb",
    "rho_at",
    "sam_grads",
    "tree_norm",
]
