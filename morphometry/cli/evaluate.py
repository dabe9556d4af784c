"""``morpho evaluate``: Dice and surface distances against silver standards."""

from __future__ import annotations

import sys
from pathlib import Path

from morphometry.errors import DataError, InputError


def register(subparsers) -> None:
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


def run_evaluate(args) -> int:
    from morphometry.analysis import evaluation as ev
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
        from morphometry.reports.evaluation_figures import fig5_boxplots

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
