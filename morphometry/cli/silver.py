"""``morpho silver``: silver standards by rigid propagation of a session's reference labels."""

from __future__ import annotations

import sys
from pathlib import Path

from morphometry.errors import InputError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "silver", help="propagate a session's reference labels to its other scans (rigid registration)",
        description="For each session, register the reference image rigidly to every other scan (SimpleITK: "
                    "Mattes mutual information, multi-resolution, centred initialisation) and resample the "
                    "reference labels onto the scan with nearest neighbour. Writes silver/<scan_id>.nii.gz, "
                    "transforms/<scan_id>.tfm, registration.csv (parameters, final metric) and silver.csv "
                    "(a manifest for `morpho evaluate --reference`).")
    p.add_argument("scans", nargs="*", metavar="SCAN", help="scans of one session (with --reference-image/-labels)")
    p.add_argument("--sessions", metavar="CSV",
                   help="sessions manifest: session_id, scan_id, path, labels (labels on the reference row)")
    p.add_argument("--reference-image", metavar="IMAGE", help="reference image of a single session")
    p.add_argument("--reference-labels", metavar="LABELS", help="label map of the reference image")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="output folder")
    p.add_argument("--init", choices=("moments", "geometry", "world"), default="moments",
                   help="initial alignment: centres of mass, image centres, or scanner coordinates "
                        "(default: moments)")
    p.add_argument("--sampling", type=float, default=0.25,
                   help="fraction of the scan's voxels sampled by the metric per level (default: 0.25)")
    p.add_argument("--threads", type=int, default=0, help="SimpleITK threads (default: all cores)")
    p.add_argument("--seed", type=int, default=0, help="seed of the metric sampling (default: 0)")
    p.set_defaults(func=run_silver)


def run_silver(args) -> int:
    import numpy as np
    import pandas as pd

    from morphometry.analysis import silver
    from morphometry.tables import atomic_write

    sessions = _sessions(args)
    config = silver.RegistrationConfig(init=args.init, sampling_fraction=args.sampling, threads=args.threads)
    rng = np.random.default_rng(args.seed)
    out = Path(args.output)
    rows, failures = [], []
    for session in sessions:
        done, failed = silver.propagate_session(session, out, config, rng)
        rows += done
        failures += failed
    if rows:
        report = pd.DataFrame(rows)
        atomic_write(out / "registration.csv", lambda tmp: report.to_csv(tmp, index=False))
        manifest = report[["scan_id", "silver_path"]].rename(columns={"silver_path": "path"})
        atomic_write(out / "silver.csv", lambda tmp: manifest.to_csv(tmp, index=False))
    if failures:
        table = pd.DataFrame(failures)
        atomic_write(out / "failures.csv", lambda tmp: table.to_csv(tmp, index=False))
        for row in failures:
            print(f"failed: {row['scan_id']}: {row['error']}", file=sys.stderr)
    print(f"propagated labels to {len(rows)} scan(s) of {len(sessions)} session(s) -> {out}", file=sys.stderr)
    return 1 if failures else 0


def _sessions(args) -> list:
    from morphometry.analysis import silver
    from morphometry.io import strip_image_suffix

    if args.sessions:
        if args.scans or args.reference_image or args.reference_labels:
            raise InputError("give either --sessions CSV or SCAN... with --reference-image/--reference-labels")
        return silver.read_sessions(args.sessions)
    if not (args.scans and args.reference_image and args.reference_labels):
        raise InputError("give --sessions CSV, or SCAN... with --reference-image and --reference-labels")
    reference = Path(args.reference_image)
    scans = tuple((strip_image_suffix(Path(s).name), Path(s)) for s in args.scans)
    ids = [scan_id for scan_id, _ in scans]
    if len(set(ids)) != len(ids):
        raise InputError(f"two scans share the scan_id {next(i for i in ids if ids.count(i) > 1)}")
    return [silver.Session("session", strip_image_suffix(reference.name), reference,
                           Path(args.reference_labels), scans)]
