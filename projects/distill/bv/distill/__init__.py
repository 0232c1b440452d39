"""bv-distill: Patient and consistent knowledge distillation as a bv task. Not implemented
yet; today the package holds its version and build wiring.
"""

from bv.distill.version import __version__

__all__ = ["__version__"]
