"""An exclusive lock on an output folder, so that two batches never write into the same one.

``OUT/.lock`` is locked with ``flock`` for as long as the batch runs and holds the holder's pid,
host and start time (shown to a second batch that is refused). The operating system releases the
lock when the holder exits, however it dies, so a lock left by a killed process never blocks. The
file itself stays (deleting it would let two processes lock two different files).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from datetime import datetime, timezone
from pathlib import Path
from typing import Self

from morphometry.errors import InputError

LOCK_FILE = ".lock"


def _holder_text(path: Path) -> str:
    try:
        doc = json.loads(path.read_text())
        return f"pid {doc['pid']} on {doc['host']}, started {doc['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown"


class FolderLock:
    """Context manager: hold ``folder/.lock`` exclusively, or raise InputError naming the folder and
    the holder. ``command``: what the holder runs, recorded in the lock file."""

    def __init__(self, folder: str | os.PathLike, command: str = "morpho segment"):
        self.folder, self.command, self._fd = Path(folder), command, None

    @property
    def path(self) -> Path:
        return self.folder / LOCK_FILE

    def __enter__(self) -> Self:
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise InputError(f"{self.folder} is in use by another batch ({_holder_text(self.path)}); wait for it to "
                             "finish or choose another output folder") from None
        doc = {"pid": os.getpid(), "host": socket.gethostname(), "command": self.command,
               "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(doc).encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
