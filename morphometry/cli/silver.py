"""``morpho silver``: silver standards by rigid propagation of a session's reference labels."""

from __future__ import annotations

from morphometry.cli import cluster_options


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
    cluster_options.add_arguments(p)
    p.set_defaults(func=run_silver, flags={**FLAGS, **cluster_options.FLAGS})


FLAGS = {"sessions": "--sessions", "scans": "SCAN", "reference_image": "--reference-image",
         "reference_labels": "--reference-labels", "init": "--init", "sampling": "--sampling",
         "threads": "--threads", "seed": "--seed"}


def run_silver(args) -> int:
    from morphometry.analysis.silver import silver
    from morphometry.progress import log

    result = silver(args.output, sessions=args.sessions, scans=args.scans, reference_image=args.reference_image,
                    reference_labels=args.reference_labels, init=args.init, sampling=args.sampling,
                    threads=args.threads, seed=args.seed, cluster=cluster_options.spec_from_args(args))
    log.info(f"propagated labels to {len(result.registrations)} scan(s) of {result.n_sessions} session(s) -> "
             f"{args.output}")
    return 0 if result.ok else 1
