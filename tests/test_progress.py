"""Progress lines in logs (stderr not a terminal): spacing, rate, time left, quiet mode; errors
that name a setting and the flag the CLI shows instead."""

from __future__ import annotations

import logging

import pytest

from morphometry import progress
from morphometry.errors import InputError


class Clock:
    """A stand-in for time.perf_counter that moves only when told (s)."""

    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = Clock()
    monkeypatch.setattr(progress.time, "perf_counter", fake)
    return fake


def _lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("work:")]


def test_a_line_every_five_percent_with_rate_and_time_left(clock, capsys):
    progress.configure_logging(0)
    with progress.Progress(40, "work", "scan") as bar:
        for _ in range(40):
            clock.now += 2.0  # 2 s per scan
            bar.update()
    lines = _lines(capsys)
    assert len(lines) == 20  # every 2 of 40 scans
    assert lines[0] == "work: 2/40 scan (5 %), 2.0 s/scan, about 1 min 16 s left"  # 38 scans x 2 s
    assert lines[9] == "work: 20/40 scan (50 %), 2.0 s/scan, about 40 s left"
    assert lines[-1] == "work: 40/40 scan (100 %), 2.0 s/scan"


def test_lines_no_closer_than_the_minimum_interval(clock, capsys, monkeypatch):
    monkeypatch.setattr(progress, "MIN_INTERVAL_S", 10.0)
    progress.configure_logging(0)
    with progress.Progress(100, "work", "item") as bar:
        for _ in range(100):
            clock.now += 1.0  # 5 items (one step) = 5 s: a line every second step
            bar.update()
    lines = _lines(capsys)
    assert [line.split()[1] for line in lines] == [f"{k}/100" for k in range(10, 101, 10)]
    assert lines[-1] == "work: 100/100 item (100 %), 1.00 item/s"


def test_quick_work_logs_nothing_and_quiet_mode_silences(clock, capsys, monkeypatch):
    monkeypatch.setattr(progress, "MIN_INTERVAL_S", 1.0)
    progress.configure_logging(0)
    with progress.Progress(20, "work") as bar:
        bar.update(20)  # no time passed
    assert _lines(capsys) == []
    progress.configure_logging(-1)
    with progress.Progress(3, "work") as bar:
        clock.now += 60
        bar.update(3)
    assert _lines(capsys) == [] and progress.log.level == logging.WARNING
    progress.configure_logging(0)


def test_errors_name_the_setting_and_the_cli_shows_the_flag(capsys, tmp_path):
    error = InputError("must be at least 2, not 1", setting="n_knots")
    assert str(error) == "n_knots: must be at least 2, not 1" and error.setting == "n_knots"
    assert str(error.renamed("--knots")) == "--knots: must be at least 2, not 1"
    from morphometry.cli import main

    table = tmp_path / "v.csv"
    table.write_text("scan_id,age,sex,left_hippocampus\na,30,F,4000\nb,50,M,3900\nc,70,F,3700\n")
    assert main(["fit-ageing", str(table), "-o", str(tmp_path / "o"), "--structures", "left_hippocampus",
                 "--knots", "1", "--spacing-terms", "--bootstrap", "0"]) == 2
    assert "morpho fit-ageing: error: --knots: must be at least 2" in capsys.readouterr().err
