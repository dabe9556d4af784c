"""``morpho report``: argument parsing; the work is imported when the command runs."""

from __future__ import annotations

import sys
from pathlib import Path

FLAGS = {name: f"--{name}" for name in ("volumes", "ageing", "evaluation", "covariates", "structures", "planted",
                                        "norms")}
FLAGS["norm_scores"] = "--norm-scores"


def register(sub) -> None:
    p = sub.add_parser("report", help="one self-contained HTML report with the paper's figures",
                       description="Write one HTML page (figures embedded, opens offline) from the outputs of "
                                   "segment, evaluate and fit-ageing; every figure is also written as PNG and PDF "
                                   "into <report>_figures/.")
    p.add_argument("-o", "--out", required=True, type=Path, help="report file, e.g. report.html")
    p.add_argument("--volumes", nargs="+", type=Path, default=(), help="volumes tables (segment's volumes.parquet)")
    p.add_argument("--ageing", type=Path, help="output folder of morpho fit-ageing")
    p.add_argument("--evaluation", type=Path, help="output folder of morpho evaluate")
    p.add_argument("--covariates", type=Path, help="CSV with age and sex (joined on scan_id or subject_id)")
    p.add_argument("--structures", nargs="+", default=(),
                   help="structures of the Fig. 6 panel (default: hippocampus, lateral_ventricle, ... when fitted)")
    p.add_argument("--planted", type=Path, default=None,
                   help="known curves to draw in Fig. 6 (CSV: structure, age_years, volume_mm3; "
                        "simulate-cohort's planted_trajectories.csv)")
    p.add_argument("--norms", type=Path, default=None, help="output folder of morpho norms fit (centile charts)")
    p.add_argument("--norm-scores", type=Path, default=None,
                   help="output folder of morpho norms score (scans over the centiles, flags, z profiles)")
    p.add_argument("--title", default="morphometry report", help="page title")
    p.set_defaults(func=run, flags=FLAGS)


def run(args) -> int:
    from morphometry.reports.report import report

    path = report(args.out, volumes=args.volumes, ageing=args.ageing, evaluation=args.evaluation,
                  covariates=args.covariates, structures=tuple(args.structures), planted=args.planted,
                  norms=args.norms, norm_scores=args.norm_scores, title=args.title)
    print(f"report written to {path.resolve()}", file=sys.stderr)
    return 0
