"""Benchmark of ``morpho demo``: wall seconds of every stage against the budgets on this machine.

Runs the full and/or the quick demo in a fresh temporary folder, each in its own process (as a
user runs it), reads the ``timings.json`` the demo writes and prints one table. Budgets of the
issue on a 2-core machine: full under 15 minutes, ``--quick`` under 3.

    .venv/bin/python benchmarks/demo.py [--which quick full]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

BUDGET_S = {"quick": 180, "full": 900}
STAGES = ("simulate cohort", "segment", "evaluate against the truth", "fit ageing", "report")


def run_demo(which: str, folder: Path) -> dict:
    out = folder / which
    command = [sys.executable, "-m", "morphometry.cli", "demo", "-o", str(out)]
    command += ["--quick"] if which == "quick" else []
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return json.loads((out / "timings.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--which", nargs="+", choices=sorted(BUDGET_S), default=["quick", "full"])
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, load average "
          f"{', '.join(f'{x:.1f}' for x in os.getloadavg())} at start")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for which in args.which:
            record = run_demo(which, Path(tmp))
            rows.append((which, record))
    print()
    print("| demo | scans x methods | " + " | ".join(STAGES) + " | total s | budget s |")
    print("| --- | ---: | " + " | ".join("---:" for _ in STAGES) + " | ---: | ---: |")
    for which, record in rows:
        seconds = record["seconds"]
        cells = " | ".join(f"{seconds.get(stage, float('nan')):.0f}" for stage in STAGES)
        print(f"| {which} | {record['scans']} x {len(record['methods'])} | {cells} | {seconds['total']:.0f} | "
              f"{BUDGET_S[which]} |")


if __name__ == "__main__":
    main()
