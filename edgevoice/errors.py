"""Error types: what the user can fix versus what is our bug.

The split follows Polygraphy: an `EdgevoiceError` is a user error (bad input, missing file,
wrong target). The CLI prints its message on one line and exits with code 1, no traceback.
Anything else that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations


class EdgevoiceError(Exception):
    """A user error: the message names the problem and what to do next."""


class PackageError(EdgevoiceError):
    """An engine package is missing, tampered with, or does not fit this machine."""


class MissingDependencyError(EdgevoiceError):
    """An optional dependency (extra) is not installed."""

    @classmethod
    def for_module(cls, module: str, extra: str, purpose: str) -> "MissingDependencyError":
        return cls(
            f"{purpose} needs the Python package '{module}', which is not installed; "
            f"install it with: pip install 'edgevoice[{extra}]'"
        )
