"""Files written by ``morpho fit-ageing`` and ``AgeingFit.write`` (all atomic: temp file + rename).

- ``coefficients.csv``: one row per (method, structure, term): estimate, SE (cluster-robust, or
  MixedLM's with a random intercept), 95% t interval, and bootstrap SE / percentile interval
  when bootstrapped.
- ``trajectories.parquet``: trajectories on a 1-year grid (reference spacing, sexes averaged)
  and differences to the reference method, with pointwise bootstrap bands.
- ``summary.csv``: one row per (method, structure): n, residual SD, R^2, peak age, annual %
  change, outlier count (+ subject and scan SDs with a random intercept, bootstrap intervals of
  the change metrics).
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

from morphometry.tables import atomic_write, write_parquet

OUTPUT_FILES = ("coefficients.csv", "trajectories.parquet", "summary.csv", "outliers.csv",
                "adjusted_volumes.parquet", "ageing.json")


def provenance(fit) -> dict:
    """The content of ``ageing.json`` for an :class:`~morphometry.analysis.ageing_model.AgeingFit`."""
    from morphometry import __version__

    boot = fit.bootstrap_result
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
        "seed": boot.seed if boot is not None else None,
        "inputs": fit.inputs,
    }


def write_ageing_outputs(fit, out_dir: Path, *, reference_method: str | None = None) -> dict:
    """Write every output file of ``fit`` (with its attached bootstrap, if any) into ``out_dir``;
    return {name: DataFrame or dict} as written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = provenance(fit)
    tables = {
        "coefficients.csv": fit.coefficients(),
        "trajectories.parquet": fit.trajectories(reference_method),
        "summary.csv": fit.summary(),
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
