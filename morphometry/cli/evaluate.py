"""``morpho evaluate``: Dice and surface distances against silver standards."""

from __future__ import annotations

from morphometry.cli import cluster_options


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate", help="Dice and surface distances of segmentations against silver standards",
        description="Pair predictions with reference label maps by scan_id and compute, per scan x "
                    "method x structure, Dice, the mean symmetric surface distance (MSD, mm) and the "
                    "95th percentile Hausdorff distance (HD95, mm); summarise per method x QC group x "
                    "structure, compare methods scan by scan (Wilcoxon signed-rank tests with a "
                    "multiple-comparison correction) and draw Fig. 5 style box plots.")
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
    p.add_argument("--compare-to", default="auto", metavar="METHOD",
                   help="paired method comparisons (comparisons.csv): every method against METHOD, 'all' for "
                        "every pair, or 'auto': against synthseg+ when it was evaluated, else every pair "
                        "(default: auto)")
    p.add_argument("--correction", default="holm", metavar="NAME",
                   help="multiple-comparison correction of the Wilcoxon p-values within each metric: a "
                        "statsmodels multipletests method (holm, bonferroni, holm-sidak, sidak, simes-hochberg, "
                        "hommel, fdr_bh, fdr_by; default: holm)")
    p.add_argument("--jobs", type=int, default=1, help="processes evaluating scans in parallel (default: 1)")
    p.add_argument("--no-figures", action="store_true", help="skip the box plots")
    cluster_options.add_arguments(p, "reference scan")
    p.set_defaults(func=run_evaluate, flags={**FLAGS, **cluster_options.FLAGS})


FLAGS = {"predictions": "--pred", "references": "--reference", "pred_method": "--pred-method", "grid": "--grid",
         "msd": "--msd", "labels": "--labels", "qc": "--qc", "qc_from": "--qc-from",
         "qc_thresholds": "--qc-thresholds", "compare_to": "--compare-to", "correction": "--correction",
         "jobs": "--jobs"}


def run_evaluate(args) -> int:
    from morphometry.analysis.evaluation import evaluate
    from morphometry.progress import log

    result = evaluate(args.pred, args.reference, grid=args.grid, msd=args.msd, labels=args.labels, qc=args.qc,
                      qc_from=args.qc_from, qc_thresholds=tuple(args.qc_thresholds), pred_method=args.pred_method,
                      compare_to=args.compare_to, correction=args.correction, jobs=args.jobs,
                      cluster=cluster_options.spec_from_args(args))
    out = result.write(args.output)
    if not args.no_figures:
        from morphometry.reports.evaluation_figures import fig5_boxplots

        fig5_boxplots(result.scans, out / "figures" / "fig5_dice_msd")
    log.info(f"evaluated {len(result.scans)} prediction(s) of {result.scans['scan_id'].nunique()} scan(s) -> {out}")
    return 0 if result.ok else 1
