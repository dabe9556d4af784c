"""The VolumesTable: one row per (scan_id, method) with regional volumes in mm^3.

Schema (DESIGN.md "Tables"): identity columns, acquisition columns read from the header after
RAS alignment, one float column per structure (mm^3, stable snake_case names from
:mod:`morphometry.labels`), ``total_intracranial``, then optional ``qc_*`` scores and parcel
volumes. Written as Parquet (label table and versions in its metadata) and CSV.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from morphometry.atomic import atomic_write
from morphometry.errors import InputError
from morphometry.labels import SEGMENTATION_LABELS, STRUCTURES, TOTAL_INTRACRANIAL

ID_COLUMNS = ("scan_id", "subject_id", "session_id", "path", "method", "model_id")
ACQUISITION_COLUMNS = (
    "spacing_x_mm",
    "spacing_y_mm",
    "spacing_z_mm",
    "slice_spacing_mm",
    "slice_axis",
    "shape_x",
    "shape_y",
    "shape_z",
)
VOLUME_COLUMNS = (TOTAL_INTRACRANIAL, *STRUCTURES)
REQUIRED_COLUMNS = (*ID_COLUMNS, *ACQUISITION_COLUMNS, *VOLUME_COLUMNS)
METADATA_KEY = b"morphometry"
_COMPRESSED = (".gz", ".bz2", ".xz", ".zip", ".zst")


def order_columns(df: pd.DataFrame) -> pd.DataFrame:
    """Schema columns first (in schema order), then any extra columns in their given order."""
    known = [c for c in REQUIRED_COLUMNS if c in df.columns]
    return df[known + [c for c in df.columns if c not in known]]


def validate_volumes(df: pd.DataFrame, source: str, columns=VOLUME_COLUMNS) -> pd.DataFrame:
    """Check ``scan_id``, ``method`` and the volume ``columns`` (default: every structure of the
    schema; a partial table passes with the ones asked for) and one row per (scan_id, method);
    raise InputError naming ``source`` and the missing columns."""
    missing = [c for c in ("scan_id", "method", *columns) if c not in df.columns]
    if missing:
        shown = ", ".join(missing[:6]) + (" ..." if len(missing) > 6 else "")
        what = "not a volumes table, missing columns" if tuple(columns) == VOLUME_COLUMNS else "missing columns"
        raise InputError(f"{source}: {what}: {shown}")
    dup = df.duplicated(["scan_id", "method"])
    if dup.any():
        first = df.loc[dup, ["scan_id", "method"]].iloc[0].tolist()
        raise InputError(f"{source}: duplicate rows for (scan_id, method) = {tuple(first)}")
    return df


def table_metadata(extra: dict | None = None) -> dict:
    """Label table and versions stored in the Parquet metadata."""
    from morphometry import __version__

    meta = {
        "morphometry_version": __version__,
        "units": "mm^3",
        "labels": [{"value": lab.value, "name": lab.name, "freesurfer_name": lab.freesurfer_name}
                   for lab in SEGMENTATION_LABELS],
    }
    meta.update(extra or {})
    return meta


def write_parquet(df: pd.DataFrame, path: Path, metadata: dict) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(df, preserve_index=False)
    merged = dict(table.schema.metadata or {})
    merged[METADATA_KEY] = json.dumps(metadata).encode()
    atomic_write(path, lambda tmp: pq.write_table(table.replace_schema_metadata(merged), tmp))


def write_volumes(df: pd.DataFrame, out_dir: Path, metadata: dict | None = None) -> None:
    """Write ``volumes.parquet`` and ``volumes.csv`` atomically into ``out_dir``."""
    df = order_columns(df).reset_index(drop=True)
    write_parquet(df, Path(out_dir) / "volumes.parquet", table_metadata(metadata))
    atomic_write(Path(out_dir) / "volumes.csv", lambda tmp: df.to_csv(tmp, index=False))


def read_table(path: Path) -> pd.DataFrame:
    """Read a table by its suffix: ``.parquet``; ``.tsv`` or ``.tab`` tab-separated; ``.txt`` with
    the delimiter detected (tab, comma, semicolon, ...); anything else (``.csv``) comma-separated.
    Text tables may be compressed (``.csv.gz``, ``.tsv.gz``, ...). InputError for a missing or
    unreadable file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in _COMPRESSED:
        suffixes.pop()
    kind = suffixes[-1] if suffixes else ""
    try:
        if kind == ".parquet":
            return pd.read_parquet(path)
        if kind in (".tsv", ".tab"):
            return pd.read_csv(path, sep="\t")
        if kind == ".txt":
            return pd.read_csv(path, sep=None, engine="python")
        return pd.read_csv(path)
    except Exception as exc:  # pandas/pyarrow raise many types for a bad file
        raise InputError(f"{path}: cannot read table ({type(exc).__name__}: {exc})") from None


def read_text_csv(path: Path, what: str) -> pd.DataFrame:
    """A CSV with every cell as text ("" for empty cells); InputError naming the file and ``what``
    it should be when it is missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: {what} not found")
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as exc:  # pandas raises many types for a bad file
        raise InputError(f"{path}: cannot read {what} ({type(exc).__name__}: {exc})") from None


def read_volumes(path: Path, columns=VOLUME_COLUMNS) -> pd.DataFrame:
    """Read (see :func:`read_table`) and validate a VolumesTable; ``columns``: the volume columns
    it must hold (default all)."""
    return validate_volumes(read_table(path), str(path), columns)


def read_metadata(path: Path) -> dict:
    """The morphometry metadata stored in a Parquet table ({} for CSV or none)."""
    import pyarrow.parquet as pq

    if Path(path).suffix != ".parquet":
        return {}
    meta = pq.read_schema(path).metadata or {}
    return json.loads(meta[METADATA_KEY]) if METADATA_KEY in meta else {}


def to_long(df: pd.DataFrame) -> pd.DataFrame:
    """Long view: one row per (scan_id, method, structure) with ``volume_mm3``."""
    value_cols = [c for c in VOLUME_COLUMNS if c in df.columns]
    return df.melt(id_vars=["scan_id", "method"], value_vars=value_cols, var_name="structure",
                   value_name="volume_mm3")


def join_covariates(volumes: pd.DataFrame, covariates: pd.DataFrame, source: str = "covariates") -> pd.DataFrame:
    """Join covariates on ``scan_id``, else on ``subject_id`` (+ ``session_id`` when present).
    Columns present in both tables are taken from ``covariates``."""
    if "scan_id" in covariates.columns:
        keys = ["scan_id"]
    elif "subject_id" in covariates.columns:
        keys = ["subject_id"] + (["session_id"] if "session_id" in covariates.columns else [])
    else:
        raise InputError(f"{source}: needs a scan_id or subject_id column to join on")
    for key in keys:
        if key not in volumes.columns:
            raise InputError(f"{source}: cannot join on {key}: the volumes table has no such column")
    cov = covariates.copy()
    for key in keys:
        cov[key] = cov[key].astype(str)
    if cov.duplicated(keys).any():
        raise InputError(f"{source}: several rows per {'+'.join(keys)}")
    overlap = [c for c in cov.columns if c in volumes.columns and c not in keys]
    vol = volumes.drop(columns=overlap)  # the covariates given explicitly win over same-named columns
    for key in keys:
        vol[key] = vol[key].astype(str)
    return vol.merge(cov, on=keys, how="left", validate="many_to_one")


def empty_volume_row() -> dict:
    return {c: np.nan for c in VOLUME_COLUMNS}
