"""``morpho evaluate`` and ``morpho silver``: argument parsing only; the work is imported lazily."""

from __future__ import annotations

import sys
from pathlib import Path

from morphometry.errors import DataError, InputError


def register(subparsers) -> None:
    _register_evaluate(subparsers)
    _register_silver(subparsers)


def _register_evaluate(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate", help="Dice and surface distances of segmentations against silver standards",
        description="Pair predictions with reference label maps by scan_id and compute, per scan x "
                    "method x structure, Dice, the mean symmetric surface distance (MSD, mm) and the "
                    "95th percentile Hausdorff distance (HD95, mm); summarise per method x QC group x "
                    "structure and draw Fig. 5 style box plots.")
    p.add_argument("--pred", required=True, metavar="DIR|CSV",
                   help="`morpho segment` output folder (seg/<scan_id>_<method>.nii.gz), a folder of such "
                        "files, or a CSV with scan_id, path, method")
    p.add_argument("--reference", required=True, metavar="DIR|CSV",
                   help="folder of <scan_id>.nii.gz/.nii/.mgz label maps, or a CSV with scan_id, path")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="output folder")
    p.add_argument("--pred-method", metavar="NAME",
                   help="method name of a --pred folder whose files are named <scan_id> only")
    p.add_argument("--grid", choices=("reference", "prediction"), default="reference",
                   help="voxel grid the metrics are computed on; the other map is resampled into it by the "
                        "affines with nearest neighbour (default: reference)")
    p.add_argument("--msd", choices=("mean_of_means", "pooled"), default="mean_of_means",
                   help="MSD definition: mean of the two directed mean distances, or the mean of both "
                        "distance sets pooled as MedPy's assd (default: mean_of_means)")
    p.add_argument("--labels", nargs="+", metavar="L", default=["synthseg"],
                   help="structures: 'synthseg' (the 32 SynthSeg 2.0 structures), 'present' (every non-zero "
                        "value in either map) or label values / snake_case names (default: synthseg)")
    qc = p.add_mutually_exclusive_group()
    qc.add_argument("--qc", metavar="CSV", help="QC groups: CSV with scan_id and qc_group")
    qc.add_argument("--qc-from", metavar="METHOD",
                    help="derive QC groups from this method's mean Dice per scan (see --qc-thresholds)")
    p.add_argument("--qc-thresholds", nargs=2, type=float, default=(0.65, 0.80), metavar=("LOW", "HIGH"),
                   help="with --qc-from: mean Dice < LOW is big_fail, < HIGH small_fail, else pass "
                        "(default: 0.65 0.80)")
    p.add_argument("--jobs", type=int, default=1, help="processes evaluating scans in parallel (default: 1)")
    p.add_argument("--no-figures", action="store_true", help="skip the box plots")
    p.set_defaults(func=run_evaluate)


def _register_silver(subparsers) -> None:
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


def run_evaluate(args) -> int:
    from analysis import evaluation as ev
    from morphometry.tables import atomic_write, write_parquet

    config = ev.EvaluationConfig(grid=args.grid, msd_mode=args.msd, labels=ev.parse_label_selection(args.labels))
    if args.jobs < 1:
        raise InputError(f"--jobs must be at least 1 (got {args.jobs})")
    rule = ev.QcRule(args.qc_from, *args.qc_thresholds) if args.qc_from else None
    qc_table = ev.read_qc_table(args.qc) if args.qc else None
    preds = ev.find_predictions(args.pred, args.pred_method)
    refs = ev.find_references(args.reference)
    pairing = ev.pair_by_scan_id(preds, refs, args.pred, args.reference)
    _warn_unpaired(pairing)
    out = Path(args.output)
    table, failures = ev.evaluate_pairs(pairing, config, args.jobs, _progress(len(pairing.pairs)))
    if table.empty:
        raise DataError(f"no scan could be evaluated; first error: {failures['error'].iloc[0]}")
    scans = ev.per_scan(table)
    qc = ev.qc_from_rule(scans, rule) if rule else qc_table
    source = (f"mean Dice of {rule.method}: < {rule.low} big_fail, < {rule.high} small_fail, else pass"
              if rule else f"table {args.qc}" if args.qc else "none (one group: all)")
    table, scans = ev.assign_groups(table, qc), ev.assign_groups(scans, qc)
    summary = ev.summarise(table, scans)
    meta = ev.metadata(config, source)
    for name, frame in (("metrics", table), ("summary", summary), ("scans", scans)):
        write_parquet(frame, out / f"{name}.parquet", meta)
        atomic_write(out / f"{name}.csv", lambda tmp, f=frame: f.to_csv(tmp, index=False))
    for name, frame in (("failures", failures), ("unpaired", pairing.unpaired_table())):
        path = out / f"{name}.csv"
        if len(frame):
            atomic_write(path, lambda tmp, f=frame: f.to_csv(tmp, index=False))
        else:
            path.unlink(missing_ok=True)
    if not args.no_figures:
        from reports.evaluation_figures import fig5_boxplots

        fig5_boxplots(scans, out / "figures" / "fig5_dice_msd")
    print(f"evaluated {scans.shape[0]} prediction(s) of {scans['scan_id'].nunique()} scan(s) -> {out}",
          file=sys.stderr)
    resampled = scans.merge(table[["scan_id", "method", "resampled"]].drop_duplicates(), on=["scan_id", "method"])
    for side, count in resampled.loc[resampled["resampled"] != "none", "resampled"].value_counts().items():
        print(f"note: {count} pair(s) on different grids: the {side} was resampled onto the {args.grid} grid "
              "(nearest neighbour)", file=sys.stderr)
    for status, count in table.loc[table["status"] != "ok", "status"].value_counts().items():
        print(f"note: {count} structure(s) {status.replace('_', ' ')}: Dice 0, distances NaN "
              "(status column of metrics.csv)", file=sys.stderr)
    for row in failures.itertuples():
        print(f"failed: {row.scan_id} {row.method}: {row.error}", file=sys.stderr)
    return 1 if len(failures) else 0


def _warn_unpaired(pairing) -> None:
    for items, what in ((pairing.predictions_without_reference, "prediction(s) without a reference"),
                        (pairing.references_without_prediction, "reference(s) without a prediction")):
        if items:
            shown = ", ".join(sorted({i.scan_id for i in items})[:3])
            print(f"warning: {len(items)} {what} (e.g. {shown}); listed in unpaired.csv", file=sys.stderr)


def _progress(total: int):
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    bar = tqdm(total=total, unit="scan", file=sys.stderr)
    return bar.update


def run_silver(args) -> int:
    import numpy as np
    import pandas as pd

    from analysis import silver
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
    from analysis import silver
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
