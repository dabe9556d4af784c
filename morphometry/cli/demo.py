"""``morpho demo``: simulate, segment, evaluate, fit ageing and report, out of the box."""

from __future__ import annotations

from pathlib import Path

FLAGS = {"out_dir": "-o", "models": "--models"}


def register(sub) -> None:
    from morphometry.demo import FULL, QUICK

    p = sub.add_parser("demo", help="simulate, segment, evaluate, fit ageing and report, out of the box",
                       description="Simulate a cohort with planted ageing on the embedded anatomy, segment it "
                                   "with the shipped starter models (every method they support), evaluate against "
                                   "the truth, fit ageing to the segmented and the true volumes, and write "
                                   "OUT/report.html with the planted curves drawn over the recovered ones. "
                                   "OUT/timings.json has the seconds of every stage.")
    p.add_argument("-o", "--out", type=Path, default=Path("morpho-demo"), help="output folder (default: morpho-demo)")
    p.add_argument("--quick", action="store_true",
                   help=f"a small cohort ({QUICK.subjects} subjects, {QUICK.bootstrap} bootstrap replicates) "
                        f"instead of {FULL.subjects} subjects")
    p.add_argument("--models", type=Path, default="starter", help="model bundle (default: the shipped starter bundle)")
    p.add_argument("--seed", type=int, default=0, help="seed of the simulation and the bootstrap (default: 0)")
    p.set_defaults(func=run, flags=FLAGS)


def run(args) -> int:
    from morphometry.demo import run_demo

    result = run_demo(args.out, quick=args.quick, models=args.models, seed=args.seed)
    print(f"report: {result.report.resolve()}")
    return 0
