"""One error hierarchy: the CLI prints ``str(error)`` as a single line, never a traceback."""


class MorphometryError(Exception):
    """Base class of every error the toolkit raises on purpose."""


class InputError(MorphometryError):
    """A user input (scan, manifest, table, option) is missing, unreadable or invalid."""


class ModelError(MorphometryError):
    """A model bundle is missing, incomplete or inconsistent."""


class DataError(MorphometryError):
    """Data are readable but unusable for the requested analysis."""
