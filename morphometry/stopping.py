"""A stop request from SIGTERM (how SLURM and PBS end a job at its walltime) or SIGINT (Ctrl-C).

A long loop installs :class:`StopRequest` around its work and checks ``stop.requested`` between
items: the first signal only sets it, so the item in flight finishes (or is abandoned cleanly) and
the loop writes what it has before returning; a second SIGINT interrupts at once.
"""

from __future__ import annotations

import signal
import threading
from typing import Self

from morphometry.progress import log

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequest:
    """Context manager catching SIGTERM and SIGINT while it is active (main thread only; elsewhere
    it only holds ``requested``, which :meth:`request` sets); restores the old handlers on exit."""

    def __init__(self, signals: tuple[signal.Signals, ...] = STOP_SIGNALS):
        self.signals = signals
        self.signal: signal.Signals | None = None  # the first signal received
        self._old: dict = {}

    @property
    def requested(self) -> bool:
        return self.signal is not None

    @property
    def exit_code(self) -> int:
        """128 + the signal's number, the shell's convention (143 for SIGTERM, 130 for SIGINT)."""
        return 128 + int(self.signal) if self.signal is not None else 0

    def request(self, signum: int = signal.SIGTERM) -> None:
        """Ask the loop to stop, as the signal ``signum`` does."""
        if self.signal is None:
            self.signal = signal.Signals(signum)

    def _handle(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if not self.requested:
            log.warning(f"{signal.Signals(signum).name} received: stopping after the scan in flight")
        self.request(signum)

    def __enter__(self) -> Self:
        if threading.current_thread() is threading.main_thread():
            self._old = {s: signal.signal(s, self._handle) for s in self.signals}
        return self

    def __exit__(self, *exc) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old = {}
