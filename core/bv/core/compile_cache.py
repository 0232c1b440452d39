"""JAX's persistent compilation cache for bv-train: a second run of a config skips XLA's compiles.

A run compiles its training step and each evaluator's step; on a small CPU that is 10-20 s of a
few-minute run, and the same again on every restart. ``enable()`` points JAX's persistent cache
at ``$BV_COMPILATION_CACHE_DIR`` (default ``$XDG_CACHE_HOME/bv/jax``, i.e. ``~/.cache/bv/jax``), so
later runs of the same programs on the same JAX version and devices load them instead. Compiles
under a second are not stored (JAX's ``jax_persistent_cache_min_compile_time_secs``).

It does nothing when ``JAX_COMPILATION_CACHE_DIR`` (JAX's own setting) is set, and
``BV_COMPILATION_CACHE_DIR=""`` turns it off.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger("bv.train")

ENV_VAR = "BV_COMPILATION_CACHE_DIR"


def default_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "bv", "jax")


def enable() -> str | None:
    """Turns the persistent compilation cache on (see the module doc); returns its folder, None if off or JAX's."""
    import jax

    if os.environ.get("JAX_COMPILATION_CACHE_DIR") or getattr(jax.config, "jax_compilation_cache_dir", None):
        return None  # the user set JAX's own option: it wins
    path = os.environ.get(ENV_VAR, default_dir())
    if not path:
        return None
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:  # a read-only home: train without the cache
        log.warning("No compilation cache: cannot create %s (%s); set %s to a writable folder.", path, e, ENV_VAR)
        return None
    jax.config.update("jax_compilation_cache_dir", path)
    return path
