"""Atomic file writes: a hidden temporary file in the target's folder, renamed onto the target.

A reader (or a batch resumed after a kill) sees the old file or the complete new one, never a
partial write; a failed write leaves no temporary file behind.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)  # errors of a full disk or an exceeded quota


def atomic_write(path: str | Path, write, *, suffix: str = ".tmp") -> None:
    """Call ``write(tmp_path)`` then rename onto ``path`` (same folder, so the rename is atomic).

    The temporary file is ``.<name>.<random><suffix>``; writers that choose the format by the
    file name's extension (nibabel, SimpleITK, ...) pass the target's, e.g. ``suffix=".nii.gz"``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def no_space(exc: BaseException) -> bool:
    """True when ``exc`` (or what it was raised from) is a full disk or an exceeded quota."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in NO_SPACE:
            return True
        exc = exc.__cause__ or exc.__context__
    return False
