"""The base class of errors that a user caused and can fix.

Command-line entry points print such an error as one paragraph and exit with
code 2; any other exception is a bug and keeps its traceback. An error class
joins by subclassing :class:`UserError` (beside its usual base, e.g.
``class ConfigError(UserError, ValueError)``).
"""

from __future__ import annotations

__all__ = ["UserError"]


class UserError(Exception):
    """Bad input or a fault outside bv (a damaged file, a full disk, a busy workdir): the message says what to do."""
