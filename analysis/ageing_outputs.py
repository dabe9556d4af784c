"""Files written by ``morpho fit-ageing`` (all atomic: temp file + rename).

- ``coefficients.csv``: one row per (method, structure, term): estimate, cluster-robust SE, 95%
  t interval, and bootstrap SE / percentile interval when bootstrapped.
- ``trajectories.parquet``: trajectories on a 1-year grid (reference spacing, sexes averaged)
  and differences to the reference method, with pointwise bootstrap bands.
- ``summary.csv``: one row per (method, structure): n, residual SD, R^2, peak age, annual %
  change, outlier count (+ bootstrap intervals of the change metrics).
- ``outliers.csv``: scans with |residual| above ``outlier_sd`` robust SDs.
- ``adjusted_volumes.parquet``: every scan's volume, fitted value, covariate-adjusted volume and
  residual (what the figures scatter).
- ``ageing.json``: settings, seed, knots, reference covariates, inputs and versions.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd

from morphometry.analysis.ageing import AgeingBootstrap, AgeingFit
from morphometry.tables import atomic_write, write_parquet

OUTPUT_FILES = ("coefficients.csv", "trajectories.parquet", "summary.csv", "outliers.csv",
                "adjusted_volumes.parquet", "ageing.json")


def coefficients_table(fit: AgeingFit, boot: AgeingBootstrap | None) -> pd.DataFrame:
    table = fit.coefficients()
    if boot is not None:
        table = table.merge(boot.coefficient_intervals(), on=["method", "structure", "term"], how="left")
    return table


def summary_table(fit: AgeingFit, boot: AgeingBootstrap | None) -> pd.DataFrame:
    table = fit.summary()
    table["n_bootstrap"] = boot.n_replicates if boot is not None else 0
    if boot is not None:
        table = table.merge(boot.change_intervals(), on=["method", "structure"], how="left")
    return table


def provenance(fit: AgeingFit, boot: AgeingBootstrap | None, seed: int | None, inputs: dict) -> dict:
    from morphometry import __version__

    return {
        "morphometry_version": __version__,
        "spec": dataclasses.asdict(fit.spec),
        "structures": list(fit.structures),
        "methods": list(fit.methods),
        "terms": list(fit.terms),
        "knots_years": fit.basis.knots.tolist(),
        "n_basis": fit.basis.n_basis,
        "reference_spacing_mm": list(fit.reference_spacing_mm),
        "reference_sex": "average of male and female (male = 1/2)",
        "units": fit.spec.units_label,
        "n_bootstrap": boot.n_replicates if boot is not None else 0,
        "bootstrap_not_converged": boot.n_not_converged if boot is not None else 0,
        "seed": seed,
        "inputs": inputs,
    }


def write_ageing_outputs(fit: AgeingFit, boot: AgeingBootstrap | None, out_dir: Path, *,
                         seed: int | None, inputs: dict, reference_method: str | None = None) -> dict:
    """Write every output file into ``out_dir``; return {name: DataFrame or dict} as written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = provenance(fit, boot, seed, inputs)
    source = boot if boot is not None else fit
    tables = {
        "coefficients.csv": coefficients_table(fit, boot),
        "trajectories.parquet": source.trajectories(reference_method),
        "summary.csv": summary_table(fit, boot),
        "outliers.csv": fit.outliers(),
        "adjusted_volumes.parquet": fit.residuals(),
    }
    for name, table in tables.items():
        path = out_dir / name
        if name.endswith(".parquet"):
            write_parquet(table, path, meta)
        else:
            atomic_write(path, lambda tmp, t=table: t.to_csv(tmp, index=False))
    atomic_write(out_dir / "ageing.json",
                 lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=2, default=_json_default)))
    return {**tables, "ageing.json": meta}


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
