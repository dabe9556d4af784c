"""``morpho norms fit`` and ``morpho norms score``: normative centiles and z-scores per scan."""

from __future__ import annotations

import argparse

FLAGS = {"structures": "--structures", "methods": "--methods", "where": "--where", "n_knots": "--knots",
         "scale_knots": "--scale-knots", "spacing_terms": "--spacing-terms", "site": "--site",
         "harmonise": "--harmonise", "family": "--family", "smoothing": "--smoothing", "centiles": "--centiles",
         "flag_centiles": "--flag-centiles", "outlier_probability": "--outlier-probability",
         "age_column": "--age-column", "sex_column": "--sex-column", "covariates": "--covariates",
         "volumes": "VOLUMES", "bootstrap": "--bootstrap", "model": "--model"}
"""Settings of the Python API (fit_norms, NormsSpec, score_norms) -> the flags that set them."""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "norms", help="normative centiles and z-scores per scan (fit a model, score scans against it)",
        description="Fit normative models of regional volumes (location, scale and skewness on age, with "
                    "sex, slice-spacing and site terms; robust to gross segmentation errors) and score "
                    "scans against them: centiles, z-scores and flags per scan and structure.")
    sub = p.add_subparsers(dest="norms_command", metavar="SUBCOMMAND", required=True)
    fit = sub.add_parser("fit", help="fit the normative model to a volumes table",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                         description="Fit one normative model per structure and method; writes norms.json, "
                                     "summary.csv, centiles.csv, site_effects.csv, fit_outliers.csv and the "
                                     "centile charts (figures/).")
    fit.add_argument("volumes", help="volumes table (.parquet, .csv, .tsv): volumes.parquet of morpho segment, "
                                     "or any table with the structures' columns")
    fit.add_argument("--covariates", default=None,
                     help="table with scan_id (or subject_id [+ session_id]), age (years), sex (M/F) and the "
                          "site column; without it the volumes table's own columns are used")
    fit.add_argument("-o", "--output", required=True, help="output folder (the model)")
    fit.add_argument("--structures", nargs="+", default=["summed"],
                     help="table columns, left+right sums (hippocampus), total_intracranial, or the groups "
                          "'summed' and 'lateral'")
    fit.add_argument("--methods", nargs="+", default=None, help="methods to fit (default: all in the table)")
    fit.add_argument("--where", default=None, help="pandas query selecting the reference scans")
    fit.add_argument("--site", default=None, help="covariate column naming the site or scanner")
    fit.add_argument("--harmonise", choices=["fixed", "combat"], default="fixed",
                     help="site offsets in the model's location (fixed) or ComBat on the volumes before the fit")
    fit.add_argument("--family", choices=["shash", "normal"], default="shash",
                     help="sinh-arcsinh (skewness and tail weight fitted) or normal")
    fit.add_argument("--no-robust", action="store_true",
                     help="leave out the uniform outlier component (gross errors then bend the centiles)")
    fit.add_argument("--knots", type=int, default=10, help="knots of the location spline over the age range")
    fit.add_argument("--scale-knots", type=int, default=5, help="knots of the log-scale spline")
    fit.add_argument("--smoothing", type=float, default=300.0,
                     help="weight of the second-difference penalty on both splines; a negative value "
                          "chooses it by BIC")
    fit.add_argument("--spacing-terms", nargs="*", choices=["x", "y", "z"], default=["x", "y", "z"],
                     help="voxel-spacing axes with a linear term in the location")
    fit.add_argument("--no-sex-term", action="store_true", help="leave out the sex offset")
    fit.add_argument("--centiles", nargs="+", type=float, default=[2.5, 10, 25, 50, 75, 90, 97.5],
                     help="centiles (percent) of the curves")
    fit.add_argument("--flag-centiles", nargs=2, type=float, default=[2.5, 97.5], metavar=("LOW", "HIGH"),
                     help="scans below LOW or above HIGH are flagged")
    fit.add_argument("--outlier-probability", type=float, default=0.5,
                     help="scans more likely than this to be gross errors are flagged")
    fit.add_argument("--bootstrap", type=int, default=0, help="subject-bootstrap replicates for bands of the curves")
    fit.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    fit.add_argument("--age-column", default="age", help="age column (years)")
    fit.add_argument("--sex-column", default="sex", help="sex column")
    fit.add_argument("--no-figures", action="store_true", help="write the tables only")
    fit.set_defaults(func=run_fit, flags=FLAGS)

    score = sub.add_parser("score", help="centiles and z-scores of scans under a fitted model",
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                           description="Score every scan, method and structure of a volumes table against a "
                                       "model folder of morpho norms fit; writes scores.parquet, scores.csv, "
                                       "subjects.csv and the per-subject z profiles (figures/).")
    score.add_argument("volumes", help="volumes table of the scans to score (new patients are fine)")
    score.add_argument("--model", required=True, help="model folder written by morpho norms fit")
    score.add_argument("--covariates", default=None, help="table with age, sex (and the site column) of the scans")
    score.add_argument("-o", "--output", required=True, help="output folder")
    score.add_argument("--profiles", type=int, default=6,
                       help="z-profile charts for this many subjects (most flagged first); 0 = none")
    score.set_defaults(func=run_score, flags=FLAGS)


def run_fit(args) -> int:
    from pathlib import Path

    from morphometry.analysis.ageing_model import SPACING_COLUMNS
    from morphometry.analysis.norms_api import fit_norms

    model = fit_norms(
        args.volumes, args.covariates, structures=tuple(args.structures), methods=args.methods, site=args.site,
        harmonise=args.harmonise, bootstrap=args.bootstrap, seed=args.seed, where=args.where,
        family=args.family, robust=not args.no_robust, n_knots=args.knots, scale_knots=args.scale_knots,
        smoothing=None if args.smoothing < 0 else args.smoothing,
        spacing_terms=tuple(c for c, axis in zip(SPACING_COLUMNS, "xyz") if axis in args.spacing_terms),
        sex_term=not args.no_sex_term, centiles=tuple(args.centiles), flag_centiles=tuple(args.flag_centiles),
        outlier_probability=args.outlier_probability, age_column=args.age_column, sex_column=args.sex_column)
    written = model.write(args.output)
    if not args.no_figures:
        from morphometry.reports.norms_figures import write_centile_figures

        write_centile_figures(Path(args.output) / "figures", written["centiles.csv"])
    summary = written["summary.csv"]
    print(f"fitted {len(model.structures)} structures x {len(model.methods)} methods "
          f"({args.harmonise} site harmonisation{'' if args.site else ', no site column'}) -> {args.output}")
    columns = ["method", "structure", "n_scans", "n_outliers", "skewness_epsilon", "converged"]
    print(summary[columns].to_string(index=False))
    return 0


def run_score(args) -> int:
    from pathlib import Path

    from morphometry.analysis.norms_api import score_norms

    scores = score_norms(args.volumes, args.model, args.covariates)
    scores.write(args.output)
    if args.profiles:
        from morphometry.reports.norms_figures import write_profile_figures

        write_profile_figures(Path(args.output) / "figures", scores.scores, scores.subjects, limit=args.profiles)
    s = scores.scores
    print(f"scored {s['scan_id'].nunique()} scans x {s['structure'].nunique()} structures -> {args.output}")
    print(f"flagged: {int(s['flag_low'].sum())} low, {int(s['flag_high'].sum())} high, "
          f"{int(s['flag_outlier'].sum())} likely gross errors, {int(s['age_outside_range'].sum())} outside the "
          f"fitted ages, {int(s['site_unseen'].sum())} of unseen sites")
    return 0
