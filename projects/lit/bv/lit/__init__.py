"""bv-lit: Two-tower image-text models (LiT, CLIP, SigLIP): text transformer, tokenizers,
contrastive and sigmoid losses, zero-shot and retrieval. Not implemented yet; today the
package holds its version and build wiring.
"""

from bv.lit.version import __version__

__all__ = ["__version__"]
