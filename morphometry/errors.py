"""One error hierarchy: the CLI prints ``str(error)`` as a single line, never a traceback.

An error about one setting or column names it (``setting="n_knots"``): ``str`` reads
``n_knots: must be at least 2``, and the CLI shows the flag instead (``--knots: must be ...``).
"""

from __future__ import annotations


class MorphometryError(Exception):
    """Base class of every error the toolkit raises on purpose."""

    def __init__(self, message: str, *, setting: str | None = None):
        super().__init__(message)
        self.message, self.setting = message, setting

    def __str__(self) -> str:
        return f"{self.setting}: {self.message}" if self.setting else self.message

    def renamed(self, name: str) -> "MorphometryError":
        """The same error naming ``name`` (a command-line flag) instead of the setting."""
        return type(self)(self.message, setting=name)


class InputError(MorphometryError):
    """A user input (scan, manifest, table, option) is missing, unreadable or invalid."""


class ModelError(MorphometryError):
    """A model bundle is missing, incomplete or inconsistent."""


class OutputError(MorphometryError):
    """An output folder cannot be written (no space left on the device, disk quota exceeded)."""


class DataError(MorphometryError):
    """Data are readable but unusable for the requested analysis."""
