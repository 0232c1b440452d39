"""bv-distill: patient and consistent knowledge distillation as a task of the one bv trainer.

``DistillTask`` (the task ``distill``) trains any registered bv model as a student to
match frozen teachers (``bv.distill.teachers``: loaded from a bv workdir, a model folder
or Hub repo, a timm folder or a big_vision ``.npz``) on the same augmented images, with
the KL divergence (or cross-entropy) at a temperature. The ``distance`` evaluator
(bv.evaluators) measures agreement and KL between student and teacher.
"""

from bv.distill.version import __version__
from bv.distill.task import DISTANCES, DistillTask, distance
from bv.distill.teachers import Teacher, load_teacher

__all__ = ["DISTANCES", "DistillTask", "Teacher", "__version__", "distance", "load_teacher"]
