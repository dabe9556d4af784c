"""Bad input to the ageing model: each problem is a clear InputError/DataError naming its cause."""

from __future__ import annotations

import numpy as np
import pytest

from morphometry.analysis.ageing_model import AgeingModel, AgeingSpec
from morphometry.analysis.ageing_simulation import SimulatedAgeingData, simulate_ageing_table
from morphometry.errors import DataError, InputError

S = "left_hippocampus"


@pytest.fixture(scope="module")
def table():
    return simulate_ageing_table(SimulatedAgeingData(n_subjects=100), np.random.default_rng(0))


def _fit(table, **kw):
    return AgeingModel(AgeingSpec(**{"structures": (S,), **kw})).fit(table, source="vol.parquet")


def test_missing_columns_are_named_with_the_setting_that_needs_them(table):
    with pytest.raises(InputError, match=r"^age_column: vol.parquet: missing columns: age$"):
        _fit(table.drop(columns="age"))
    with pytest.raises(InputError, match=r"^structures: vol.parquet: missing columns: right_hippocampus$"):
        _fit(table, structures=("hippocampus",))
    with pytest.raises(InputError, match=r"^spacing_terms: vol.parquet: missing columns: spacing_y_mm$"):
        _fit(table.drop(columns="spacing_y_mm"))
    with pytest.raises(InputError, match=r"^units: vol.parquet: missing columns: total_intracranial$"):
        _fit(table, units="fraction_tiv")


def test_ages_out_of_range_or_missing(table):
    bad = table.copy()
    bad.loc[3, "age"] = 150.0
    with pytest.raises(DataError, match=r"column 'age': 1 scans .*out-of-range.*scan000003"):
        _fit(bad)
    bad["age"] = bad["age"].astype(object)
    bad.loc[3, "age"] = "old"
    with pytest.raises(DataError, match=r"column 'age': 1 scans"):
        _fit(bad)


def test_bad_sex_values(table):
    bad = table.copy()
    bad.loc[[1, 2], "sex"] = "X"
    with pytest.raises(DataError, match=r"column 'sex' has 2 values that are not M/F"):
        _fit(bad)


def test_too_few_subjects_for_the_knots(table):
    few = table[table["subject_id"].isin(table["subject_id"].unique()[:12])]
    with pytest.raises(DataError, match=r"too few subjects \(12\) for 16 parameters \(12 spline basis "
                                        r"functions from 10 knots"):
        _fit(few)


def test_empty_knot_interval_is_explained(table):
    gap = table[(table["age"] < 40) | (table["age"] > 60)]
    with pytest.raises(DataError, match=r"rank deficient: no scans between ages"):
        _fit(gap, n_knots=20)


def test_constant_spacing_is_explained(table):
    flat = table.assign(spacing_x_mm=1.0)
    with pytest.raises(DataError, match=r"spacing_x_mm takes a single value"):
        _fit(flat)
    fit = _fit(flat, spacing_terms=("spacing_y_mm", "spacing_z_mm"))
    assert "spacing_x_mm" not in fit.terms


def test_method_and_structure_not_present(table):
    with pytest.raises(InputError, match=r"method\(s\) synthseg not in the table \(present: synthseg\+\)"):
        _fit(table, methods=("synthseg",))
    with pytest.raises(InputError, match=r"unknown structure 'hipocampus'"):
        _fit(table, structures=("hipocampus",))


def test_where_expression_errors(table):
    with pytest.raises(InputError, match=r"^where: 'slice_spacing_mm >>> 3': cannot evaluate") as err:
        _fit(table, where="slice_spacing_mm >>> 3")
    assert err.value.setting == "where"
    with pytest.raises(InputError, match=r"^where: 'no_such_column > 3'"):
        _fit(table, where="no_such_column > 3")
    with pytest.raises(DataError, match=r"^where: vol.parquet: no scans left to fit after selecting"):
        _fit(table, where="slice_spacing_mm > 100")


def test_where_selects_the_subset(table):
    fit = _fit(table, where="slice_spacing_mm > 4", penalty=0.0)
    assert fit.fits[("synthseg+", S)].n_scans == int((table["slice_spacing_mm"] > 4).sum())


def test_spec_validation():
    with pytest.raises(InputError, match="units"):
        AgeingSpec(units="cm3")
    with pytest.raises(InputError, match="^direction: 'down' for hippocampus is not one of"):
        AgeingSpec(directions=(("hippocampus", "down"),))
    with pytest.raises(InputError, match="penalty"):
        AgeingSpec(penalty=-1.0)
    with pytest.raises(InputError, match="^reference_spacing_mm: needs 3 values"):
        AgeingSpec(reference_spacing_mm=(1.0,))
    with pytest.raises(InputError, match="fraction of itself"):
        AgeingModel(AgeingSpec(structures=("total_intracranial",), units="fraction_tiv")).fit(None)


def test_non_positive_tiv_in_fraction_mode(table):
    bad = table.assign(total_intracranial=1.5e6)
    bad.loc[0, "total_intracranial"] = 0.0
    with pytest.raises(DataError, match=r"non-positive total_intracranial"):
        _fit(bad, units="fraction_tiv")


def test_bootstrap_needs_two_replicates(table):
    with pytest.raises(InputError, match="at least 2 replicates"):
        _fit(table).bootstrap(1, np.random.default_rng(0))
