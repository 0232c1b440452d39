"""bv-core: the one trainer every bv project plugs into.

Importing this package is cheap; the trainer, data pipeline and checkpoint
modules are imported where they are used.
"""

from bv.core import registry

__all__ = ["registry"]
