"""Quality-control groups of scans for an evaluation (the columns of the paper's Fig. 5).

A scan's group comes from a user table (scan_id, qc_group) or from a method's mean Dice over
structures on that scan (``big_fail`` / ``small_fail`` / ``pass`` by two thresholds). Without
either, every scan is in one group, ``all``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from morphometry.errors import DataError, InputError
from morphometry.tables import read_text_csv

QC_ORDER = ("big_fail", "small_fail", "pass")
ALL_SCANS = "all"
UNASSIGNED = "unassigned"


@dataclass(frozen=True)
class QcRule:
    """QC groups from a method's mean Dice over structures (per scan).

    mean Dice < ``low``: ``big_fail``; ``low`` <= mean Dice < ``high``: ``small_fail``; else ``pass``.
    A scan the method did not segment is ``unassigned``.
    """

    method: str = "synthseg"
    low: float = 0.65
    high: float = 0.80

    def __post_init__(self):
        if not (0.0 <= self.low < self.high <= 1.0):
            raise InputError(f"must satisfy 0 <= low < high <= 1 (got {self.low}, {self.high})",
                             setting="qc_thresholds")

    def describe(self) -> str:
        return f"mean Dice of {self.method}: < {self.low} big_fail, < {self.high} small_fail, else pass"


def qc_from_rule(scans: pd.DataFrame, rule: QcRule) -> pd.DataFrame:
    """scan_id -> qc_group from the per-scan table (scan_id, method, mean_dice) by ``rule``."""
    of_method = scans[scans["method"] == rule.method]
    if of_method.empty:
        found = ", ".join(sorted(scans["method"].unique()))
        raise DataError(f"no evaluated predictions of method {rule.method} (found: {found})", setting="qc_from")
    dice = of_method["mean_dice"].to_numpy()
    group = np.where(dice < rule.low, "big_fail", np.where(dice < rule.high, "small_fail", "pass"))
    return pd.DataFrame({"scan_id": of_method["scan_id"].to_numpy(), "qc_group": group})


def read_qc_table(source: str | Path | pd.DataFrame) -> pd.DataFrame:
    """scan_id -> qc_group from a CSV or DataFrame with columns scan_id and qc_group (or group)."""
    name = "QC table" if isinstance(source, pd.DataFrame) else str(source)
    df = source.fillna("").astype(str) if isinstance(source, pd.DataFrame) else read_text_csv(Path(source), "QC table")
    column = "qc_group" if "qc_group" in df.columns else "group" if "group" in df.columns else None
    if "scan_id" not in df.columns or column is None:
        raise InputError(f"{name}: QC table needs columns scan_id and qc_group (found {', '.join(df.columns)})")
    if df["scan_id"].duplicated().any():
        raise InputError(f"{name}: several rows for scan_id {df.loc[df['scan_id'].duplicated(), 'scan_id'].iloc[0]}")
    if df[column].eq("").any():
        raise InputError(f"{name}: empty {column} for scan_id {df.loc[df[column].eq(''), 'scan_id'].iloc[0]}")
    return df[["scan_id", column]].rename(columns={column: "qc_group"}).reset_index(drop=True)


def assign_groups(table: pd.DataFrame, qc: pd.DataFrame | None) -> pd.DataFrame:
    """Add ``qc_group`` (``all`` without a QC table; ``unassigned`` for scans it lacks)."""
    out = table.drop(columns=["qc_group"], errors="ignore")
    if qc is None:
        return out.assign(qc_group=ALL_SCANS)
    merged = out.merge(qc, on="scan_id", how="left")
    merged["qc_group"] = merged["qc_group"].fillna(UNASSIGNED)
    return merged


def group_order(groups) -> list[str]:
    """QC groups in the paper's order (big fails, small fails, passes), then the others sorted."""
    present = list(dict.fromkeys(groups))
    return [g for g in QC_ORDER if g in present] + sorted(g for g in present if g not in QC_ORDER)
