"""Progress of long work, and the toolkit's logger.

On a terminal the tqdm bar; elsewhere (cluster logs, notebooks' captured stderr) one log line
every few percent with the rate and the estimated time left, so a batch log shows how it goes
without thousands of carriage returns.

Messages go through :mod:`logging` under the ``morphometry`` logger; the CLI sets the level with
``--verbose`` / ``--quiet`` and library users with :func:`logging.getLogger`.
"""

from __future__ import annotations

import logging
import sys
import time

LOGGER_NAME = "morphometry"
log = logging.getLogger(LOGGER_NAME)
MIN_INTERVAL_S = 1.0
"""Shortest time between two progress lines in a log (s); work that finishes within it logs none."""


def configure_logging(verbosity: int = 0) -> None:
    """Send the toolkit's messages to stderr as plain lines: -1 warnings only (``--quiet``),
    0 information, 1 debug (``--verbose``)."""
    level = {-1: logging.WARNING, 0: logging.INFO}.get(verbosity, logging.DEBUG)
    log.setLevel(level)
    if not any(getattr(h, "_morphometry", False) for h in log.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler._morphometry = True
        log.addHandler(handler)
        log.propagate = False
    for handler in log.handlers:
        if getattr(handler, "_morphometry", False):
            handler.stream = sys.stderr  # follow a redirected stderr (tests, notebooks)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class Progress:
    """Counts finished items of ``total``; use as a context manager.

    ``enabled``: show progress, if the toolkit's logger prints information (not with
    ``--quiet``). When stderr is not a terminal, a line is logged each time another
    ``step_percent`` of the items is done, but not more often than every :data:`MIN_INTERVAL_S`
    seconds (work that finishes within it logs nothing). Where nothing has configured logging (a
    notebook, a script), the toolkit's messages go to stderr.
    """

    def __init__(self, total: int, desc: str, unit: str = "item", enabled: bool = True,
                 step_percent: float = 5.0):
        if not log.handlers and not logging.getLogger().handlers:
            configure_logging()
        self.total, self.desc, self.unit = max(0, int(total)), desc, unit
        self.enabled = bool(enabled) and log.isEnabledFor(logging.INFO)
        self.step = max(1, int(self.total * step_percent / 100))
        self.done = 0
        self._next = self.step
        self._start = self._last = time.perf_counter()
        self.min_interval_s = MIN_INTERVAL_S
        self._bar = None
        if self.enabled and self.total and sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
        elif self.enabled and self.total and (self.done >= self._next or self.done == self.total):
            while self._next <= self.done:
                self._next += self.step
            now = time.perf_counter()
            finished_after_lines = self.done == self.total and self._last > self._start
            if now - self._last >= self.min_interval_s or finished_after_lines:
                log.info(self.line())
                self._last = now

    def line(self) -> str:
        """``desc: 40/100 unit (40 %), 2.5 unit/s, about 24 s left``."""
        elapsed = time.perf_counter() - self._start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        text = f"{self.desc}: {self.done}/{self.total} {self.unit} ({100 * self.done / self.total:.0f} %)"
        if rate > 0:
            speed = f"{rate:.2f} {self.unit}/s" if rate >= 1 else f"{1 / rate:.1f} s/{self.unit}"
            text += f", {speed}"
            if self.done < self.total:
                text += f", about {_duration((self.total - self.done) / rate)} left"
        return text

    def write(self, message: str) -> None:
        """A message that does not break the bar (a warning about one scan, say)."""
        if self._bar is not None:
            self._bar.write(message, file=sys.stderr)
        else:
            log.warning(message)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
