"""``morpho fit-ageing``: ageing trajectories per structure and method from a volumes table."""

from __future__ import annotations

import argparse

FIGURE_STRUCTURES = ("cerebral_cortex", "hippocampus")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "fit-ageing",
        help="fit ageing trajectories (B-splines + spacing and sex terms) per structure and method",
        description="Fit the ageing model of the SynthSeg+ paper (Sec. 3.4) to a volumes table joined "
                    "with covariates (age in years, sex), with subject-bootstrap bands, method "
                    "differences, outliers and the Fig. 6 / S5 / S6 figures.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("volumes", help="volumes table (volumes.parquet or .csv from morpho segment)")
    p.add_argument("--covariates", required=True,
                   help="CSV with scan_id (or subject_id [+ session_id]), age (years) and sex "
                        "(M/F, male/female, or 1 = male / 0 = female)")
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
    p.add_argument("--reference-spacing", nargs="+", type=float, default=None, metavar="MM",
                   help="spacing (mm) per spacing term at which trajectories are drawn "
                        "(default: the medians of the fitted scans)")
    p.add_argument("--bootstrap", type=int, default=200,
                   help="bootstrap replicates (subjects resampled) for bands; 0 = none")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    p.add_argument("--reference-method", default=None,
                   help="method that others are compared to (default: synthseg+ if fitted, else the first)")
    p.add_argument("--outlier-sd", type=float, default=3.0, help="outlier threshold in robust SDs")
    p.add_argument("--age-column", default="age", help="age column (years) of the covariates")
    p.add_argument("--sex-column", default="sex", help="sex column of the covariates")
    p.add_argument("--figure-structures", nargs="+", default=None,
                   help="structures of the Fig. 6 / S6 figure (default: cerebral_cortex and "
                        "hippocampus when fitted, else the first two)")
    p.add_argument("--no-figures", action="store_true", help="write the tables only")
    p.set_defaults(func=run)


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
    import numpy as np

    from morphometry.analysis.ageing import SPACING_COLUMNS, AgeingModel, AgeingSpec
    from morphometry.analysis.ageing_outputs import write_ageing_outputs
    from morphometry.errors import InputError
    from morphometry.tables import join_covariates, read_table, read_volumes

    direction, overrides = _directions(args.direction)
    spacing = tuple(c for c, axis in zip(SPACING_COLUMNS, "xyz") if axis in args.spacing_terms)
    spec = AgeingSpec(
        structures=tuple(args.structures), methods=tuple(args.methods) if args.methods else None,
        units=args.units.replace("-", "_"), where=args.where, n_knots=args.knots, direction=direction,
        directions=overrides, penalty=args.penalty, spacing_terms=spacing, sex_term=not args.no_sex_term,
        reference_spacing_mm=tuple(args.reference_spacing) if args.reference_spacing else None,
        outlier_sd=args.outlier_sd, age_column=args.age_column, sex_column=args.sex_column)
    if args.bootstrap < 0 or args.bootstrap == 1:
        raise InputError(f"--bootstrap must be 0 or at least 2, not {args.bootstrap}")
    volumes = read_volumes(args.volumes)
    covariates = read_table(args.covariates)
    needed = [args.age_column] + ([] if args.no_sex_term else [args.sex_column])
    missing = [c for c in needed if c not in covariates.columns]
    if missing:
        raise InputError(f"{args.covariates}: missing columns: {', '.join(missing)}")
    table = join_covariates(volumes, covariates, source=str(args.covariates))
    no_cov = table[args.age_column].isna()
    if no_cov.any() and not args.where:
        raise InputError(f"{args.covariates}: no covariates for {int(no_cov.sum())} scans "
                         f"(e.g. {table.loc[no_cov, 'scan_id'].iloc[0]}); add them or drop those scans "
                         "with --where")
    fit = AgeingModel(spec).fit(table, source=f"{args.volumes} + {args.covariates}")
    reference = fit.reference_method(args.reference_method)
    boot = fit.bootstrap(args.bootstrap, np.random.default_rng(args.seed)) if args.bootstrap else None
    written = write_ageing_outputs(fit, boot, args.output, seed=args.seed if boot else None,
                                   inputs={"volumes": str(args.volumes), "covariates": str(args.covariates)},
                                   reference_method=reference)
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
