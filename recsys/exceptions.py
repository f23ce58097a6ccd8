"""Errors raised by recsys. Every message names the field, the value and the fix."""
from __future__ import annotations


class RecsysError(Exception):
    """Base class of every error recsys raises on purpose."""


class DataValidationError(RecsysError, ValueError):
    """An interaction log or item table failed validation (names column, row and fix)."""


class NotFittedError(RecsysError, ValueError, AttributeError):
    """A model was used before `fit` (or `load`)."""


class UnknownIdError(RecsysError, KeyError):
    """A user or item id is not known to the model."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0]) if self.args else ""


class BundleError(RecsysError):
    """A model bundle is missing, corrupt or of an unsupported format."""


class DownloadError(RecsysError):
    """A dataset download failed or did not match its expected size/checksum."""
