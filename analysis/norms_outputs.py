"""Files of ``morpho norms fit`` / ``NormsModel.write`` and ``morpho norms score`` / ``NormsScores.write``
(all atomic: temp file + rename).

Model folder:
- ``norms.json``: settings, bases (knots in years), reference spacing (mm), sites, every
  parameter of every (method, structure) fit (standardised units: volume = center + spread x),
  ComBat parameters, bootstrap size and seed, inputs and versions. ``NormsModel.read`` needs only it
  (and ``centiles.csv`` for the bands, ``fit_outliers.csv`` for the training outliers).
- ``summary.csv``: one row per (method, structure): scans, outliers, skewness, tail weight, smoothing,
  log-likelihood, convergence.
- ``centiles.csv``: centile curves (mm^3) on the 1-year age grid per sex at the reference spacing and
  the average site, with bootstrap bands (lower, upper).
- ``site_effects.csv``: site offsets (mm^3) per (method, structure, site).
- ``fit_outliers.csv``: training scans taken as gross errors (posterior probability above the threshold).

Scores folder: ``scores.parquet`` and ``scores.csv`` (one row per scan, method and structure) and
``subjects.csv`` (per subject and method).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd

from morphometry.analysis.norms_harmonise import ComBatParams
from morphometry.analysis.norms_model import NormsDesign, NormsSpec, StructureNorms
from morphometry.analysis.splines import SplineBasis
from morphometry.errors import InputError
from morphometry.tables import atomic_write, read_table, write_parquet

MODEL_FILE = "norms.json"
FORMAT = "morphometry norms model 1"


def model_document(model) -> dict:
    from morphometry import __version__

    d = model.design
    return {
        "format": FORMAT,
        "morphometry_version": __version__,
        "spec": dataclasses.asdict(model.spec),
        "structures": list(model.structures),
        "methods": list(model.methods),
        "sites": list(model.sites),
        "design": {"age_min": d.basis.age_min, "age_max": d.basis.age_max, "n_knots": d.basis.n_knots,
                   "scale_knots": d.scale_basis.n_knots, "spacing_terms": list(d.spacing_terms),
                   "reference_spacing_mm": list(d.reference_spacing_mm), "sex_term": d.sex_term,
                   "scale_spacing": d.scale_spacing, "sites": list(d.sites),
                   "location_terms": list(d.location_terms), "scale_terms": list(d.scale_terms)},
        "units": "volume = center + spread * standardised value (mm^3); family SHASH (norms_shash)",
        "fits": [f.to_json() for f in model.fits.values()],
        "combat": {m: p.to_json() for m, p in model.combat.items()},
        "n_bootstrap": model.n_bootstrap,
        "seed": model.seed,
        "inputs": model.inputs,
    }


def _csv(path: Path, table: pd.DataFrame) -> None:
    atomic_write(path, lambda tmp: table.to_csv(tmp, index=False))


def write_model(model, out_dir: Path) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = model_document(model)
    tables = {"summary.csv": model.summary(), "centiles.csv": model.curves(),
              "site_effects.csv": model.site_effects(), "fit_outliers.csv": model.fit_outliers}
    for name, table in tables.items():
        _csv(out_dir / name, table)
    text = json.dumps(doc, indent=1)
    atomic_write(out_dir / MODEL_FILE, lambda tmp: tmp.write_text(text))
    return {**tables, MODEL_FILE: doc}


def read_model(folder: Path) -> dict:
    """The fields of the ``NormsModel`` written into ``folder``, by name."""
    path = folder / MODEL_FILE
    if not path.is_file():
        raise InputError(f"{folder}: no {MODEL_FILE} (is this a folder written by morpho norms fit?)", setting="model")
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read ({type(exc).__name__}: {exc})", setting="model") from None
    if doc.get("format") != FORMAT:
        raise InputError(f"{path}: not a norms model ({FORMAT!r} expected)", setting="model")
    spec_doc = {k: tuple(v) if isinstance(v, list) else v for k, v in doc["spec"].items()}
    spec = NormsSpec(**spec_doc)
    g = doc["design"]
    basis = SplineBasis(g["age_min"], g["age_max"], g["n_knots"])
    design = NormsDesign(basis, SplineBasis(g["age_min"], g["age_max"], g["scale_knots"]), tuple(g["spacing_terms"]),
                         tuple(g["reference_spacing_mm"]), g["sex_term"], g["scale_spacing"], tuple(g["sites"]))
    fits = {(f["method"], f["structure"]): StructureNorms.from_json(f) for f in doc["fits"]}
    combat = {m: ComBatParams.from_json(p) for m, p in doc["combat"].items()}
    bands = None
    if doc["n_bootstrap"] and (folder / "centiles.csv").is_file():
        curves = read_table(folder / "centiles.csv")
        bands = curves[["method", "structure", "sex", "age_years", "centile", "lower", "upper"]]
    outliers = read_table(folder / "fit_outliers.csv") if (folder / "fit_outliers.csv").is_file() else None
    return {"spec": spec, "design": design, "structures": tuple(doc["structures"]), "methods": tuple(doc["methods"]),
            "sites": tuple(doc["sites"]), "fits": fits, "combat": combat, "bands": bands, "fit_outliers": outliers,
            "inputs": doc.get("inputs", {}), "n_bootstrap": doc["n_bootstrap"], "seed": doc["seed"]}


def write_scores(scores, out_dir: Path) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    write_parquet(scores.scores, out_dir / "scores.parquet", {"source": "morpho norms score"})
    _csv(out_dir / "scores.csv", scores.scores)
    _csv(out_dir / "subjects.csv", scores.subjects)
    return {"scores.parquet": scores.scores, "subjects.csv": scores.subjects}
