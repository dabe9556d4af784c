"""``morpho fit-ageing``: ageing trajectories per structure and method from a volumes table."""

from __future__ import annotations

import argparse

FIGURE_STRUCTURES = ("cerebral_cortex", "hippocampus")
FLAGS = {"structures": "--structures", "methods": "--methods", "where": "--where", "units": "--units",
         "direction": "--direction", "penalty": "--penalty", "n_knots": "--knots",
         "spacing_terms": "--spacing-terms", "reference_spacing_mm": "--reference-spacing",
         "outlier_sd": "--outlier-sd", "age_column": "--age-column", "sex_column": "--sex-column",
         "random_intercept": "--random-intercept", "covariates": "--covariates", "volumes": "VOLUMES",
         "bootstrap": "--bootstrap", "n_replicates": "--bootstrap", "reference_method": "--reference-method"}
"""Settings of the Python API (fit_ageing, AgeingSpec) -> the flags that set them."""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "fit-ageing",
        help="fit ageing trajectories (B-splines + spacing and sex terms) per structure and method",
        description="Fit the ageing model of the SynthSeg+ paper (Sec. 3.4) to a volumes table joined "
                    "with covariates (age in years, sex), with subject-bootstrap bands, method "
                    "differences, outliers and the Fig. 6 / S5 / S6 figures.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("volumes",
                   help="volumes table (.parquet, .csv, .tsv or .txt): volumes.parquet from morpho segment, "
                        "or any table with the columns of the structures to fit (without a method "
                        "column it is one method, 'volumes'; without scan_id, rows are numbered)")
    p.add_argument("--covariates", default=None,
                   help="table (.csv, .tsv, .parquet) with scan_id (or subject_id [+ session_id]), age "
                        "(years) and sex (M/F, male/female, or 1 = male / 0 = female); without it, the "
                        "volumes table's own age and sex columns are used")
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument("--structures", nargs="+", default=["summed"],
                   help="structures: table columns (left_hippocampus), left+right sums (hippocampus), "
                        "total_intracranial, or the groups 'summed' (left+right sums and midline "
                        "structures) and 'lateral' (the 32 columns); groups add total_intracranial in mm3")
    p.add_argument("--methods", nargs="+", default=None, help="methods to fit (default: all in the table)")
    p.add_argument("--where", default=None,
                   help="pandas query selecting scans, e.g. \"slice_spacing_mm > 6.5\" (Fig. S6)")
    p.add_argument("--units", choices=["mm3", "fraction-tiv"], default="mm3",
                   help="fit volumes in mm^3 or as fractions of total_intracranial")
    p.add_argument("--direction", action="append", default=None, metavar="[STRUCTURE=]DIR",
                   help="monotonicity: decreasing | increasing | none | auto (sign of the Spearman "
                        "correlation with age); STRUCTURE=DIR overrides one structure; repeatable "
                        "(default: auto)")
    p.add_argument("--penalty", type=float, default=0.1,
                   help="lambda: weight of wrong-sign spline-coefficient differences, in volume SDs "
                        "(dimensionless; 0 = plain least squares)")
    p.add_argument("--knots", type=int, default=10, help="equally spaced knots over the age range")
    p.add_argument("--spacing-terms", nargs="*", choices=["x", "y", "z"], default=["x", "y", "z"],
                   help="voxel-spacing axes with a linear term (none: give the option without values)")
    p.add_argument("--no-sex-term", action="store_true", help="leave out the sex offset")
    p.add_argument("--random-intercept", action="store_true",
                   help="a random intercept per subject for repeated scans (statsmodels MixedLM): "
                        "generalised least squares and model-based standard errors instead of "
                        "cluster-robust ones")
    p.add_argument("--reference-spacing", nargs="+", type=float, default=None, metavar="MM",
                   help="spacing (mm) per spacing term at which trajectories are drawn "
                        "(default: the medians of the fitted scans)")
    p.add_argument("--bootstrap", type=int, default=200,
                   help="bootstrap replicates (subjects resampled) for bands; 0 = none")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    p.add_argument("--reference-method", default=None,
                   help="method that others are compared to (default: synthseg+ if fitted, else the first)")
    p.add_argument("--outlier-sd", type=float, default=3.0, help="outlier threshold in robust SDs")
    p.add_argument("--age-column", default="age", help="age column (years) of the covariates (or of the volumes table)")
    p.add_argument("--sex-column", default="sex", help="sex column of the covariates (or of the volumes table)")
    p.add_argument("--figure-structures", nargs="+", default=None,
                   help="structures of the Fig. 6 / S6 figure (default: cerebral_cortex and "
                        "hippocampus when fitted, else the first two)")
    p.add_argument("--no-figures", action="store_true", help="write the tables only")
    p.set_defaults(func=run, flags=FLAGS)


def _directions(values) -> tuple[str, tuple[tuple[str, str], ...]]:
    default, overrides = "auto", []
    for value in values or []:
        if "=" in value:
            name, _, direction = value.partition("=")
            overrides.append((name.strip(), direction.strip()))
        else:
            default = value.strip()
    return default, tuple(overrides)


def run(args) -> int:
    from morphometry.analysis.ageing_api import fit_ageing
    from morphometry.analysis.ageing_model import SPACING_COLUMNS

    direction, overrides = _directions(args.direction)
    fit = fit_ageing(
        args.volumes, args.covariates, structures=tuple(args.structures), methods=args.methods,
        units=args.units.replace("-", "_"), where=args.where, n_knots=args.knots, direction=direction,
        directions=overrides, penalty=args.penalty,
        spacing_terms=tuple(c for c, axis in zip(SPACING_COLUMNS, "xyz") if axis in args.spacing_terms),
        sex_term=not args.no_sex_term, reference_spacing_mm=args.reference_spacing,
        outlier_sd=args.outlier_sd, age_column=args.age_column, sex_column=args.sex_column,
        random_intercept=args.random_intercept)
    reference = fit.reference_method(args.reference_method)  # checked before the bootstrap runs
    if args.bootstrap:
        fit = fit.with_bootstrap(args.bootstrap, args.seed)
    written = fit.write(args.output, reference_method=reference)
    if not args.no_figures:
        from pathlib import Path

        from morphometry.reports.ageing_figures import write_ageing_figures

        structures = _figure_structures(args.figure_structures, fit.structures)
        write_ageing_figures(Path(args.output) / "figures", written["trajectories.parquet"],
                             written["adjusted_volumes.parquet"], structures=structures,
                             s5_method=reference, subset_label=f"subset: {args.where}" if args.where else None)
    summary = written["summary.csv"]
    counts = summary.pivot(index="structure", columns="method", values="n_outliers").loc[list(fit.structures)]
    print(f"fitted {len(fit.structures)} structures x {len(fit.methods)} methods on "
          f"{len(fit.subjects)} subjects -> {args.output}")
    print("outliers (|residual| > %g robust SD) per structure and method:" % args.outlier_sd)
    print(counts[list(fit.methods)].to_string())
    return 0


def _figure_structures(requested, fitted) -> list[str]:
    from morphometry.errors import InputError

    if requested:
        absent = [s for s in requested if s not in fitted]
        if absent:
            raise InputError(f"--figure-structures: {', '.join(absent)} not fitted (see --structures)")
        return list(requested)
    chosen = [s for s in FIGURE_STRUCTURES if s in fitted]
    return chosen or list(fitted[:2])
